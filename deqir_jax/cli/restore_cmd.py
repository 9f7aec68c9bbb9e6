"""``deqir restore INPUT... --task TASK -o OUTDIR``: restore images, write pictures and metrics."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..diffusion import Sampler, sampler_for
from ..diffusion.deq_map import parse_linearize
from ..io import list_images, read_image
from ..parallel import check_mesh
from ..restore import METHODS, make_solver, map_settings, resolve_method
from ..sampler import SettingError
from . import engine
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    check_outdir,
    check_outputs,
    fmt_metric,
    load_model,
    mean_of,
    model_info,
    note,
    progress,
    read_csv_rows,
    say,
    size_multiple,
    versions,
    write_csv,
    write_json,
)
from .tasks import (
    CS,
    build_task,
    check_size,
    make_operator,
    measured_y,
    pad_like_image,
    padded_size,
    resolve_mask,
    task_names_help,
)


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """Model, sampler and solver flags (shared by ``restore`` and ``demo``)."""
    g = p.add_argument_group("model and sampler")
    g.add_argument("--model", metavar="PATH", help="model checkpoint directory (default: the "
                   "embedded default model)")
    g.add_argument("--method", choices=METHODS, default="auto",
                   help="sequential sampling or the DEQ fixed point solved by Picard or "
                   "Anderson iteration (default: auto = sequential on a CPU, where a batched "
                   "call of T network rows costs about T single calls, anderson on a GPU/TPU)")
    g.add_argument("--timesteps", type=int, metavar="T", help="sampling steps T (default: the "
                   f"model's recommended settings, else {Sampler().timesteps})")
    g.add_argument("--seed", type=int, default=0, help="seed of x_T, the sampling noise, the "
                   "measurement noise, random masks and the CS permutation; the i-th image "
                   "draws from fold_in(key(seed), i), as dq.restore(key=seed) does (default: 0)")
    g.add_argument("--nw", type=float, help="DeqIR noise weight in [0, 1] (default: the "
                   "model's recommended settings, else 0)")
    g.add_argument("--etw", type=float, help="DeqIR eps weight in [0, 1] (default: the "
                   "model's recommended settings, else 0; the official example uses 0.1)")
    g.add_argument("--fresh-noise", action=argparse.BooleanOptionalAction, default=None,
                   help="a new noise z per step (standard DDNM) instead of the official single "
                   "shared z (default: the model's recommended settings, else shared)")
    g.add_argument("--samples", type=int, metavar="K", help="restore K posterior samples per "
                   "image (independent x_T) and output their mean, a Monte-Carlo posterior "
                   "mean: higher PSNR, less detail (default: the model's recommended settings, "
                   "else 1)")
    g.add_argument("--ccdf", type=int, metavar="K", help="run only the last K of the T steps, "
                   "starting from A+y diffused to that time (CCDF): K network rows instead of "
                   "T; K = T runs every step (default: the model's recommended settings, else "
                   "all T steps from noise)")
    g.add_argument("--official-sampler", action="store_true", help="the official DeqIR "
                   "example's sampler settings (T 25, etw 0.1, nw 0, one shared noise, one "
                   "sample) instead of the model's recommended ones; other sampler flags still "
                   "override them")
    g.add_argument("--devices", type=int, metavar="N", help="use N devices (a mesh): "
                   "anderson/picard split the T timesteps over them (T divisible by N), "
                   "sequential splits the images of each batch (use a --batch-size that is a "
                   "multiple of N) (default: one device)")
    g.add_argument("--chunk-size", type=int, metavar="N", help="network rows per call "
                   "(bounds memory for large images)")
    s = p.add_argument_group("solver (anderson / picard)")
    s.add_argument("--m", type=int, help="Anderson history size (default 5)")
    s.add_argument("--max-anderson-iters", "--max-steps", dest="max_steps", type=int,
                   metavar="N", help="maximum map evaluations (default: T+2 for anderson, "
                   "T+1 for picard; 15 with --faithful)")
    s.add_argument("--tol", type=float, help="stopping tolerance (default: anderson 0.5 on the "
                   "per-row noise-scaled residual; picard 1e-5 relative; 1e-3 relative with "
                   "--faithful)")
    s.add_argument("--lam", type=float, help="Anderson ridge lambda (default 1e-3)")
    s.add_argument("--anderson-beta", dest="beta", type=float, help="Anderson mixing beta "
                   "(default 1.0)")
    s.add_argument("--faithful", action="store_true", help="the official DeqIR Anderson "
                   "settings (m 5, tol 1e-3, 15 evaluations, last iterate, no guard)")
    s.add_argument("--order", type=int, metavar="K", help="order of the fixed-point system: "
                   "each row K steps from row r-K (default: the full-order official map)")
    s.add_argument("--linearize", type=_linearize_value, metavar="S2|S2N,S2R|off",
                   help="solve the slope of the epsilon of Gaussian data with variance S2 "
                   "(or S2N in the null space of A and S2R in its range) inside the map's "
                   "prefix scan (same fixed point, fewer rounds); off: the official map "
                   "(default: 0.1,1 with --method anderson, off for picard and --faithful)")
    s.add_argument("--coarse", type=int, default=0, metavar="N", help="start the parallel "
                   "solve from an N-step sequential pass spread onto the T rows (counts in "
                   "the depth; default: 0, every row x_T)")
    s.add_argument("--strict", action="store_true", help="treat a solve that reaches its step "
                   "limit as a failure (exit code 1) instead of a warning")


def _check_range(name: str, value, lo=None, hi=None, *, lo_open=False) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise UsageError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise UsageError(f"{name} must be <= {hi}, got {value}")


_OFF = "off"


def _linearize_value(text: str) -> float | tuple[float, float] | str:
    """``--linearize``: a variance > 0, or two (null space, range) separated by a comma
    (checked as ``DEQMap`` checks them), or ``"off"`` (the official map; the option's
    absence, None, means the default)."""
    if text.strip().lower() in ("off", "none", "0"):
        return _OFF
    try:
        value = parse_linearize(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a variance > 0, two of them as S2N,S2R, or 'off', got {text!r}") from None
    return value


def sampler_from_args(args, model, **task) -> Sampler:
    """The sampler settings of a run: ``--official-sampler``'s or the model's recommended
    ones (else the library's), overridden by the sampler flags that were given and ``task``
    (e.g. the measurement noise); a bad value is a :class:`UsageError`."""
    _check_range("--timesteps", args.timesteps, 1, 1000)
    _check_range("--nw", args.nw, 0.0, 1.0)
    _check_range("--etw", args.etw, 0.0, 1.0)
    _check_range("--samples", args.samples, 1)
    given = {k: getattr(args, k) for k in ("timesteps", "nw", "etw", "fresh_noise", "samples",
                                             "ccdf")}
    given = {k: v for k, v in given.items() if v is not None}
    base = Sampler.official() if args.official_sampler else sampler_for(model)
    if "timesteps" in given and "ccdf" not in given and base.ccdf is not None \
            and base.ccdf > given["timesteps"]:
        given["ccdf"] = None  # a recommended start later than the asked T: run every step
    try:
        return base.replace(**given, **task)
    except SettingError as err:  # "ccdf must be ..." -> "--ccdf must be ..."
        flag = (f"--{err.field.replace('_', '-')}" if err.field in given
                else f"sampler setting {err.field}")
        raise UsageError(f"{flag} {err.detail}") from None


def sampler_source(args, model) -> str:
    """Where the run's sampler settings come from, for the log line."""
    base = ("--official-sampler" if args.official_sampler else "the model's recommended "
            "settings" if getattr(model, "sampler", None) is not None else "library defaults")
    flags = [f"--{k.replace('_', '-')}" for k in ("timesteps", "nw", "etw", "fresh_noise",
                                                  "samples", "ccdf")
             if getattr(args, k) is not None]
    return base + (f" with {' '.join(flags)}" if flags else "")


def run_config(args, model, *, sigma_y: float = 0.0, noise_aware: bool = False,
               lpips: bool = True) -> engine.RunConfig:
    """Validate the sampler/solver flags and build the sampler and the solver (before any
    work)."""
    _check_range("--sigma-y", sigma_y, 0.0, 1.0)
    _check_range("--chunk-size", args.chunk_size, 1)
    _check_range("--m", args.m, 1)
    _check_range("--max-anderson-iters", args.max_steps, 1)
    _check_range("--tol", args.tol, 0.0, lo_open=True)
    _check_range("--lam", args.lam, 0.0)
    _check_range("--anderson-beta", args.beta, 0.0, 1.0, lo_open=True)
    _check_range("--order", args.order, 1)
    _check_range("--ccdf", args.ccdf, 1)
    extra = dict(sigma_y=sigma_y, noise_aware=True) if noise_aware else {}
    sampler = sampler_from_args(args, model, **extra)
    steps = sampler.steps  # rows of the fixed point
    _check_range("--coarse", args.coarse, 0, steps)
    options = {k: getattr(args, k) for k in ("m", "max_steps", "tol", "lam", "beta")
               if getattr(args, k) is not None}
    solver = None
    method, reason = resolve_method(args.method)
    if method == "sequential":
        flags = [f for f, on in (("--faithful", args.faithful), ("--strict", args.strict),
                                 ("--order", args.order is not None),
                                 ("--linearize", args.linearize is not None),
                                 ("--coarse", args.coarse > 0)) if on]
        flags += [f"--{k.replace('_', '-')}" for k in options]
        if flags and args.method == "auto":
            raise UsageError(f"{flags[0]} is a parallel-solver option, and --method auto "
                             f"chose sequential ({reason}); pass --method anderson or picard")
        if flags:
            raise UsageError(f"{flags[0]} does not apply to --method sequential")
    else:
        if method == "picard":
            for k in ("m", "lam", "beta"):
                if k in options:
                    raise UsageError(f"--{'anderson-beta' if k == 'beta' else k} only applies "
                                     "to --method anderson")
            if args.faithful:
                raise UsageError("--faithful selects the official Anderson settings; use it "
                                 "with --method anderson")
        try:
            solver = make_solver(method, steps, None, args.faithful, **options)
        except (ValueError, TypeError) as err:
            raise UsageError(f"solver options: {err}") from None
    if args.devices is not None:
        try:
            devices = engine.mesh(args.devices)
            if method != "sequential":  # (sequential pads each batch to the device count)
                check_mesh(devices, 1, steps)
        except ValueError as err:  # "devices must be in [1, n], got N" / T not divisible
            raise UsageError(f"--devices {args.devices}: {err}") from None
    order = linearize = None
    if method != "sequential":
        order, linearize = map_settings(
            method, faithful=args.faithful, solver=solver,
            order="default" if args.order is None else args.order,
            linearize=("default" if args.linearize is None
                       else None if args.linearize == _OFF else args.linearize))
    return engine.RunConfig(
        sampler=sampler, method=method, method_reason=reason, solver=solver,
        order=order, linearize=linearize, coarse=args.coarse, devices=args.devices,
        chunk_size=args.chunk_size, strict=args.strict, seed=args.seed, lpips=lpips)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("--task", "--deg", required=True, metavar="TASK",
                   help=f"one of {task_names_help()} (or an alias such as sr, deblur, "
                   "inpaint, cs, denoise)")
    p.add_argument("-o", "--outdir", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("--measured", action="store_true", help="the inputs are measurements y "
                   "(e.g. low-resolution images for SR, masked photos with --mask) instead of "
                   "clean images to degrade")
    p.add_argument("--sigma-y", type=float, default=0.0, metavar="S",
                   help="measurement noise std in [0, 1] pixel units; synthetic mode adds it "
                   "to y (default: 0)")
    p.add_argument("--noise-aware", action="store_true",
                   help="DDNM+ correction for noisy measurements (uses --sigma-y)")
    t = p.add_argument_group("task parameters")
    t.add_argument("--scale", type=int, help="SR factor (default 4)")
    t.add_argument("--mask", help="inpainting mask: an image or .npy file (nonzero/white = "
                   "observed) or box (default), random, half")
    t.add_argument("--keep-ratio", type=float, help="observed fraction for --mask random "
                   "(default 0.5)")
    t.add_argument("--kernel", metavar="NPY", help="blur kernel (.npy, 1-D separable or 2-D) "
                   "for --task deblur")
    t.add_argument("--sigma", help="Gaussian blur std: deblur_gauss (default 10) or "
                   "deblur_aniso 'SH,SW' (default 1,20)")
    t.add_argument("--kernel-size", type=int, help="blur kernel size (deblur_gauss 5, "
                   "deblur_uni 9, deblur_aniso 9)")
    t.add_argument("--ratio", type=float, help="CS sampling ratio in (0, 1] (default 0.5)")
    t.add_argument("--faithful-operators", action="store_true",
                   help="the official PyTorch operators (quirks included)")
    add_sampling_arguments(p)
    o = p.add_argument_group("output")
    o.add_argument("--batch-size", type=int, default=1, help="images per restore call; "
                   "images of the same size are batched (default: 1)")
    o.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    o.add_argument("--resume", action="store_true", help="continue an interrupted run into "
                   "the same --outdir: images whose outputs all exist are skipped and left "
                   "untouched (their rows kept from metrics.csv), the others are restored; "
                   "metrics.csv and summary.json are rewritten")
    o.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def run(args) -> int:
    started = time.time()
    _check_range("--batch-size", args.batch_size, 1)
    spec = build_task(args, faithful=args.faithful_operators)
    if args.measured and spec.name == CS:
        raise UsageError("--measured is not supported for cs_walshhadamard: its measurements "
                         "are coefficient vectors, not images (use synthetic mode)")
    if args.measured and spec.name == "inpainting" and args.mask is None:
        raise UsageError("--measured inpainting needs --mask (a mask file with nonzero/white = "
                         "observed, or box/half/random)")
    if args.noise_aware and args.sigma_y == 0:
        raise UsageError("--noise-aware needs --sigma-y > 0")
    model, model_desc = load_model(args.model)
    cfg = run_config(args, model, sigma_y=args.sigma_y, noise_aware=args.noise_aware,
                     lpips=not args.no_lpips)
    say(cfg.method_line(), args.quiet)
    say(f"sampler: {cfg.sampler.describe()} ({sampler_source(args, model)})", args.quiet)
    try:
        paths = list_images(args.inputs)
    except ValueError as err:
        raise UsageError(str(err)) from None
    outdir = Path(args.outdir)
    check_outdir(outdir)
    y_pic = spec.name != CS
    outputs = [engine.output_paths(outdir, p.stem, original=not args.measured, y=y_pic)
               for p in paths]
    tables = [outdir / "metrics.csv", outdir / "summary.json"]
    done = _finished(args, paths, outputs, tables[0], spec.name)
    check_outputs([q for i, o in enumerate(outputs) if i not in done for q in o.values()]
                  + tables, args.overwrite or args.resume)
    if done:
        say(f"resume: {len(done)} of {len(paths)} image(s) already restored in {outdir}, "
            "skipped", args.quiet)

    images = []
    for p in paths:
        try:
            images.append(read_image(p))
        except ValueError as err:
            raise UsageError(str(err)) from None
    mm = size_multiple(model)
    jobs = [_job(i, p, img, spec, args.measured, mm) for i, (p, img) in
            enumerate(zip(paths, images, strict=True)) if i not in done]

    notes: set[str] = set()
    rows, failures, ops = [done[i] for i in sorted(done)], [], {}
    bar = progress(total=len(jobs), desc=f"restore {spec.name}", quiet=args.quiet)
    for group in _groups(jobs, args.batch_size):
        key = group[0].op_key()
        if key not in ops:
            ops[key] = make_operator(spec, group[0].padded, group[0].mask)
        for out in engine.run_group(model, ops[key], group, cfg, notes):
            rows.append(out.row)
            if out.error:
                failures.append(f"{out.job.name}: {out.error}")
                note(f"solver failed on {out.job.source}: {out.error}")
            else:
                engine.write_outcome(out, outputs[out.job.index],
                                     args.overwrite or args.resume)
                say(_line(out.row), args.quiet)
            bar.update(1)
        # The table so far, after every group: what --resume reads after an interruption.
        write_csv(tables[0], rows, engine.COLUMNS, True)
    bar.close()
    for msg in sorted(notes) if not args.quiet else ():
        note(f"note: {msg}")
    ok = [r for r in rows if r.get("iterations") is not None]
    unconverged = [r["name"] for r in ok if not r["converged"]]
    if unconverged:
        note(f"warning: the {cfg.method} solver reached its step limit before the tolerance "
             f"for {len(unconverged)} image(s) ({', '.join(unconverged[:3])}"
             f"{', ...' if len(unconverged) > 3 else ''}); their outputs were written "
             "(raise --max-anderson-iters or pass --strict to fail instead)")
    order = {str(p): i for i, p in enumerate(paths)}
    rows.sort(key=lambda r: order[r["input"]])  # image order, resumed or not
    write_csv(tables[0], rows, engine.COLUMNS, True)
    means = {k: mean_of(ok, k) for k in ("psnr_apy", "ssim_apy", "lpips_apy", "psnr", "ssim",
                                         "lpips", "consistency", "iterations", "nfe",
                                         "seconds")}
    summary = {
        "command": "restore", "argv": getattr(args, "argv", sys.argv),
        "mode": "measured" if args.measured else "synthetic",
        "inputs": [str(p) for p in paths], "outdir": str(outdir),
        "task": spec.describe(), "sigma_y": args.sigma_y, "sampler": cfg.describe(),
        "seed": args.seed, "batch_size": args.batch_size, "model": model_desc,
        "model_info": model_info(model), "versions": versions(), "count": len(rows),
        "converged": len(ok) - len(unconverged), "failed": failures, "means": means,
        "seconds_total": time.time() - started,
        "notes": ["seconds: per-image wall time of the restore call; the first image of each "
                  "size also pays the JIT compilation"] + sorted(notes),
    }
    write_json(tables[1], summary, True)
    tail = ""
    if means["psnr"] is not None:
        tail = (f"; mean PSNR {fmt_metric(means['psnr'])} dB (A+y "
                f"{fmt_metric(means['psnr_apy'])}), SSIM {fmt_metric(means['ssim'], 3)}")
    say(f"restored {len(ok)}/{len(rows)} image(s) with {spec.name} -> {outdir}{tail}",
        args.quiet)
    if failures:
        note(f"error: the solver failed on {len(failures)} image(s); see {tables[1]}")
        return EXIT_FAILURE
    return EXIT_OK


def _finished(args, paths, outputs, table: Path, task: str) -> dict:
    """With ``--resume``: ``{index: row}`` for the images whose outputs all exist, their rows
    from the previous ``metrics.csv`` (a bare row when it has none). Without it: nothing."""
    if not args.resume:
        return {}
    if args.overwrite:
        raise UsageError("--resume keeps finished outputs and --overwrite replaces them: "
                         "pass one of them")
    old = {}
    if table.exists():
        try:
            old = {r["input"]: r for r in read_csv_rows(table)}
        except (KeyError, ValueError, OSError) as err:
            raise UsageError(f"--resume cannot read '{table}': {err}") from None
    for row in old.values():
        if row.get("task") != task:
            raise UsageError(f"--resume: the outputs in '{table.parent}' were made for task "
                             f"{row.get('task')!r}, not {task!r}; use another --outdir")
    done = {}
    for i, (p, out) in enumerate(zip(paths, outputs, strict=True)):
        if all(q.exists() for q in out.values()):
            done[i] = old.get(str(p), {"name": p.stem, "task": task, "input": str(p)})
    return done


def _job(index, path: Path, image: np.ndarray, spec, measured: bool, mm: int) -> engine.Job:
    name = f"'{path}'"
    if measured:
        y, hw, padded, mask = measured_y(spec, image, str(path), mm)
        return engine.Job(index, path.stem, str(path), hw, padded, spec, y_pad=y, mask=mask)
    h, w = image.shape[:2]
    check_size(spec, h, w, f"image {name}")
    padded = padded_size(spec, h, w, mm)
    mask = resolve_mask(spec, h, w, padded, f"image {name}") if spec.name == "inpainting" \
        else None
    return engine.Job(index, path.stem, str(path), (h, w), padded, spec, original=image,
                      x_pad=pad_like_image(image, padded).astype(np.float32), mask=mask)


def _groups(jobs, batch_size):
    """Consecutive jobs with the same operator, at most ``batch_size`` per group."""
    group: list = []
    for job in jobs:
        if group and (len(group) == batch_size or job.op_key() != group[0].op_key()):
            yield group
            group = []
        group.append(job)
    if group:
        yield group


def _line(row: dict) -> str:
    parts = [f"{row['name']}:"]
    if row.get("psnr") is not None:
        parts.append(f"PSNR {fmt_metric(row['psnr'])} dB (A+y {fmt_metric(row['psnr_apy'])}), "
                     f"SSIM {fmt_metric(row['ssim'], 3)}"
                     + (f", LPIPS {fmt_metric(row['lpips'], 3)}" if row.get("lpips") is not None
                        else "") + ";")
    parts.append(f"|Ax-y| {row['consistency']:.2g};")
    parts.append(f"{row['method']}: {row['iterations']} iters, depth {row['depth']}, "
                 f"{row['nfe']} NFE,")
    parts.append("converged," if row["converged"] else "NOT converged,")
    parts.append(f"{row['seconds']:.1f} s")
    return " ".join(parts)
