"""Compiled working memory of one initialization-optimization step per adjoint (and with
``remat``), from XLA's ``memory_analysis`` of the jitted step (no optimization is run).

    python experiments/init_opt_memory.py --model default --timesteps 8 --size 32

Same problem as ``experiments/init_opt.py``; writes ``experiments/results/init_opt_memory.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import deqir_jax as dq
from deqir_jax.diffusion import DEQMap, initial_trajectory
from deqir_jax.optimize.init_opt import ADJOINTS, _remat, _step
from deqir_jax.optimize.losses import make_loss
from deqir_jax.restore import eps_view, make_problem
from deqir_jax.solve import Picard

sys.path.insert(0, str(Path(__file__).parent))
from bench_solvers import ROOT, load_model  # noqa: E402
from init_opt import crops  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args(argv)
    model, desc = load_model(args.model)
    gt = jnp.asarray(crops(args.size))
    op = dq.operators.get("sr_averagepooling", image_shape=gt.shape[1:], scale=4)
    T = args.timesteps
    problem = make_problem(model, op.A(gt), op, dq.Sampler.official(), timesteps=T, key=0)
    loss = make_loss("oracle_l2", target=gt)
    opt = optax.adam(0.05)
    solver = Picard(tol=1e-4, max_steps=T + 1)
    rows = []
    for remat in (False, True):
        fn = _remat(model.eps_fn) if remat else model.eps_fn
        fmap = DEQMap(eps_view(fn, 3))
        for name, adj in ADJOINTS.items():
            lowered = _step.lower(fmap, solver, adj(), loss, opt, problem.x_T,
                                  initial_trajectory(problem), problem, opt.init(problem.x_T))
            mem = lowered.compile().memory_analysis()
            rows.append((name, remat, mem.temp_size_in_bytes / 2**20))
            print(rows[-1], flush=True)
    lines = ["# Memory of one initialization-optimization step", "",
             f"Command: `python experiments/init_opt_memory.py {' '.join(sys.argv[1:])}`", "",
             f"- model: {desc}; batch of 2 crops of {args.size}px, SR x4, T = {T}, Picard "
             "forward solve (T + 1 evaluations)",
             f"- XLA compiled temporary memory of the jitted step (jax {jax.__version__}, "
             f"{jax.default_backend()})", "",
             "| adjoint | remat | temp MB |", "|---|---|---|"]
    lines += [f"| {n} | {r} | {m:.1f} |" for n, r, m in rows]
    out = ROOT / "experiments" / "results" / "init_opt_memory.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
