"""``deqir demo``: every task on a bundled sample photograph, one overview grid."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .. import operators
from ..io import from_uint8, make_grid, read_image, write_image, write_uint8
from . import engine
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    check_outdir,
    check_outputs,
    fmt_metric,
    load_model,
    model_info,
    note,
    progress,
    say,
    size_multiple,
    versions,
    write_csv,
    write_json,
)
from .restore_cmd import add_sampling_arguments, run_config, sampler_source
from .tasks import TaskSpec, make_operator, pad_like_image, padded_size, resolve_mask

DEFAULT_SIZE = 64
DEFAULT_OUTDIR = "deqir_demo"
#: Task settings of the demo (the library defaults unless stated).
DEMO_PARAMS = {
    "sr_averagepooling": {"scale": 4},
    "sr_bicubic": {"scale": 4},
    "cs_walshhadamard": {"ratio": 0.5},
}
#: Denoising is trivial without noise (y = x): the demo adds sigma_y = 0.1 and uses DDNM+.
DEMO_DENOISE_SIGMA = 0.1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--outdir", default=DEFAULT_OUTDIR, metavar="OUTDIR",
                   help="output folder (default: %(default)s)")
    p.add_argument("--tasks", nargs="+", metavar="TASK", help="tasks to run (default: all "
                   f"{len(operators.TASKS)} official tasks)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, metavar="N",
                   help="side of the square sample image in pixels (default: %(default)s)")
    p.add_argument("--image", metavar="PATH", help="use this image (centre-cropped to a "
                   "square) instead of the bundled sample photograph")
    add_sampling_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def sample_image(size: int, path: str | None = None) -> tuple[np.ndarray, str]:
    """A ``size x size`` RGB image in [-1, 1] and where it came from.

    The default is scikit-image's bundled ``astronaut`` photograph (shipped inside the wheel,
    nothing is downloaded); without scikit-image, a procedurally generated picture.
    """
    if path is not None:
        try:
            arr = np.asarray(np.round((read_image(path) + 1) * 127.5), np.uint8)
        except ValueError as err:
            raise UsageError(str(err)) from None
        source = str(path)
    else:
        try:
            from skimage import data

            arr = np.asarray(data.astronaut())[:, :, :3]
            source = "skimage.data.astronaut() (NASA photograph, public domain)"
        except Exception:  # not installed, or its data files missing
            note("scikit-image (or its bundled sample data) is not available: using a "
                 "procedurally generated test picture instead of a photograph")
            return procedural_image(size), "procedural test picture (scikit-image missing)"
    h, w = arr.shape[:2]
    s = min(h, w)
    arr = arr[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    img = Image.fromarray(arr).resize((size, size), Image.Resampling.LANCZOS)
    return from_uint8(np.asarray(img)), source


def procedural_image(size: int) -> np.ndarray:
    """A smooth colour picture with edges and texture (deterministic)."""
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    r = 0.6 * xx + 0.3 * np.sin(6 * yy)
    g = 0.5 * yy + 0.3 * np.cos(5 * xx)
    b = 0.4 + 0.3 * np.sin(4 * (xx + yy))
    img = np.stack([r, g, b], -1)
    disk = (xx - 0.35) ** 2 + (yy - 0.4) ** 2 < 0.05
    img[disk] = [0.95, 0.85, 0.2]
    box = (np.abs(xx - 0.7) < 0.15) & (np.abs(yy - 0.7) < 0.12)
    img[box] = [0.1, 0.2, 0.7]
    img += 0.08 * ((np.floor(xx * 16) + np.floor(yy * 16)) % 2)[..., None] * (yy > 0.8)[..., None]
    return (np.clip(img, 0, 1) * 2 - 1).astype(np.float32)


def _tasks(names) -> list[str]:
    if not names:
        return list(operators.TASKS)
    out = []
    for n in names:
        try:
            t = operators.canonical_name(n)
        except ValueError as err:
            raise UsageError(str(err)) from None
        t = "deblur_gauss" if t == "deblur" else t
        if t not in out:
            out.append(t)
    return out


def run(args) -> int:
    started = time.time()
    tasks = _tasks(args.tasks)
    if not 8 <= args.size <= 1024:
        raise UsageError(f"--size must be between 8 and 1024 pixels, got {args.size}")
    model, model_desc = load_model(args.model)
    cfg = run_config(args, model, lpips=not args.no_lpips)
    note(cfg.method_line())
    note(f"sampler: {cfg.sampler.describe()} ({sampler_source(args, model)})")
    outdir = Path(args.outdir)
    check_outdir(outdir)
    paths = {"original": outdir / "original.png", "grid": outdir / "demo_grid.png",
             "csv": outdir / "metrics.csv", "summary": outdir / "summary.json"}
    task_grids = {t: outdir / f"{t}_grid.png" for t in tasks}
    check_outputs(list(paths.values()) + list(task_grids.values()), args.overwrite)
    image, source = sample_image(args.size, args.image)
    mm = size_multiple(model)
    h, w = image.shape[:2]
    write_image(paths["original"], image, overwrite=args.overwrite)

    notes: set[str] = set()
    rows, cells, labels, failures = [], [], [], []
    for task in progress(tasks, desc="demo", unit="task", quiet=args.quiet):
        spec = TaskSpec(name=task, params=dict(DEMO_PARAMS.get(task, {})), mask="box",
                        seed=args.seed)
        task_cfg = cfg
        if task == "denoising":
            task_cfg = dataclasses.replace(cfg, sampler=cfg.sampler.replace(
                sigma_y=DEMO_DENOISE_SIGMA, noise_aware=True))
        padded = padded_size(spec, h, w, mm)
        mask = resolve_mask(spec, h, w, padded, "the sample") if task == "inpainting" else None
        job = engine.Job(0, task, source, (h, w), padded, spec, original=image,
                         x_pad=pad_like_image(image, padded).astype(np.float32), mask=mask)
        op = make_operator(spec, padded, mask)
        (out,) = engine.run_group(model, op, [job], task_cfg, notes)
        rows.append(out.row)
        if out.error:
            failures.append(f"{task}: {out.error}")
            note(f"solver failed on {task}: {out.error}")
            continue
        c, lab = engine.grid_cells(out, title=task)
        write_uint8(task_grids[task], make_grid(c, lab), overwrite=args.overwrite)
        cells += c
        labels += lab
        r = out.row
        say(f"{task:18s} PSNR {fmt_metric(r['psnr']):>6s} dB (A+y {fmt_metric(r['psnr_apy'])})"
            f"  SSIM {fmt_metric(r['ssim'], 3)}  {r['iterations']} iters  {r['nfe']} NFE  "
            f"{'converged' if r['converged'] else 'not converged'}  {r['seconds']:.1f} s",
            args.quiet)
    if cells:
        write_uint8(paths["grid"], make_grid(cells, labels, ncols=4), overwrite=args.overwrite)
    write_csv(paths["csv"], rows, engine.COLUMNS, args.overwrite)
    total = time.time() - started
    summary = {
        "command": "demo", "argv": getattr(args, "argv", sys.argv), "image": source,
        "size": args.size,
        "tasks": tasks, "task_params": {t: DEMO_PARAMS.get(t, {}) for t in tasks},
        "denoising": {"sigma_y": DEMO_DENOISE_SIGMA, "noise_aware": True},
        "sampler": cfg.describe(), "seed": args.seed, "model": model_desc,
        "model_info": model_info(model), "versions": versions(), "failed": failures,
        "seconds_total": total, "notes": sorted(notes),
    }
    write_json(paths["summary"], summary, args.overwrite)
    for msg in sorted(notes) if not args.quiet else ():
        note(f"note: {msg}")
    say(f"demo: {len(rows) - len(failures)}/{len(tasks)} task(s) in {total:.0f} s -> "
        f"{paths['grid']}", args.quiet)
    return EXIT_FAILURE if failures else EXIT_OK
