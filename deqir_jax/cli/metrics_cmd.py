"""``deqir metrics RESTORED_DIR GT_DIR``: per-image and mean PSNR / SSIM / LPIPS of two folders."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from ..io import list_images
from ..metrics import metrics_dirs, summarize
from .common import EXIT_OK, UsageError, check_outputs, fmt_metric, note, say, write_csv

RESTORED_SUFFIX = "_restored"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("restored_dir", metavar="RESTORED_DIR", help="folder of restored images")
    p.add_argument("gt_dir", metavar="GT_DIR", help="folder of ground-truth images (paired by "
                   "file name without extension)")
    p.add_argument("--crop", type=int, default=0, metavar="N", help="border pixels removed "
                   "before PSNR/SSIM (default: 0)")
    p.add_argument("--y-channel", action="store_true", help="PSNR/SSIM on BT.601 luma")
    p.add_argument("--lpips-net", choices=("alex", "vgg", "none"), default="alex",
                   help="LPIPS trunk, or none to skip LPIPS (default: alex)")
    p.add_argument("--suffix", help="strip this suffix from restored names before pairing "
                   f"(default: '{RESTORED_SUFFIX}' when RESTORED_DIR holds *{RESTORED_SUFFIX}.* "
                   "files, as written by deqir restore; '' to disable)")
    p.add_argument("--partial", action="store_true", help="allow ground-truth images without "
                   "a restored image")
    p.add_argument("--csv", metavar="PATH", help="write the table (plus a 'mean' row) here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    p.add_argument("-q", "--quiet", action="store_true", help="only the mean line")


def run(args) -> int:
    rdir, gdir = Path(args.restored_dir), Path(args.gt_dir)
    for d, what in ((rdir, "RESTORED_DIR"), (gdir, "GT_DIR")):
        if not d.is_dir():
            raise UsageError(f"{what} '{d}' is not a folder")
    if args.crop < 0:
        raise UsageError(f"--crop must be >= 0, got {args.crop}")
    csv_path = Path(args.csv) if args.csv else None
    if csv_path is not None:
        check_outputs([csv_path], args.overwrite)
    try:
        restored = list_images(rdir)
    except ValueError as err:
        raise UsageError(str(err)) from None
    suffix = args.suffix
    if suffix is None:
        suffix = RESTORED_SUFFIX if any(p.stem.endswith(RESTORED_SUFFIX) for p in restored) \
            else ""
    lpips_net = None if args.lpips_net == "none" else args.lpips_net
    with tempfile.TemporaryDirectory(prefix="deqir_metrics_") as tmp:
        folder, origin = rdir, {}
        if suffix:
            folder = Path(tmp)
            for p in restored:
                if p.stem.endswith(suffix) and len(p.stem) > len(suffix):
                    link = folder / (p.stem[: -len(suffix)] + p.suffix)
                    if link.exists():
                        raise UsageError(f"'{rdir}' holds two restored images for "
                                         f"'{link.stem}'")
                    _link(p, link)
                    origin[str(link)] = str(p)
            if not origin:
                raise UsageError(f"no image in '{rdir}' ends with '{suffix}'")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                rows = metrics_dirs(folder, gdir, crop=args.crop, y_channel=args.y_channel,
                                    lpips_net=lpips_net, strict=not args.partial)
            except ValueError as err:
                msg = str(err).replace(str(folder), str(rdir)) if suffix else str(err)
                raise UsageError(msg) from None
    for w in {str(w.message) for w in caught}:
        note(f"note: {w}")
    for r in rows:
        r["restored"] = origin.get(r["restored"], r["restored"])
    has_lpips = any("lpips" in r for r in rows)
    for r in rows:
        say(_line(r["name"], r, has_lpips), args.quiet)
    mean = summarize(rows)
    say(_line(f"mean of {len(rows)}", mean, has_lpips))
    if csv_path is not None:
        cols = ["name", "psnr", "ssim"] + (["lpips"] if has_lpips else []) + ["restored",
                                                                              "reference"]
        write_csv(csv_path, rows + [{"name": "mean", **{k: mean.get(k) for k in cols[1:4]
                                                         if k in mean}}], cols, args.overwrite)
        say(f"wrote {csv_path}", args.quiet)
    return EXIT_OK


def _link(src: Path, dst: Path) -> None:
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # no symlinks (e.g. Windows without privileges): copy
        shutil.copyfile(src, dst)


def _line(name: str, r: dict, has_lpips: bool) -> str:
    text = f"{name}: PSNR {fmt_metric(r.get('psnr'))} dB, SSIM {fmt_metric(r.get('ssim'), 4)}"
    if has_lpips:
        text += f", LPIPS {fmt_metric(r.get('lpips'), 4)}"
    return text
