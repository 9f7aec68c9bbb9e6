"""Accelerator protocol: sequential vs parallel (DEQ) restoration with a full-size ADM-256 UNet.

One script, unchanged on CPU, GPU or TPU. With a random-weight guided-diffusion ADM-256 UNet
(``adm-imagenet256-uncond``: 552 M parameters, 6 output channels of which ``dq.restore`` uses
the first 3), the official sampler (etw 0.1, nw 0), batch 1 and a deterministic synthetic test
image, it measures for every T:

1. wall-clock per image of ``dq.restore`` after compilation (a warm-up call compiles; then the
   best of ``--repeats`` runs, each ending in ``jax.block_until_ready``) for ``sequential``,
   ``anderson`` (dq.restore's default solver settings) and ``picard``, with the solver's
   iterations / NFE (and ``depth`` when the stats have it) and the distance of the parallel
   images to the sequential one;
2. ONE batched network call on T rows (at the T sampling timesteps) vs ONE single-row call;
3. memory: XLA's compiled temporary buffer size of every program and, on devices that report
   it, the allocator's peak bytes in use;
4. the device, the jax version and the settings, in the header of ``<out>.md`` (the tables)
   and ``<out>.csv`` (one row per (T, method)).

    python experiments/accelerator_protocol.py                          # the accelerator run
    python experiments/accelerator_protocol.py --size 64 --timesteps 25 # CPU-sized check
    python experiments/accelerator_protocol.py --model small --size 32 --timesteps 4 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import shlex
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import deqir_jax as dq

sys.path.insert(0, str(Path(__file__).parent))
from _report import best_of, header, machine, table, write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "accelerator_protocol.py"
METHODS = ("sequential", "anderson", "picard")
MODELS = ("adm256", "small")
ETW, NW, SEED = 0.1, 0.0, 0
WEIGHT_STD = 0.05  # every parameter tensor re-drawn from N(0, WEIGHT_STD²)
MB = 2**20


# ----------------------------------------------------------------------------- setup


def model_config(name: str):
    """The network config of ``--model``."""
    if name == "adm256":
        return dq.models.get_preset("adm-imagenet256-uncond")
    # like bench_solvers' "random" model, but with learned-sigma output (6 channels) as ADM-256
    return dq.models.ADMConfig(image_size=32, model_channels=32, out_channels=6,
                               num_res_blocks=1, attention_resolutions=(8,),
                               channel_mult=(1, 2, 2), num_heads=1, num_head_channels=32)


def random_model(name: str):
    """(model, description): every parameter tensor drawn from N(0, 0.05²) (numpy, seeded),
    as bench_solvers' random model. The full-size network's ε then has std ≈ 0.03-0.05 and
    stays finite (checked at run time); the timings do not depend on the values."""
    cfg = model_config(name)
    abstract = dq.models.abstract_params(cfg)
    leaves, tree = jax.tree_util.tree_flatten(abstract)
    rng = np.random.default_rng(SEED)
    leaves = [jnp.asarray(WEIGHT_STD * rng.standard_normal(leaf.shape, np.float32))
              for leaf in leaves]
    model = dq.models.from_params(cfg, jax.tree_util.tree_unflatten(tree, leaves))
    n = dq.models.count_params(cfg)
    what = ("guided-diffusion ADM-256 uncond (`adm-imagenet256-uncond`)" if name == "adm256"
            else "small ADM (32 ch, mult 1,2,2, 1 res block)")
    return model, (f"{what}, {n / 1e6:.1f} M parameters, {cfg.out_channels} output channels "
                   f"(ε = first 3); random weights, every tensor N(0, {WEIGHT_STD}²)")


def test_image(size: int) -> np.ndarray:
    """A smooth deterministic (size, size, 3) pattern in [-1, 1] (no data files)."""
    u, v = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="xy")
    chans = [np.sin(2 * np.pi * (1.5 * u + 0.5 * v) + 0.0) * np.cos(2 * np.pi * 0.7 * v),
             np.sin(2 * np.pi * (0.4 * u - 1.2 * v) + 1.0),
             np.cos(2 * np.pi * 2.0 * np.hypot(u - 0.4, v - 0.6))]
    return (0.8 * np.stack(chans, axis=-1)).astype(np.float32)


def make_operator(task: str, size: int, scale: int):
    """The degradation operator; SR tasks get ``scale``."""
    params = {"scale": scale} if task.startswith("sr_") else {}
    return dq.operators.get(task, image_shape=(size, size, 3), **params)


# ----------------------------------------------------------------------------- measuring


def device_info() -> dict:
    d = jax.devices()[0]
    return dict(device_kind=d.device_kind, platform=d.platform, device_count=jax.device_count(),
                jax=jax.__version__)


def peak_mb() -> float:
    """The device allocator's peak bytes in use since the process started (NaN when the
    backend does not report it, e.g. CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return float("nan")
    if not stats or "peak_bytes_in_use" not in stats:
        return float("nan")
    return stats["peak_bytes_in_use"] / MB


def temp_mb(compiled) -> float:
    """XLA's temporary buffer size of a compiled program in MiB (NaN when not reported)."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return float("nan")
    size = getattr(analysis, "temp_size_in_bytes", None) if analysis is not None else None
    return float("nan") if size is None else size / MB


def gflop(compiled) -> float:
    """XLA's FLOP count of a compiled program in GFLOP (NaN when not reported)."""
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, list | tuple):
            cost = cost[0] if cost else None
        return float(cost["flops"]) / 1e9 if cost and "flops" in cost else float("nan")
    except Exception:  # noqa: BLE001 - not every backend implements it
        return float("nan")


def network_call(model, rows: int, t: np.ndarray, size: int, repeats: int) -> dict:
    """One jitted ``eps_fn`` call on ``rows`` rows: compile (AOT), warm up, best of repeats."""
    x = jax.random.normal(jax.random.key(2), (rows, size, size, 3), jnp.float32)
    t = jnp.asarray(t, jnp.int32)
    t0 = time.perf_counter()
    compiled = jax.jit(lambda p, x, t: model.eps_fn(p, x, t)).lower(model.params, x, t).compile()
    compile_s = time.perf_counter() - t0
    out = compiled(model.params, x, t)
    jax.block_until_ready(out)
    finite = bool(jnp.all(jnp.isfinite(out)))
    std = float(jnp.std(out[..., :3]))
    _, sec = best_of(lambda: compiled(model.params, x, t), repeats)
    return dict(seconds=sec, compile_s=compile_s, temp_mb=temp_mb(compiled), finite=finite,
                eps_std=std, gflop=gflop(compiled))


@contextlib.contextmanager
def captured_programs():
    """Record the calls ``dq.restore`` makes to the jitted functions of its module.

    Yields a list that fills with ``(jitted, args, kwargs)``; lowering them again with the same
    arguments hits jit's cache and gives the compiled programs that actually ran (and their
    memory analysis), whatever the solver and map settings of this library version are.
    """
    module = importlib.import_module("deqir_jax.restore")  # dq.restore is the function
    calls, originals = [], {}
    for name, fn in list(vars(module).items()):
        if callable(fn) and hasattr(fn, "lower") and hasattr(fn, "trace"):
            originals[name] = fn

            def wrapper(*a, _fn=fn, **k):
                calls.append((_fn, a, k))
                return _fn(*a, **k)

            setattr(module, name, wrapper)
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)


def programs_info(calls) -> tuple[float, str]:
    """(largest temporary size in MiB over the captured programs, description of the solver
    and map they ran with)."""
    from deqir_jax.diffusion import DEQMap
    from deqir_jax.solve import Anderson, Picard

    temps, what = [], []
    for fn, a, k in calls:
        try:
            temps.append(temp_mb(fn.lower(*a, **k).compile()))
        except Exception as e:  # noqa: BLE001 - best effort: the timings do not depend on it
            print(f"  (no memory analysis: {type(e).__name__}: {e})", flush=True)
        for v in (*a, *k.values()):
            if isinstance(v, Anderson | Picard):
                what.append(repr(v))
            elif isinstance(v, DEQMap):
                what.append(f"DEQMap(chunk_size={v.chunk_size}, order={v.order})")
    temps = [t for t in temps if not math.isnan(t)]
    return (max(temps) if temps else math.nan), "; ".join(dict.fromkeys(what))


def _scalar(v):
    """A per-image stats list of one image (batch 1) as its value."""
    return v[0] if isinstance(v, list | tuple) and len(v) == 1 else v


def run_method(model, y, op, T: int, method: str, args) -> tuple[dict, np.ndarray | None]:
    """Time ``dq.restore`` for one (T, method); returns the CSV row and the image."""
    kw = dict(key=SEED, sampler=dq.Sampler(etw=ETW, nw=NW), on_max_steps="ignore")
    if method != "sequential" and args.chunk_size is not None:
        kw["chunk_size"] = args.chunk_size
    call = lambda: dq.restore(model, y, op, T, method, **kw)
    row = dict(T=T, method=method)
    try:
        with captured_programs() as programs:
            t0 = time.perf_counter()
            res = call()
            jax.block_until_ready(res.image)
            first = time.perf_counter() - t0
        res, sec = best_of(call, args.repeats)
    except Exception as e:  # noqa: BLE001 - SolverError, out of memory: record and go on
        print(f"  {method} failed: {type(e).__name__}: {e}", flush=True)
        row.update(seconds=math.nan, first_call_s=math.nan, iterations=None, nfe=None,
                   depth=None, converged=False, result=f"error: {type(e).__name__}",
                   residual=math.nan, temp_mb=math.nan, solver="")
        return row, None
    s = res.stats
    residual = s.get("residual")
    temp, solver = programs_info(programs)
    row.update(
        seconds=sec,
        first_call_s=first,
        iterations=s.get("iterations"),
        nfe=s.get("nfe"),
        depth=_scalar(s.get("depth")),
        converged=s.get("converged"),
        result=s.get("result"),
        residual=max(residual) if residual else math.nan,
        temp_mb=temp,
        solver=solver,
    )
    return row, np.asarray(res.image[0])


# ----------------------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="adm256", choices=MODELS,
                   help="adm256: full-size random ADM-256 (default); small: quick small ADM")
    p.add_argument("--size", type=int, default=256, help="image size S (S x S x 3)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[25, 100], metavar="T")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   metavar="METHOD", help=f"any of {', '.join(METHODS)}")
    p.add_argument("--task", default="sr_bicubic", choices=dq.operators.TASKS)
    p.add_argument("--scale", type=int, default=4, help="SR factor (sr_* tasks)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="network rows per call in the parallel solvers (default: all T)")
    p.add_argument("--matmul-precision", default=None, choices=("default", "high", "highest"),
                   help="jax_default_matmul_precision (default: the backend's; GPUs and TPUs "
                        "then use reduced-precision passes for float32 matmuls/convs)")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "accelerator_protocol"),
                   help="output stem: writes <out>.md and <out>.csv")
    args = p.parse_args(argv)
    mult = model_config(args.model).size_multiple
    if args.size <= 0 or args.size % mult:
        p.error(f"--size must be a positive multiple of {mult} for --model {args.model}, "
                f"got {args.size}")
    if args.task.startswith("sr_") and (args.scale < 1 or args.size % args.scale):
        p.error(f"--scale must be a positive divisor of --size {args.size}, got {args.scale}")
    bad = [T for T in args.timesteps if not 1 <= T <= 1000]
    if bad:
        p.error(f"--timesteps must be in 1..1000, got {bad}")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.chunk_size is not None and args.chunk_size < 1:
        p.error(f"--chunk-size must be >= 1, got {args.chunk_size}")
    args.timesteps = list(dict.fromkeys(args.timesteps))
    # sequential first: it is the reference of the parallel images
    args.methods = [m for m in METHODS if m in args.methods]
    return args


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def write(args, argv, rows, calls, model_desc, dev, complete: bool = True) -> Path:
    """``<out>.md`` and ``<out>.csv``; also called after every variant (``complete=False``),
    so a run stopped by a time limit leaves what it measured."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if rows:
        write_csv(out.with_suffix(".csv"), rows)
    task = f"`{args.task}`" + (f" ×{args.scale}" if args.task.startswith("sr_") else "")
    lines = header("Accelerator protocol: sequential vs parallel restoration", SCRIPT, [
        f"device: {dev['device_kind']} (platform {dev['platform']}, {dev['device_count']} "
        f"device(s)); jax {dev['jax']}; host: {machine()}",
        f"model: {model_desc}",
        f"image: synthetic smooth pattern {args.size}x{args.size}x3; task {task}; batch 1; "
        f"sampler etw {ETW}, nw {NW}; seed {SEED}; float32 (default matmul precision "
        f"{jax.config.jax_default_matmul_precision or 'backend default'})",
        "dq.restore(model, y, op, T, method, key=0, etw=0.1, nw=0, on_max_steps='ignore'"
        + (f", chunk_size={args.chunk_size}" if args.chunk_size else "")
        + "); anderson and picard with dq.restore's default solver settings",
        f"seconds: per image, best of {args.repeats} run(s) after a warm-up call that compiles "
        "(first_call_s: that warm-up, compilation included); speedup = sequential / method",
        "iterations: parallel map evaluations (T for sequential); nfe: network rows per image; "
        "max_abs_vs_sequential: max |x̂ − x̂_sequential| over pixels ([-1, 1] units)",
        "temp_mb: XLA's compiled temporary buffers of the program (memory_analysis); "
        "peak_mb: the device allocator's peak bytes in use so far in the process "
        "(cumulative, in run order; nan where the backend does not report it)",
        "random weights: the cost of a network call and of an iteration is that of the real "
        "network; iteration counts (and so the parallel speedup) are not those of a trained "
        "prior, whose ε depends much more on its input",
    ])
    command = shlex.join(["python", f"experiments/{SCRIPT}", *argv])
    for i, line in enumerate(lines):  # the exact argv of this run (also when called in-process)
        if line.startswith("Command:"):
            lines[i] = f"Command: `{command}`"
    if not complete:
        lines += ["**Partial results: the run had not finished when this was written.**", ""]
    cols = ["T", "method", "seconds", "speedup", "first_call_s", "iterations", "nfe", "depth",
            "converged", "max_abs_vs_sequential", "temp_mb", "peak_mb"]
    if rows:
        lines += ["## Restoration", ""] + table([{k: r[k] for k in cols} for r in rows], fmt)
        solvers = [f"- T = {r['T']}, {r['method']}: `{r['solver']}`" for r in rows
                   if r["solver"]]
        if solvers:
            lines += ["", "Solver and map of each parallel run (as passed to the jitted "
                      "program):", "", *solvers]
        lines += [""]
    lines += ["## One network call: T rows batched vs 1 row", "",
              "The parallel solvers make one batched call of T rows per iteration; "
              "the sequential sampler T single-row calls. batched/(T·single) < 1 means a "
              "batched row costs less than a single-row call. "
              "gflop: XLA's FLOP count of the call (cost_analysis); tflop_per_s: achieved "
              "rate of the batched call.", ""]
    lines += table(calls, fmt) if calls else []
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    if args.matmul_precision is not None:
        jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    dev = device_info()
    print(f"device {dev['device_kind']} ({dev['platform']} x{dev['device_count']}), "
          f"jax {dev['jax']}", flush=True)
    t0 = time.perf_counter()
    model, model_desc = random_model(args.model)
    print(f"model: {model_desc} ({time.perf_counter() - t0:.1f} s)", flush=True)

    S = args.size
    img = test_image(S)
    op = make_operator(args.task, S, args.scale)
    y = op.A(jnp.asarray(img)[None])
    taus = {T: np.asarray(dq.diffusion.step_coefficients(T, etw=ETW, nw=NW).t)
            for T in args.timesteps}

    t_mid = taus[args.timesteps[0]][len(taus[args.timesteps[0]]) // 2]
    single = network_call(model, 1, np.array([t_mid]), S, args.repeats)
    if not single["finite"]:
        raise SystemExit(f"the random network gives non-finite outputs at size {S}; lower "
                         f"WEIGHT_STD ({WEIGHT_STD}) in {SCRIPT}")
    print(f"single-row call: {single['seconds']:.4g} s (compile {single['compile_s']:.3g} s, "
          f"ε std {single['eps_std']:.3g})", flush=True)

    rows, calls = [], []
    for T in args.timesteps:
        try:
            batched = network_call(model, T, taus[T], S, args.repeats)
        except Exception as e:  # noqa: BLE001 - e.g. out of device memory: record and go on
            print(f"T={T:4d} batched network call failed: {type(e).__name__}: {e}", flush=True)
            batched = dict(seconds=math.nan, temp_mb=math.nan, gflop=math.nan)
        call = dict(T=T, single_s=single["seconds"], batched_s=batched["seconds"],
                    batched_over_single=batched["seconds"] / single["seconds"],
                    batched_over_T_single=batched["seconds"] / (T * single["seconds"]),
                    single_temp_mb=single["temp_mb"], batched_temp_mb=batched["temp_mb"],
                    single_gflop=single["gflop"], batched_gflop=batched["gflop"],
                    batched_tflop_per_s=batched["gflop"] / batched["seconds"] / 1e3,
                    peak_mb=peak_mb())
        calls.append(call)
        write(args, argv, rows, calls, model_desc, dev, complete=False)
        print(f"T={T:4d} network call: batched {batched['seconds']:.4g} s, "
              f"batched/single {call['batched_over_single']:.3g}, "
              f"batched/(T·single) {call['batched_over_T_single']:.3g}", flush=True)
        ref, t_seq = None, math.nan
        for method in args.methods:
            row, image = run_method(model, y, op, T, method, args)
            if method == "sequential":
                ref, t_seq = image, row["seconds"]
            row["speedup"] = t_seq / row["seconds"]
            row["max_abs_vs_sequential"] = (
                float(np.max(np.abs(image - ref))) if image is not None and ref is not None
                else math.nan)
            row["peak_mb"] = peak_mb()
            row.update(size=S, batch=1, model=args.model, task=args.task,
                       **{k: call[k] for k in ("single_s", "batched_s", "batched_over_single",
                                               "batched_over_T_single")},
                       **dev)
            rows.append(row)
            write(args, argv, rows, calls, model_desc, dev, complete=False)
            print(f"T={T:4d} {method:10s} {fmt(row['seconds'])} s/image "
                  f"(speedup {fmt(row['speedup'])}, first call {fmt(row['first_call_s'])} s), "
                  f"iterations {fmt(row['iterations'])}, nfe {fmt(row['nfe'])}, "
                  f"max_abs_vs_sequential {fmt(row['max_abs_vs_sequential'])}, "
                  f"temp {fmt(row['temp_mb'])} MiB", flush=True)
    out = write(args, argv, rows, calls, model_desc, dev)
    print()
    print(Path(out.with_suffix(".md")).read_text(), flush=True)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}", flush=True)
    return rows, calls


if __name__ == "__main__":
    main()
