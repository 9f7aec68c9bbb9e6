"""The depth benchmark's variant names and the offline tolerance reader (experiments/)."""

import csv
import sys
from pathlib import Path

import pytest

EXP = Path(__file__).parents[1] / "experiments"
sys.path.insert(0, str(EXP))

import bench_depth  # noqa: E402
import stop_tolerance  # noqa: E402

from deqir_jax.restore import DEFAULT_LINEARIZE  # noqa: E402


def test_variant_names_and_overrides():
    v = bench_depth.variants(25, ["default", "default:m=10", "triangular-lin0.3:m=3,guard=false",
                                  "picard", "picard-lin0.2/2"])
    assert v["default"].solver.m == 5 and v["default"].linearize == DEFAULT_LINEARIZE
    assert v["default:m=10"].solver.m == 10
    assert v["default:m=10"].solver.tol == v["default"].solver.tol
    lin = v["triangular-lin0.3:m=3,guard=false"]
    assert (lin.linearize, lin.solver.m, lin.solver.guard) == (0.3, 3, False)
    assert v["picard-lin0.2/2"].linearize == (0.2, 2.0)
    for bad, msg in [("nope", "unknown solver"), ("default:zz=1", "not a field"),
                     ("triangular-linx", "unknown solver"), ("default:m", "not a field"),
                     ("picard-lin0.1/2/3", "unknown solver")]:
        with pytest.raises(SystemExit, match=msg):
            bench_depth.variants(25, [bad])


def test_stop_at_respects_warmup_and_tolerance():
    solver = bench_depth.variants(25, ["default"])["default"].solver
    assert solver.warmup == 2
    pts = [dict(depth=k, residual=r) for k, r in enumerate([0.1, 0.2, 5.0, 0.9, 0.4], 1)]
    assert stop_tolerance.stop_at(pts, 1.0, solver)["depth"] == 4  # depths 1-2: the warm-up
    assert stop_tolerance.stop_at(pts, 0.5, solver)["depth"] == 5
    assert stop_tolerance.stop_at(pts, 0.3, solver) is None
    # After a coarse start of 2 rounds the warm-up is counted from the first parallel round.
    assert stop_tolerance.stop_at(pts, 1.0, solver, coarse=2)["depth"] == 5


RECORDED_TOL = 1.0  # the default tolerance when bench_depth_images was run


def test_offline_stop_matches_the_solvers_own_stop():
    """On the committed curves, reading the stop at the tolerance they were recorded with off
    the residuals gives the depth at which the solver stopped inside its own loop."""
    prefix = EXP / "results" / "bench_depth_images"
    if not Path(f"{prefix}_curves.json").exists():
        pytest.skip("committed depth curves not present")
    stops = {}
    with open(f"{prefix}.csv") as f:
        for r in csv.DictReader(f):
            if r["solver"] == "default":
                stops[(r["T"], r["task"], r["image"], r["sampler"])] = r["stop_depth"]
    curves = stop_tolerance.load(str(prefix), "default")
    assert len(curves) == len(stops) > 0
    for c in curves:
        solver = bench_depth.variants(c["T"], ["default"])["default"].solver
        p = stop_tolerance.stop_at(c["points"], RECORDED_TOL, solver)
        assert str(p["depth"] if p else "") == stops[(str(c["T"]), c["task"], c["image"],
                                                       c["sampler"])]


def test_eval_settings_reuse_reads_complete_tasks_and_computes_the_rest(tmp_path):
    """eval_settings.py --reuse: a task the CSV holds in full (A⁺y and every label, every
    image) is read, not recomputed; a task it holds only in part is computed."""
    import eval_settings
    import numpy as np
    from PIL import Image

    data = tmp_path / "data" / "S"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(data / name)
    labels = ["A+y", "timesteps=2,samples=2", "timesteps=2,samples=2 [1 sample]"]
    old = tmp_path / "old.csv"
    with open(old, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "setting", "image", "psnr", "ssim", "lpips"])
        for i, label in enumerate(labels):
            for image in ("a.png", "b.png"):
                w.writerow(["deblur_gauss", label, image, 30 + i, 0.5, 0.25])
        w.writerow(["deblur_uni", "A+y", "a.png", 99, 0.5, 0.25])  # incomplete: recomputed
    out = tmp_path / "out"
    eval_settings.main(["--data", str(tmp_path / "data"), "--set", "S", "--size", "16",
                        "--settings", "timesteps=2,samples=2", "--tasks", "deblur_gauss",
                        "deblur_uni", "--reuse", str(old), "--out", str(out)])
    with open(f"{out}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    gauss = [r for r in rows if r["task"] == "deblur_gauss"]
    assert sorted(float(r["psnr"]) for r in gauss) == [30, 30, 31, 31, 32, 32]
    uni = [r for r in rows if r["task"] == "deblur_uni"]
    assert len(uni) == 6 and all(float(r["psnr"]) != 99 for r in uni)
    md = Path(f"{out}.md").read_text()
    assert "deblur_gauss: rows read from" in md and "deblur_uni: rows read" not in md
