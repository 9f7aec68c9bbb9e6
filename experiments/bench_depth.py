"""Depth to quality: how many sequential network rounds each parallel solver needs.

For every solver, after every map evaluation: PSNR of the x̂ the solver would return at that
point (its best iterate, as ``dq.restore`` returns it) against the ground truth and against the
sequential x̂, and the stopping residual. **Depth** counts sequential network rounds: the
parallel map evaluations plus the steps of any coarse sequential start. Reported per solver:

- ``reach_0.1dB``: first depth from which x̂ stays no worse than 0.1 dB (PSNR vs ground truth)
  below the sequential x̂, or ≥ 50 dB from it (float32 rounding alone moves a result by tenths
  of a dB at that distance), for every later evaluation;
- ``reach_40dB``: first depth from which x̂ stays ≥ 40 dB from the sequential x̂;
- ``stop``: the depth at which the solver stops by its own rule (its default tolerance), with
  the PSNR and LPIPS (AlexNet, against the ground truth) of what it returns there; every curve
  point also has its LPIPS.

The solver curves run with a vanishing tolerance (so they continue past their own stop) and
the causal rule's threshold pinned to the solver's own, so until the solver's own stop the
iterates are the ones ``dq.restore`` computes; ``stop`` is where its own tolerance ends it.
Writes ``<out>.md``, ``<out>.csv``, ``<out>_curves.png`` and every curve point in
``<out>_curves.json``.

    python experiments/bench_depth.py --timesteps 25 --size 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import deqir_jax as dq
from deqir_jax.diffusion import DEQMap, coarse_trajectory, initial_trajectory
from deqir_jax.diffusion.deq_map import parse_linearize
from deqir_jax.restore import (
    DEFAULT_LINEARIZE,
    _sequential,
    eps_view,
    make_problem,
    make_solver,
    map_settings,
)
from deqir_jax.solve import Anderson, Picard

sys.path.insert(0, str(Path(__file__).parent))
from _report import header, machine, table, write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "test"
SAMPLERS = {"official": dq.Sampler.official(),
            "ddnm": dq.Sampler(etw=1.0, nw=1.0, fresh_noise=True)}
OP_KW = {"sr_bicubic": dict(scale=4), "inpainting": dict(mask="random", keep_ratio=0.5),
         "deblur_gauss": {}, "colorization": {}}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A parallel solver: the solver value, the system's order, the coarse start and the
    map's linearization (``DEQMap.linearize``)."""

    solver: object
    order: int | None = None
    coarse: int = 0
    linearize: float | tuple[float, float] | None = None


def variants(T: int, names) -> dict[str, Variant]:
    default = make_solver("anderson", T)
    order, linearize = map_settings("anderson")
    all_ = {
        "picard": Variant(Picard(tol=1e-5, max_steps=T + 1)),
        "picard-lin": Variant(Picard(tol=1e-5, max_steps=T + 1), linearize=DEFAULT_LINEARIZE),
        "anderson-faithful": Variant(Anderson.faithful()),
        "anderson-v1": Variant(Anderson(tol=1e-4, max_steps=max(2 * T, 15))),
        "triangular-full": Variant(default, None),
        "triangular-lin": Variant(default, None, linearize=DEFAULT_LINEARIZE),
        "default": Variant(default, order, linearize=linearize),
        "order2": Variant(default, 2),
        f"coarse{max(T // 5, 1)}+order2": Variant(default, 2, max(T // 5, 1)),
    }
    out = {}
    for name in names:
        out[name] = parse_variant(name, all_)
    return out


def parse_variant(name: str, known: dict[str, Variant]) -> Variant:
    """A known variant; ``picard-lin<S2>``/``triangular-lin<S2>``: another linearization
    variance (``<S2N>/<S2R>``: one for the null space of A, one for its range); a
    ``:field=value,...`` suffix overrides fields of the solver (e.g.
    ``default:m=10``)."""
    base, _, overrides = name.partition(":")
    kind, _, s2 = base.partition("-lin")
    if base in known:
        var = known[base]
    elif kind in ("picard", "triangular") and (lin := _linearize(s2)) is not None:
        var = dataclasses.replace(known[f"{kind}-lin"], linearize=lin)
    else:
        raise SystemExit(f"unknown solver {base!r}; known: {sorted(known)}, "
                         "picard-lin<S2>, triangular-lin<S2> (or <S2N>/<S2R>: null space / "
                         "range), any of them with :field=value")
    fields = {}
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        if not hasattr(var.solver, key) or not value:
            raise SystemExit(f"{name!r}: {key!r} is not a field of {type(var.solver).__name__}"
                             " (write field=value)")
        current = getattr(var.solver, key)
        if isinstance(current, bool):
            fields[key] = value.lower() in ("1", "true")
        else:
            fields[key] = float(value) if current is None else type(current)(value)
    return dataclasses.replace(var, solver=dataclasses.replace(var.solver, **fields))


def _linearize(text: str):
    """``<S2>`` or ``<S2N>/<S2R>`` as a ``linearize`` value; None if it is not one."""
    try:
        return parse_linearize(text, sep="/")
    except ValueError:
        return None


def load_model(name: str, size: int):
    if name == "default":
        return dq.models.default(), "embedded default prior"
    if name == "gaussian":
        return dq.diffusion.GaussianModel.create((size, size, 3)), "Gaussian test model"
    if name == "adm256-random":
        cfg = dq.models.get_preset("adm-imagenet256-uncond")
        model = dq.models.create(cfg, key=0)
        leaves, tree = jax.tree_util.tree_flatten(model.params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        leaves = [0.02 * jax.random.normal(k, leaf.shape) for k, leaf in
                  zip(keys, leaves, strict=True)]
        return (dataclasses.replace(model, params=jax.tree_util.tree_unflatten(tree, leaves)),
                "full-size ADM-256 architecture, random weights N(0, 0.02²) (depth only)")
    raise SystemExit(f"unknown --model {name!r}: default | gaussian | adm256-random")


def images(names, size):
    out = []
    for name in names:
        path = DATA / name
        if not path.exists():
            raise SystemExit(f"{path} not found (../shared/data/test is needed)")
        img = dq.io.read_image(path)
        top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        out.append((f"{path.parent.name}/{path.stem}", img[top:top + size, left:left + size]))
    return out


def psnr(a, b):
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


_LPIPS = {}


def lpips(a, b) -> float:
    """AlexNet LPIPS (v0.1) of two (H, W, 3) images in [-1, 1] (jitted once per shape)."""
    if not _LPIPS:
        params = dq.metrics.load_lpips_params("alex")
        _LPIPS["fn"] = jax.jit(lambda x, y: dq.metrics.lpips_apply(params, x, y, "alex"))
    return float(_LPIPS["fn"](jnp.asarray(a)[None], jnp.asarray(b)[None])[0])


def curve(eps, problem, variant: Variant, evals: int, gt, seq):
    """Per evaluation: (depth, psnr_gt, psnr_seq, residual), and the point where the solver
    stops by its own rule (None if not within ``evals``).

    The loop runs the solver with a vanishing tolerance, so it continues past its own stop;
    the causal rule's settled threshold is pinned to the original one, so the iterates are
    exactly those of the original solver until it stops (with one image per batch its stop
    is the first evaluation whose residual is ≤ tol after the warm-up).
    """
    F = DEQMap(eps, order=variant.order, linearize=variant.linearize)
    solver = variant.solver
    extra = {}
    if isinstance(solver, Anderson):
        extra["settle_tol"] = solver.tol if solver.settle_tol is None else solver.settle_tol
    tight = dataclasses.replace(solver, tol=1e-30, max_steps=1000, **extra)
    rs = jnp.asarray(problem.coeffs.sqrt_1ma, jnp.float32)
    X0 = (jax.jit(partial(coarse_trajectory, eps), static_argnums=1)(problem, variant.coarse)
          if variant.coarse else initial_trajectory(problem))
    init = jax.jit(lambda x, p: tight.init(F, x, p, rs))
    step = jax.jit(lambda s, p: tight.step(F, s, p, rs))
    value = jax.jit(lambda s: tight.finish(s)[0][0, -1])
    st = init(X0, problem)
    out, stop = [], None
    for k in range(1, evals + 1):
        im = np.asarray(value(st))
        res = float(st["history"][k - 1])
        out.append(dict(depth=variant.coarse + k, psnr_gt=psnr(im, gt), psnr_seq=psnr(im, seq),
                        lpips_gt=lpips(im, gt), residual=res))
        if stop is None and (stops_here(k, res, solver) or k >= solver.max_steps):
            stop = dict(out[-1], converged=stops_here(k, res, solver))
        if k < evals:
            st = step(st, problem)
    return out, stop


def stops_here(k: int, residual: float, solver, tol: float | None = None) -> bool:
    """The solver's own stopping test at its k-th evaluation (1-based, after any coarse
    start): past its warm-up and the stopping measure ≤ its tolerance (or ``tol``)."""
    return k > getattr(solver, "warmup", 0) and residual <= (solver.tol if tol is None else tol)


def sequential_quality(point, seq_psnr) -> bool:
    """The benchmark's criterion: within 0.1 dB of the sequential PSNR (against the ground
    truth) or ≥ 50 dB from the sequential x̂."""
    return point["psnr_gt"] >= seq_psnr - 0.1 or point["psnr_seq"] >= 50


def first_stable(points, ok):
    """Depth from which ``ok`` holds at every later point (None if not by the last one)."""
    depth = None
    for p in points:
        if ok(p):
            depth = p["depth"] if depth is None else depth
        else:
            depth = None
    return depth


def run(args):
    rows, curves = [], {}
    for model_name in args.models:
        for T in args.timesteps:
            size = args.size if T <= 25 else args.size_long
            model, model_desc = load_model(model_name, size)
            eps = eps_view(model.eps_fn, 3)
            depth_only = model_name == "adm256-random"
            for task in args.tasks:
                for name, img in images(args.images, size):
                    op = dq.operators.get(task, image_shape=img.shape, **OP_KW[task])
                    y = op.A(jnp.asarray(img)[None])
                    for sampler in args.samplers:
                        prob = make_problem(model, y, op, SAMPLERS[sampler], timesteps=T, key=0)
                        seq = np.asarray(_sequential(eps, prob))[0]
                        base = dict(model=model_name, T=T, task=task, image=name,
                                    sampler=sampler, seq_psnr=psnr(seq, img),
                                    seq_lpips=lpips(seq, img))
                        for vname, var in variants(T, args.solvers).items():
                            t0 = time.perf_counter()
                            evals = min(args.max_depth - var.coarse, var.solver.max_steps)
                            pts, stop = curve(eps, prob, var, evals, img, seq)
                            curves[(model_name, T, task, name, sampler, vname)] = pts
                            close = lambda p, s=base["seq_psnr"]: sequential_quality(p, s)
                            row = dict(base, solver=vname,
                                       reach_01dB=first_stable(pts, close),
                                       reach_40dB=first_stable(pts, lambda p: p["psnr_seq"] >= 40),
                                       stop_depth=stop and stop["depth"],
                                       stop_psnr=stop and stop["psnr_gt"],
                                       stop_vs_seq=stop and stop["psnr_seq"],
                                       stop_lpips=stop and stop["lpips_gt"],
                                       stop_converged=stop and stop["converged"],
                                       best_psnr_seen=max(p["psnr_gt"] for p in pts))
                            if depth_only:
                                for k in ("seq_psnr", "seq_lpips", "stop_psnr", "stop_lpips",
                                          "best_psnr_seen"):
                                    row[k] = None
                                row["reach_01dB"] = None
                            rows.append(row)
                            print(json.dumps(row), f"({time.perf_counter() - t0:.0f} s)",
                                  flush=True)
    return rows, curves


def fmt(v):
    if v is None:
        return "–"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def write(args, rows, curves):
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out.with_suffix(".csv"), rows)
    lines = header("Depth to quality of the parallel solvers", "bench_depth.py", [
        f"images: {', '.join(args.images)} (centre crops: {args.size} px for T ≤ 25, "
        f"{args.size_long} px above); batch 1, seed 0",
        "samplers: official = etw 0.1, nw 0 (one shared noise); ddnm = DDNM's η = 1 "
        "(etw = nw = 1, fresh noise per step)",
        "depth: sequential network rounds (parallel map evaluations + coarse steps); the "
        f"sequential sampler's depth is T; curves capped at depth {args.max_depth}",
        "reach_01dB: first depth from which x̂ stays ≥ (sequential PSNR − 0.1 dB) or ≥ 50 dB "
        "from the sequential x̂; reach_40dB: stays ≥ 40 dB from it; – = not within the cap",
        "stop_*: where the solver stops by its own default rule (its tolerance, or its step "
        "limit: stop_converged False), and what it returns there (PSNR, PSNR vs the "
        "sequential x̂, LPIPS vs the ground truth); – = beyond the cap; seq_*: the sequential "
        "sampler's PSNR and LPIPS",
        "solvers: picard = full-order Picard (the official map); picard-lin = the same on "
        f"the linearized map (`linearize={DEFAULT_LINEARIZE}`: ε's Gaussian slope solved in "
        "the scan; a pair is (null space, range) of A; -lin<S2> or -lin<S2N>/<S2R> names "
        "other variances); anderson-faithful = official settings; "
        "anderson-v1 = an earlier default (per-row mixing, full order, relative tol 1e-4); "
        "triangular-full / triangular-lin = triangular Anderson with the per-row stop on the "
        "official / the linearized full-order map; default = "
        "`dq.restore(method='anderson')` (triangular Anderson, per-row stop, the linearized "
        f"full-order map, `linearize={DEFAULT_LINEARIZE}`; the same as triangular-lin); "
        "order2 = triangular Anderson on the order-2 system; coarseN+order2 = that started "
        "from an N-step coarse pass",
        f"machine: {machine()}",
    ]) + table(rows, fmt)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    # Every curve point, for re-calibrating a stopping rule without re-running the solvers.
    Path(str(out) + "_curves.json").write_text(json.dumps(
        [dict(zip(("model", "T", "task", "image", "sampler", "solver"), k, strict=True),
              points=v) for k, v in curves.items()]))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({k[:5] for k in curves})
    cols = min(4, len(panels))
    nrow = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrow, cols, figsize=(4.2 * cols, 3.3 * nrow), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for key, pts in curves.items():
            if key[:5] == panel:
                ax.plot([p["depth"] for p in pts], [min(p["psnr_seq"], 80) for p in pts],
                        marker=".", label=key[5])
        m, T, task, name, sampler = panel
        ax.axhline(40, color="gray", lw=0.6, ls="--")
        ax.set_title(f"{m} T={T} {task} {sampler}", fontsize=8)
        ax.set_xlabel("depth (sequential rounds)")
        ax.set_ylabel("PSNR vs sequential x̂ (dB)")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(str(out) + "_curves.png", dpi=100)
    print(f"wrote {out.with_suffix('.md')}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["default"],
                   help="default | gaussian | adm256-random")
    p.add_argument("--timesteps", type=int, nargs="+", default=[25])
    p.add_argument("--tasks", nargs="+", default=list(OP_KW), choices=list(OP_KW))
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--solvers", nargs="+",
                   default=["picard", "anderson-faithful", "default", "order2"],
                   help="variants: picard, picard-lin, anderson-faithful, anderson-v1, "
                        "triangular-full, triangular-lin, default, order2, coarse<N>+order2; "
                        "picard-lin<S2>/triangular-lin<S2> for another s² (<S2N>/<S2R>: "
                        "null space / range of A); a suffix "
                        ":field=value,... overrides solver fields (default:m=10)")
    p.add_argument("--images", nargs="+", default=["Kodak24/kodim05.png"],
                   help="paths under ../shared/data/test")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--size-long", type=int, default=32, help="crop size for T > 25")
    p.add_argument("--max-depth", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_depth"))
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    rows, curves = run(args)
    write(args, rows, curves)


if __name__ == "__main__":
    main()
