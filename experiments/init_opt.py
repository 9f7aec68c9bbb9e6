"""Initialization optimization through the equilibrium (ALGORITHM.md §5, DeqIR §4).

On test-image crops, optimize x_T with Adam for each loss (the L2 oracle to the ground truth,
and LPIPS to a reference image) and each adjoint (implicit, rowscan, phantom, unrolled). Reports
PSNR / LPIPS before and after, and the cost of one optimization step per adjoint: wall-clock
(after compilation), network evaluations, and the cost of one gradient step (forward solve and
backward pass) relative to the forward solve alone, both from the same cold start. Also
measures the cosine similarity of the phantom gradient to the exact (implicit) gradient.
Writes ``<out>.md``, ``<out>.csv``, ``<out>_curves.png`` and ``<out>_images.png``.

    python experiments/init_opt.py --model default --steps 15
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import deqir_jax as dq
from deqir_jax.diffusion import DEQMap, initial_trajectory
from deqir_jax.optimize.init_opt import ADJOINTS
from deqir_jax.restore import eps_view, make_problem
from deqir_jax.solve import Picard, fixed_point

sys.path.insert(0, str(Path(__file__).parent))
from _report import best_time, header, machine, table, write_csv  # noqa: E402
from bench_solvers import ROOT, load_model  # noqa: E402

IMAGES = ["Set5/img_001.png", "Set5/img_003.png"]


def crops(size):
    out = []
    for rel in IMAGES:
        img = dq.io.read_image(ROOT.parent / "shared" / "data" / "test" / rel)
        top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        out.append(img[top:top + size, left:left + size])
    return np.stack(out)


def gradient_cosines(model, y, op, gt, T):
    """Cosine similarity of phantom and unrolled gradients to the implicit (exact) gradient of
    the oracle L2 loss with respect to x_T, per image."""
    prob = make_problem(model, y, op, dq.Sampler.official(), timesteps=T, key=0)
    fmap = DEQMap(eps_view(model.eps_fn, 3))
    solver = Picard(tol=1e-6, max_steps=T + 1)

    grads = {}
    for name, adj in ADJOINTS.items():
        def loss(x, a=adj):
            sol = fixed_point(fmap, solver, initial_trajectory(prob),
                              dataclasses.replace(prob, x_T=x), adjoint=a())
            return jnp.sum(jnp.square(sol.value[:, -1] - gt))
        grads[name] = np.asarray(jax.jit(jax.grad(loss))(prob.x_T)).reshape(len(gt), -1)
    ref = grads["implicit"]
    cos = lambda g: (g * ref).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(ref, axis=1)
    return {name: cos(g) for name, g in grads.items()}


def step_costs(model, y, op, gt, T, solver, repeats=3):
    """Seconds of the forward solve alone and of the forward solve + gradient (oracle L2 loss
    w.r.t. x_T) for each adjoint, jitted, from the same cold start, best of ``repeats``."""
    prob = make_problem(model, y, op, dq.Sampler.official(), timesteps=T, key=0)
    fmap = DEQMap(eps_view(model.eps_fn, 3))
    X0 = initial_trajectory(prob)

    best = lambda f, *a: best_time(f, *a, repeats=repeats)
    forward = jax.jit(lambda x: fixed_point(fmap, solver, X0, dataclasses.replace(
        prob, x_T=x)).value[:, -1])
    costs = {"forward": best(forward, prob.x_T)}
    for name, adj in ADJOINTS.items():
        def loss(x, a=adj):
            sol = fixed_point(fmap, solver, X0, dataclasses.replace(prob, x_T=x), adjoint=a())
            return jnp.sum(jnp.square(sol.value[:, -1] - gt))
        costs[name] = best(jax.jit(jax.value_and_grad(loss)), prob.x_T)
    return costs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--task", default="sr_averagepooling")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--timesteps", type=int, default=10)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "init_opt"))
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    model, model_desc = load_model(args.model)
    gt = jnp.asarray(crops(args.size))
    op = dq.operators.get(args.task, image_shape=gt.shape[1:], scale=args.scale)
    y = op.A(gt)
    T = args.timesteps
    lp = dq.metrics.load_lpips_params("alex")
    lpips = lambda a: np.asarray(dq.metrics.lpips_apply(lp, a, gt, "alex"))
    psnr = lambda a: np.asarray(dq.metrics.psnr(a, gt))
    rows, curves, images = [], {}, {}
    forward = Picard(tol=1e-4, max_steps=T + 1)  # warm-started: few iterations after step 0
    for loss in ("oracle_l2", "reference_lpips"):
        for adjoint in ADJOINTS:
            t0 = time.perf_counter()
            res = dq.optimize.optimize_init(
                model, y, op, loss=loss, target=gt, reference=gt, timesteps=T, steps=args.steps,
                learning_rate=args.lr, adjoint=adjoint, method="picard", solver=forward, key=0,
                sampler=dq.Sampler.official(), progress=False)
            wall = time.perf_counter() - t0
            step_s = float(np.median(res.seconds[1:])) if len(res.seconds) > 1 else np.nan
            before, after = res.initial_image, res.image
            rows.append(dict(
                loss=loss, adjoint=adjoint, steps=len(res.seconds) - 1,
                psnr_before=float(psnr(before).mean()), psnr_after=float(psnr(after).mean()),
                lpips_before=float(lpips(before).mean()), lpips_after=float(lpips(after).mean()),
                forward_iters_median=float(np.median(res.iterations)),
                forward_nfe_per_step=float(np.median(res.iterations) * T),
                seconds_per_step=step_s, total_seconds=wall,
                grads_finite=bool(res.grad_finite.all())))
            curves[(loss, adjoint)] = res
            images[(loss, adjoint)] = after
            print(rows[-1], flush=True)
    cos = gradient_cosines(model, y, op, gt, T)
    costs = step_costs(model, y, op, gt, T, forward)
    for row in rows:
        row["forward_seconds_cold"] = costs["forward"]
        row["step_seconds_cold"] = costs[row["adjoint"]]
        row["step_over_forward"] = costs[row["adjoint"]] / costs["forward"]
    write(args, rows, curves, images, cos, model_desc, gt, op, y)


def write(args, rows, curves, images, cos, model_desc, gt, op, y):
    out = Path(args.out)
    write_csv(out.with_suffix(".csv"), rows)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = header("Initialization optimization through the equilibrium", "init_opt.py", [
        f"model: {model_desc}",
        f"images: centre {args.size}px crops of {', '.join(IMAGES)} (batch of 2, one x_T "
        f"each); task `{args.task}` x{args.scale}; T = {args.timesteps}, etw 0.1, nw 0",
        f"Adam lr {args.lr}, {args.steps} steps; forward solve: Picard warm-started from the "
        "previous equilibrium (tol 1e-4)",
        "`oracle_l2` uses the ground truth (the paper's oracle study, not available at test "
        "time); `reference_lpips` steers towards a reference image, here also the ground truth",
        f"machine: {machine()}",
        "seconds_per_step: median wall-clock of one step (forward solve + gradient + Adam) "
        "after compilation; forward_nfe_per_step: network evaluations of the forward solve",
        "forward_seconds_cold / step_seconds_cold: the jitted forward solve alone and the "
        "forward solve + gradient of the oracle L2 loss, both from the same cold start (every "
        "row x_T, T + 1 Picard evaluations), best of 3; step_over_forward = their ratio",
    ]) + table(rows, fmt)
    lines += ["", "Cosine similarity of each adjoint's gradient (oracle L2 loss, w.r.t. x_T) to "
              "the implicit gradient, per image:", ""]
    lines += [f"- {k}: {', '.join(f'{c:.4f}' for c in v)}" for k, v in cos.items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (loss, adjoint), res in curves.items():
        ls = "-" if loss == "oracle_l2" else "--"
        axes[0].plot(res.loss.sum(1) / res.loss[0].sum(), ls, label=f"{loss}/{adjoint}")
        axes[1].plot(res.psnr.mean(1), ls, label=f"{loss}/{adjoint}")
    axes[0].set(xlabel="Adam step", ylabel="loss / initial loss", title="loss")
    axes[1].set(xlabel="Adam step", ylabel="PSNR to ground truth (dB)", title="PSNR")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(out) + "_curves.png", dpi=110)
    panels = [gt[0], op.A_pinv(y)[0]] + [im[0] for im in images.values()]
    labels = ["ground truth", "A+y"] + [f"{lo[:6]}/{ad}" for lo, ad in images]
    grid = dq.io.make_grid([np.asarray(p) for p in panels], labels, ncols=4)
    from PIL import Image

    Image.fromarray(grid).save(str(out) + "_images.png")
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
