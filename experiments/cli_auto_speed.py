"""``deqir restore`` with no method flag versus ``--method sequential``, side by side.

Runs the two commands on the same image (a centre crop of a test image written to a temporary
folder), each in a fresh process without the persistent compilation cache (so both compile),
and reports their wall-clock time, the method each ran and
the largest pixel difference between the two restored images. Writes ``<out>.md``.

    python experiments/cli_auto_speed.py --size 128
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import deqir_jax as dq

sys.path.insert(0, str(Path(__file__).parent))
from _report import header, machine, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="Kodak24/kodim05.png", help="path under ../shared/data/test")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "cli_auto_speed"))
    args = p.parse_args(argv)
    img = dq.io.read_image(ROOT.parent / "shared" / "data" / "test" / args.image)
    top, left = (img.shape[0] - args.size) // 2, (img.shape[1] - args.size) // 2
    crop = img[top:top + args.size, left:left + args.size]
    rows, restored = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "photo.png"
        dq.io.write_image(src, crop)
        for name, extra in (("no method flag", []), ("--method sequential",
                                                    ["--method", "sequential"])):
            out = Path(tmp) / name.replace(" ", "_").strip("-")
            cmd = ["deqir", "restore", str(src), "--task", "sr_bicubic", "--scale", "4",
                   "-o", str(out), "--no-lpips", "--no-compile-cache", *extra]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
            with open(out / "metrics.csv") as f:
                (row,) = list(csv.DictReader(f))
            restored[name] = np.asarray(Image.open(out / "photo_restored.png"), int)
            rows.append(dict(command=f"`deqir restore photo.png --task sr_bicubic --scale 4"
                             f"{' ' + ' '.join(extra) if extra else ''}`",
                             method=row["method"], iterations=row["iterations"],
                             nfe=row["nfe"], psnr=row["psnr"],
                             restore_seconds=f"{float(row['seconds']):.1f}",
                             process_seconds=f"{wall:.1f}"))
            print(rows[-1], flush=True)
    diff = int(np.abs(restored["no method flag"] - restored["--method sequential"]).max())
    lines = header("deqir restore: no method flag vs --method sequential", "cli_auto_speed.py", [
        f"image: {args.image} centre crop {args.size} px; each command in a fresh process "
        "with --no-compile-cache, so both compile (process_seconds includes start-up and "
        "compilation; restore_seconds is the restore call, compilation included)",
        f"largest difference between the two restored PNGs: {diff} (8-bit levels)",
        f"machine: {machine()}",
    ]) + table(rows)
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {Path(args.out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
