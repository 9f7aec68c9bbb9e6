"""Multi-host DeqIR: the same script on every host, one process per host.

    # host 0                                   # host 1
    python experiments/multihost_example.py \\   python experiments/multihost_example.py \\
        --coordinator host0:12355 --num-processes 2 --process-id 0     ... --process-id 1

``--local N`` starts N processes on this machine (CPU, one device each) to try it out:

    python experiments/multihost_example.py --local 2

Every process calls ``jax.distributed.initialize``; the mesh then spans the devices of all
processes and the trajectory's timestep rows are split across hosts. Each process prints the
restored image's checksum (identical everywhere) and the single-process reference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile


def worker(args):
    import jax

    if args.local:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import deqir_jax as dq

    dq.parallel.initialize_distributed(coordinator_address=args.coordinator,
                                       num_processes=args.num_processes,
                                       process_id=args.process_id)
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils

    model = dq.diffusion.GaussianModel.create((16, 16, 3))
    op = dq.operators.get("inpainting", image_shape=(16, 16, 3), mask="half")
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
    mesh = dq.parallel.make_mesh()  # all devices of all processes
    T = 4 * len(jax.devices())
    res = dq.restore(model, op.A(x), op, T, "picard", key=0, mesh=mesh, tol=1e-9)
    image = multihost_utils.process_allgather(res.image, tiled=True)
    ref = dq.restore(model, op.A(x), op, T, "sequential", key=0).image
    print(f"process {jax.process_index()}/{jax.process_count()}: devices {len(jax.devices())}, "
          f"T={T}, iterations {res.stats['iterations']}, checksum {float(np.sum(image)):.6f}, "
          f"max |parallel - sequential| {float(np.max(np.abs(np.asarray(image) - ref))):.2e}",
          flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coordinator", default="localhost:12355")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--local", type=int, default=0, help="spawn this many local processes")
    args = p.parse_args(argv)
    if args.local and os.environ.get("DEQIR_MULTIHOST_CHILD") is None:
        env = dict(os.environ, DEQIR_MULTIHOST_CHILD="1", JAX_PLATFORMS="cpu")
        # Each child writes to its own files; the launcher replays them in process order once all
        # have finished, so the lines of different processes never interleave.
        outs = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+"))
                for _ in range(args.local)]
        procs = [subprocess.Popen([sys.executable, __file__, "--local", str(args.local),
                                   "--coordinator", args.coordinator, "--num-processes",
                                   str(args.local), "--process-id", str(i)], env=env,
                                  stdout=out, stderr=err)
                 for i, (out, err) in enumerate(outs)]
        codes = [p.wait() for p in procs]
        for i, ((out, err), code) in enumerate(zip(outs, codes, strict=True)):
            for f, stream in ((err, sys.stderr), (out, sys.stdout)):
                f.seek(0)
                stream.write(f.read())
                stream.flush()
            if code:
                print(f"process {i} exited with code {code}", file=sys.stderr)
        sys.exit(max(codes))
    worker(args)


if __name__ == "__main__":
    main()
