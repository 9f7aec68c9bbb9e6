"""Choose the default model's recommended sampler settings from a validation set.

Reads the per-image CSVs of ``eval_settings.py`` runs (one validation set; here Set14) and, per
candidate setting and task, the mean PSNR and LPIPS difference to A⁺y over the images where
A⁺y is not already exact (Set14's grayscale images are recovered exactly by A⁺y under
colorization). A task is won when the mean LPIPS is lower than A⁺y's and the mean PSNR is
higher (box inpainting: LPIPS only, a large hole has no PSNR-optimal fill). The rule: the
candidate that wins the most tasks, ties broken by the lower mean LPIPS difference. Writes
``<out>.md``.

    python experiments/choose_settings.py experiments/results/eval_settings_set14.csv \\
        experiments/results/eval_settings_set14_eta.csv --out experiments/results/choose_settings
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import header, table  # noqa: E402

LPIPS_ONLY = ("inpainting box",)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csvs", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows = [r for f in args.csvs for r in csv.DictReader(open(f))]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    candidates = [s for s in dict.fromkeys(r["setting"] for r in rows)
                  if s != "A+y" and "[1 sample]" not in s]
    summary, score = [], {}
    for s in candidates:
        row, wins, dls = {"setting": s}, 0, []
        for t in tasks:
            ref = {r["image"]: r for r in rows if r["task"] == t and r["setting"] == "A+y"}
            sel = [r for r in rows if r["task"] == t and r["setting"] == s
                   and np.isfinite(float(ref[r["image"]]["psnr"]))]
            dp = np.mean([float(r["psnr"]) - float(ref[r["image"]]["psnr"]) for r in sel])
            dl = np.mean([float(r["lpips"]) - float(ref[r["image"]]["lpips"]) for r in sel])
            won = dl < 0 and (dp > 0 or t in LPIPS_ONLY)
            wins += won
            dls.append(dl)
            row[t] = f"{dp:+.2f} / {dl:+.3f}" + ("" if won else " ✗")
        row["tasks won"] = f"{wins}/{len(tasks)}"
        row["mean ΔLPIPS"] = f"{np.mean(dls):+.4f}"
        score[s] = (wins, -np.mean(dls))
        summary.append(row)
    best = max(candidates, key=lambda s: score[s])
    lines = header("Choosing the default model's sampler settings", "choose_settings.py", [
        f"inputs: {', '.join(args.csvs)}",
        "cells: mean ΔPSNR (dB) / mean ΔLPIPS against A⁺y over the images where A⁺y is not "
        "exact; ✗: task not won (LPIPS lower and PSNR higher; box inpainting: LPIPS only)",
        "rule: most tasks won, ties by the lower mean ΔLPIPS",
    ]) + table(summary) + ["", f"Best by the rule: `{best}`.", ""]
    Path(args.out + ".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
