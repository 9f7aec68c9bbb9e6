"""Benchmark: sequential vs Picard vs Anderson (faithful and improved) vs sliding window.

For each T: parallel iterations, NFE per image, distance of x̂ to the sequential x̂ (max-abs and
PSNR), wall-clock (after compilation, best of ``--repeats``), compiled temporary memory
(XLA's ``memory_analysis``; the peak working set of the jitted program), and the residual
history (plotted). ``--devices`` adds the 8-way sharded Anderson on simulated CPU devices in a
subprocess. Writes ``<out>.md``, ``<out>.csv`` and ``<out>_residuals.png``.

    python experiments/bench_solvers.py --model default --timesteps 25 50 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import deqir_jax as dq
from deqir_jax.diffusion import DEQMap, initial_trajectory
from deqir_jax.restore import _parallel, _sequential, eps_view, make_problem, make_solver
from deqir_jax.solve import Anderson, Picard, SlidingWindow

sys.path.insert(0, str(Path(__file__).parent))
from _report import best_of, header, machine, table, write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_model(name: str):
    if name == "default":
        return dq.models.default(), "embedded default model (dq.models.default())"
    if name == "random":
        cfg = dq.models.ADMConfig(image_size=32, model_channels=32, out_channels=3,
                                  num_res_blocks=1, attention_resolutions=(8,),
                                  channel_mult=(1, 2, 2), num_heads=1, num_head_channels=32)
        model = dq.models.create(cfg, key=0)
        leaves, tree = jax.tree_util.tree_flatten(model.params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        leaves = [0.05 * jax.random.normal(k, leaf.shape) for k, leaf in
                  zip(keys, leaves, strict=True)]
        model = type(model)(config=model.config, params=jax.tree_util.tree_unflatten(tree, leaves),
                            eps_fn=model.eps_fn)
        return model, "small random-weight ADM (every tensor N(0, 0.05²); 32 ch, mult 1,2,2)"
    return dq.models.load(name), f"checkpoint {name}"


def test_image(size: int):
    path = ROOT.parent / "shared" / "data" / "test" / "Kodak24" / "kodim05.png"
    if path.exists():
        img = dq.io.read_image(path)
        top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        return img[top:top + size, left:left + size], f"{path.name} centre crop {size}px"
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (size, size, 3)).astype(np.float32), "random image"


def temp_bytes(jitted, *args):
    try:
        return jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes
    except Exception:  # noqa: BLE001 - not every backend reports it
        return float("nan")


def psnr(a, b):
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


def variants(T):
    return {
        "picard": Picard(tol=1e-5, max_steps=T + 1),
        "anderson-faithful": Anderson.faithful(),
        "anderson": make_solver("anderson", T),  # the default: triangular, per-row stop
        # the previous default: one mixing per row, relative tolerance 1e-4
        "anderson-per_row-relative": make_solver("anderson", T, mixing="per_row",
                                                 stop="relative", tol=1e-4),
        f"window-{max(T // 5, 1)}": SlidingWindow(window=max(T // 5, 1), tol=1e-3,
                                                 max_steps=2 * T),
    }


def run(args):
    model, model_desc = load_model(args.model)
    img, img_desc = test_image(args.size)
    op = dq.operators.get(args.task, image_shape=img.shape, mask="random", keep_ratio=0.5)
    y = op.A(jnp.asarray(img)[None])
    rows, hist = [], {}
    for T in args.timesteps:
        problem = make_problem(model, y, op, dq.Sampler.official(), timesteps=T, key=0)
        eps = eps_view(model.eps_fn, 3)
        seq, t_seq = best_of(lambda p=problem, e=eps: _sequential(e, p), args.repeats,
                             warmup=True)
        rows.append(dict(T=T, variant="sequential", iterations=T, nfe=T, converged=True,
                         max_abs=0.0, psnr_vs_seq=float("inf"), psnr_vs_gt=psnr(seq[0], img),
                         seconds=t_seq, speedup=1.0,
                         temp_mb=temp_bytes(_sequential, eps, problem) / 2**20))
        fmap = DEQMap(eps)
        X0 = initial_trajectory(problem)
        rs = jnp.asarray(problem.coeffs.sqrt_1ma, jnp.float32)
        for name, solver in variants(T).items():
            sol, sec = best_of(lambda s=solver, p=problem, x=X0, f=fmap, r=rs:
                               _parallel(f, s, x, p, r), args.repeats, warmup=True)
            img_hat = sol.value[0, -1]
            h = np.asarray(sol.stats.residual_history)
            hist[(T, name)] = h[~np.isnan(h)].tolist()
            rows.append(dict(
                T=T, variant=name, iterations=int(sol.stats.map_evals),
                nfe=int(sol.stats.row_evals), converged=bool(int(sol.result) == 0),
                max_abs=float(jnp.max(jnp.abs(img_hat - seq[0]))),
                psnr_vs_seq=psnr(img_hat, seq[0]), psnr_vs_gt=psnr(img_hat, img),
                seconds=sec, speedup=t_seq / sec,
                temp_mb=temp_bytes(_parallel, fmap, solver, X0, problem, rs) / 2**20))
            print(json.dumps(rows[-1]), flush=True)
    return rows, hist, model_desc, img_desc


def devices_run(args):
    """8 simulated CPU devices in a subprocess: the sharded Anderson on 1/2/4/8 devices."""
    code = f"""
import json, time, warnings, jax, jax.numpy as jnp, numpy as np
import deqir_jax as dq
from deqir_jax.parallel import make_mesh
warnings.simplefilter("ignore")
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_solvers import load_model, test_image
model, _ = load_model({args.model!r}); img, _ = test_image({args.size})
op = dq.operators.get({args.task!r}, image_shape=img.shape, mask="random", keep_ratio=0.5)
y = op.A(jnp.asarray(img)[None]); T = {args.device_T}; out = {{}}; ref = None
for n in (1, 2, 4, 8):
    f = lambda: dq.restore(model, y, op, T, "anderson", key=0, sampler=dq.Sampler.official(),
                              mesh=make_mesh(n))
    r = f(); jax.block_until_ready(r.image); t0 = time.perf_counter(); r = f()
    jax.block_until_ready(r.image); sec = time.perf_counter() - t0
    im = np.asarray(r.image); ref = im if ref is None else ref
    out[n] = dict(seconds=sec, iterations=r.stats["iterations"],
                  max_abs_vs_1=float(np.abs(im - ref).max()))
print(json.dumps(out))
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write(args, rows, hist, model_desc, img_desc, dev):
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out.with_suffix(".csv"), rows)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = header("Solver benchmark", "bench_solvers.py", [
        f"model: {model_desc}",
        f"image: {img_desc}; task `{args.task}` (50% random pixels kept), batch 1, etw 0.1, "
        "nw 0, seed 0",
        f"machine: {machine()}",
        "seconds: best of the timed runs after compilation; speedup = sequential / variant",
        "temp_mb: XLA's compiled temporary buffer size (the jitted program's working memory)",
        "nfe: network evaluations per image; iterations: parallel map evaluations",
    ]) + table(rows, fmt)
    if dev:
        lines += ["", f"Sharded Anderson on simulated CPU devices (T = {args.device_T}; "
                  "the devices share the same cores, so the time shows overhead, not speedup):",
                  "", "| devices | seconds | iterations | max-abs vs 1 device |",
                  "|---|---|---|---|"]
        lines += [f"| {n} | {d['seconds']:.3g} | {d['iterations']} | {d['max_abs_vs_1']:.2g} |"
                  for n, d in dev.items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = sorted({T for T, _ in hist})
    fig, axes = plt.subplots(1, len(Ts), figsize=(5 * len(Ts), 4), squeeze=False)
    for ax, T in zip(axes[0], Ts, strict=True):
        for (t, name), h in hist.items():
            if t == T and h:
                ax.semilogy(range(1, len(h) + 1), h, label=name)
        ax.set_title(f"T = {T}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("stopping residual")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(out) + "_residuals.png", dpi=110)
    print(f"wrote {out.with_suffix('.md')}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="default | random | PATH")
    p.add_argument("--task", default="inpainting")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--timesteps", type=int, nargs="+", default=[25, 50, 100])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--devices", action="store_true", help="also the 1/2/4/8-device runs")
    p.add_argument("--device-T", type=int, default=24)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_solvers"))
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    rows, hist, model_desc, img_desc = run(args)
    dev = devices_run(args) if args.devices else None
    write(args, rows, hist, model_desc, img_desc, dev)


if __name__ == "__main__":
    main()
