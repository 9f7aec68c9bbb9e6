"""Sharding the timestep axis: 8 simulated CPU devices in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "multidevice_check.py"


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_same_result_on_1_to_8_devices(report):
    """1, 2, 4, 8 devices on the timestep axis, and (2 × 4) images × timesteps, give the
    1-device result; sequential on a mesh (images over all devices) gives the unsharded one;
    restore(mesh=...) under jax.jit gives the eager result."""
    results = report["results"]
    assert "2x4" in results["anderson-float64"] and "2x4" in results["sequential-float64"]
    # float64: only the summation order differs between shardings.
    for name in ("anderson-float64", "anderson-linearized-float64", "picard-float64",
                 "sequential-float64", "jit-float64"):
        for key, value in results[name].items():
            assert value <= 1e-10, (name, key, value)
    # float32: the closed-form map amplifies rounding (k1 ≈ 100 cancellations), and sharding
    # changes the summation order, so results differ at the level of the float32 map's own
    # rounding at the exact trajectory, which the script measures; allow twice that.
    bound = max(1e-5, 2 * results["float32_map_rounding"])
    for key, value in results["picard-float32"].items():
        assert value <= bound, (key, value, bound)


def test_mesh_errors(report):
    errors = report["results"]["errors"]
    assert "batch of 2 images must be divisible by the 4 devices of mesh axis 'b'" in \
        errors["parallel"]
    assert "splits the images over its 8 devices" in errors["sequential"]
    from deqir_jax.parallel import make_mesh

    with pytest.raises(ValueError, match="batch must be a positive divisor"):
        make_mesh(1, batch=2)


def test_no_all_gather_of_the_trajectory(report):
    # Only per-row scalars may be gathered: the causal Anderson's "settled prefix" flags (a
    # cumulative product over the sharded row axis, one element per (image, row)) and the
    # triangular mixing's per-row m×m Gram matrices (a cumulative sum over rows): at most m²
    # numbers per (image, row), never an image (D = H·W·C numbers per row).
    per_row = report["history"] ** 2
    assert all(size <= per_row * report["traj_rows"] for size in report["gather_sizes"]), \
        report["gathers"]
    assert per_row < report["traj_elems"] // report["traj_rows"]  # the bound is not vacuous
    assert len(report["gather_sizes"]) == len(report["gathers"])
    assert report["collective_permutes"] > 0  # neighbours exchange single rows instead


@pytest.mark.slow
def test_multihost_example_two_processes():
    """experiments/multihost_example.py: two processes joined by jax.distributed.initialize
    (CPU, gloo collectives) restore the same image as the sequential sampler."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = Path(__file__).parents[1] / "experiments" / "multihost_example.py"
    proc = subprocess.run([sys.executable, str(script), "--local", "2", "--coordinator",
                           f"localhost:{port}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The launcher replays each process's own output after both have exited (no interleaving).
    lines = [line for line in proc.stdout.splitlines() if line.startswith("process")]
    assert [line.split(":")[0] for line in lines] == ["process 0/2", "process 1/2"], proc.stdout
    checks = {line.split("checksum ")[1].split(",")[0] for line in lines}
    assert len(checks) == 1  # both hosts hold the same result
    for line in lines:
        assert float(line.rsplit(" ", 1)[1]) <= 1e-4  # float32 rounding of the closed form


def test_sharded_map_wraps_a_deq_map():
    """ShardedDEQMap takes the DEQMap each device runs (no field repeated): a map without an
    axis name gets the timestep axis; anything else is refused by name."""
    from deqir_jax.diffusion import DEQMap
    from deqir_jax.parallel import AXIS, ShardedDEQMap, make_mesh

    eps = lambda params, x, t: x
    sharded = ShardedDEQMap(DEQMap(eps, order=2), make_mesh(1))
    assert sharded.axis_name == AXIS and sharded.local.order == 2
    assert hash(sharded) == hash(ShardedDEQMap(DEQMap(eps, order=2), make_mesh(1)))
    with pytest.raises(TypeError, match="shards a DEQMap"):
        ShardedDEQMap(eps, make_mesh(1))


def test_sliding_window_on_a_mesh_is_refused():
    """The sliding window runs on one device: restore(mesh=...) with it says so."""
    import deqir_jax as dq
    from deqir_jax.diffusion import GaussianModel
    from deqir_jax.parallel import make_mesh
    from deqir_jax.solve import SlidingWindow

    model = GaussianModel.create((4, 4, 3))
    with pytest.raises(ValueError, match="sliding window runs on one device"):
        dq.restore(model, None, None, 4, "picard", key=0, image_shape=(4, 4, 3),
                   solver=SlidingWindow(window=2), mesh=make_mesh(1))
