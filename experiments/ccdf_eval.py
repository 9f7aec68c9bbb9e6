"""CCDF starts against the plain sampler and A⁺y on every image of a test set.

For each task, every image of ``--set`` (centre crops of ``--size`` px) is restored by
``dq.restore`` at its defaults (T = 25, etw = nw = 0, one shared noise, one sample, method
auto) and with ``ccdf=K`` for each ``--ccdf`` K (the last K of the 25 steps from A⁺y diffused
to that time). Reports per task and setting the mean and worst-image PSNR, SSIM and LPIPS and
the number of images on which the restoration beats A⁺y (PSNR higher, LPIPS lower). Writes
``<out>.md`` and ``<out>.csv`` (one row per image, task and setting).

    python experiments/ccdf_eval.py --set Kodak24 --size 128 --ccdf 15 10 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import deqir_jax as dq

sys.path.insert(0, str(Path(__file__).parent))
from _report import header, machine, table, write_csv  # noqa: E402
from restoration_table import TASKS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def crops(folder: Path, size: int):
    files = dq.io.list_images([folder])
    out = []
    for f in files:
        img = dq.io.read_image(f)
        top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        out.append(img[top:top + size, left:left + size])
    return np.stack(out), [f.name for f in files]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "test"))
    p.add_argument("--set", default="Kodak24")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--timesteps", type=int, default=25)
    p.add_argument("--ccdf", type=int, nargs="*", default=[15, 10, 5])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", nargs="+", default=None, metavar="NAME")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "ccdf_eval"))
    args = p.parse_args(argv)
    folder = Path(args.data) / args.set
    if not folder.is_dir():
        sys.exit(f"no test set at {folder} (see ../shared/data/README)")
    gt_all, names = crops(folder, args.size)
    model = dq.models.default()
    lp = dq.metrics.load_lpips_params("alex")
    tasks = {k: v for k, v in TASKS.items() if args.tasks is None or k in args.tasks}
    settings = [("A+y", None), ("plain", None)] + [(f"ccdf={k}", k) for k in args.ccdf]
    rows = []
    started = time.time()
    bar = tqdm(total=len(tasks) * len(names), desc="ccdf_eval")
    for label, (task, kw) in tasks.items():
        op = dq.operators.get(task, image_shape=gt_all.shape[1:], **kw)
        for start in range(0, len(names), args.batch):
            gt = jnp.asarray(gt_all[start:start + args.batch])
            y = op.A(gt)
            for setting, k in settings:
                if setting == "A+y":
                    img = op.A_pinv(y)
                else:
                    img = dq.restore(model, y, op, args.timesteps, key=args.seed + start,
                                     ccdf=k).image
                img = jnp.clip(img, -1, 1)
                psnr = np.asarray(dq.metrics.psnr(img, gt))
                ssim = np.asarray(dq.metrics.ssim(img, gt))
                lpips = np.asarray(dq.metrics.lpips_apply(lp, img, gt, "alex"))
                for i in range(len(gt)):
                    rows.append(dict(task=label, setting=setting, image=names[start + i],
                                     psnr=float(psnr[i]), ssim=float(ssim[i]),
                                     lpips=float(lpips[i])))
            bar.update(len(gt))
    bar.close()
    summary = []
    for label in tasks:
        ref = {r["image"]: r for r in rows if r["task"] == label and r["setting"] == "A+y"}
        for setting, _ in settings:
            sel = [r for r in rows if r["task"] == label and r["setting"] == setting]
            ps = np.array([r["psnr"] for r in sel])
            ls = np.array([r["lpips"] for r in sel])
            wins_p = sum(r["psnr"] > ref[r["image"]]["psnr"] for r in sel)
            wins_l = sum(r["lpips"] < ref[r["image"]]["lpips"] for r in sel)
            summary.append(dict(
                task=label, setting=setting, psnr=f"{ps.mean():.2f}",
                psnr_worst=f"{ps.min():.2f} ({sel[int(ps.argmin())]['image']})",
                ssim=f"{np.mean([r['ssim'] for r in sel]):.3f}", lpips=f"{ls.mean():.3f}",
                lpips_worst=f"{ls.max():.3f} ({sel[int(ls.argmax())]['image']})",
                beats_apy_psnr="–" if setting == "A+y" else f"{wins_p}/{len(sel)}",
                beats_apy_lpips="–" if setting == "A+y" else f"{wins_l}/{len(sel)}"))
    lines = header(f"CCDF starts on {args.set}", "ccdf_eval.py", [
        f"images: every image of {args.set}, centre {args.size}-px crops ({len(names)})",
        f"model: embedded default prior; dq.restore defaults: T = {args.timesteps}, etw = nw = "
        "0, one shared noise, one sample, method auto (sequential on this CPU); key = seed + "
        f"index of the batch's first image (seed {args.seed}, batches of {args.batch})",
        "ccdf=K: the last K of the T steps, from A⁺y diffused to that time (dq.restore(ccdf=K))",
        "beats_apy_*: images on which the restoration's PSNR is higher / LPIPS lower than A⁺y's",
        f"machine: {machine()}; {time.time() - started:.0f} s in all",
    ]) + table(summary) + [""]
    Path(args.out + ".md").write_text("\n".join(lines))
    write_csv(args.out + ".csv", rows)
    print("\n".join(lines))


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", False)
    main()
