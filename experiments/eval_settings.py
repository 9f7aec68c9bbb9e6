"""Sampler settings against A⁺y on every image of a test set (PSNR, SSIM, LPIPS).

For each task, every image of ``--set`` (centre crops of ``--size`` px) is restored by
``dq.restore`` with the model's recommended sampler settings (``recommended``) and with each
other ``--settings`` entry: a comma-separated list of sampler settings on top of the library
defaults ``dq.Sampler()`` (``ccdf=10``, ``etw=0.1,nw=0``, ``samples=8``; ``default`` for
``dq.Sampler()`` itself), or ``official`` for the official example's settings. Image i draws
from ``fold_in(key(seed), i)``, as ``deqir restore --seed`` does.
With ``samples=K`` the restored image is the posterior mean of K samples, and the first sample
is reported too (``… [1 sample]``). Reports per task and setting the mean and worst-image
PSNR, SSIM and LPIPS and the number of images on which the restoration beats A⁺y (PSNR
higher, LPIPS lower). Writes ``<out>.md`` and ``<out>.csv`` (one row per image, task and
setting). ``--reuse CSV`` takes the rows of every task that CSV holds in full (A⁺y and all
labels, every image) instead of recomputing them: for a CSV that an earlier run of this
script wrote with the same model parameters, seed, size and settings.

    python experiments/eval_settings.py --set Kodak24 --size 128 \\
        --settings recommended ccdf=15 ccdf=10 ccdf=5 --out experiments/results/ccdf_eval
"""

from __future__ import annotations

import argparse
import csv
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


def parse_setting(text: str, model) -> dq.Sampler:
    """``recommended``, ``official``, ``default`` or ``k=v,k=v`` on top of ``dq.Sampler()``."""
    if text == "recommended":
        return dq.diffusion.sampler_for(model)
    if text == "official":
        return dq.Sampler.official()
    if text == "default":
        return dq.Sampler()
    changes = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        field = {f.name: f for f in dq.Sampler.__dataclass_fields__.values()}.get(k)
        if field is None:
            sys.exit(f"unknown sampler setting {k!r} in {text!r}")
        default = getattr(dq.Sampler(), k)
        changes[k] = (v.lower() in ("1", "true", "yes")) if isinstance(default, bool) else (
            float(v) if isinstance(default, float) else int(v))
    return dq.Sampler().replace(**changes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "test"))
    p.add_argument("--set", default="Kodak24")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="a saved model checkpoint (default: the embedded default prior)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--settings", nargs="+", default=["recommended"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", nargs="+", default=None, metavar="NAME")
    p.add_argument("--reuse", nargs="+", default=[], metavar="CSV",
                   help="per-image CSVs of earlier runs (same model, seed, size, settings) whose "
                        "complete tasks are read instead of recomputed")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "eval_settings"))
    args = p.parse_args(argv)
    folder = Path(args.data) / args.set
    if not folder.is_dir():
        sys.exit(f"no test set at {folder} (see ../shared/data/README)")
    gt_all, names = crops(folder, args.size)
    model = dq.models.default() if args.model is None else dq.models.load(args.model)
    model_name = "embedded default prior" if args.model is None else f"`{args.model}`"
    lp = dq.metrics.load_lpips_params("alex")
    tasks = {k: v for k, v in TASKS.items() if args.tasks is None or k in args.tasks}
    samplers = {s: parse_setting(s, model) for s in args.settings}
    labels = ["A+y"]
    for s, smp in samplers.items():
        labels += [s] + ([f"{s} [1 sample]"] if smp.samples > 1 else [])
    rows, reused = [], {}
    for path in args.reuse:
        with open(path, newline="") as f:
            old = {(r["task"], r["setting"], r["image"]): r for r in csv.DictReader(f)}
        for task in tasks:
            keys = [(task, label, n) for label in labels for n in names]
            if task not in reused and all(k in old for k in keys):
                reused[task] = path
                rows += [dict(task=t, setting=s, image=n, **{m: float(old[t, s, n][m])
                              for m in ("psnr", "ssim", "lpips")}) for t, s, n in keys]
    started = time.time()
    bar = tqdm(total=(len(tasks) - len(reused)) * len(names), desc="eval_settings")

    def score(label, task, img, gt, start):
        img = jnp.clip(img, -1, 1)
        psnr = np.asarray(dq.metrics.psnr(img, gt))
        ssim = np.asarray(dq.metrics.ssim(img, gt))
        lpips = np.asarray(dq.metrics.lpips_apply(lp, img, gt, "alex"))
        for i in range(len(gt)):
            rows.append(dict(task=task, setting=label, image=names[start + i],
                             psnr=float(psnr[i]), ssim=float(ssim[i]), lpips=float(lpips[i])))

    for task, (name, kw) in tasks.items():
        if task in reused:
            continue
        op = dq.operators.get(name, image_shape=gt_all.shape[1:], **kw)
        for start in range(0, len(names), args.batch):
            gt = jnp.asarray(gt_all[start:start + args.batch])
            y = op.A(gt)
            keys = jnp.stack([jax.random.fold_in(jax.random.key(args.seed), start + i)
                              for i in range(len(gt))])
            score("A+y", task, op.A_pinv(y), gt, start)
            for s, smp in samplers.items():
                res = dq.restore(model, y, op, sampler=smp, key=keys)
                score(s, task, res.image, gt, start)
                if smp.samples > 1:
                    score(f"{s} [1 sample]", task, res.samples[:, 0], gt, start)
            bar.update(len(gt))
    bar.close()
    summary = []
    for task in tasks:  # summary in task order, whether computed or reused
        ref = {r["image"]: r for r in rows if r["task"] == task and r["setting"] == "A+y"}
        for label in labels:
            sel = [r for r in rows if r["task"] == task and r["setting"] == label]
            ps = np.array([r["psnr"] for r in sel])
            ls = np.array([r["lpips"] for r in sel])
            wins_p = sum(r["psnr"] > ref[r["image"]]["psnr"] for r in sel)
            wins_l = sum(r["lpips"] < ref[r["image"]]["lpips"] for r in sel)
            summary.append(dict(
                task=task, setting=label, psnr=f"{ps.mean():.2f}",
                psnr_worst=f"{ps.min():.2f} ({sel[int(ps.argmin())]['image']})",
                ssim=f"{np.mean([r['ssim'] for r in sel]):.3f}", lpips=f"{ls.mean():.3f}",
                lpips_worst=f"{ls.max():.3f} ({sel[int(ls.argmax())]['image']})",
                beats_apy_psnr="–" if label == "A+y" else f"{wins_p}/{len(sel)}",
                beats_apy_lpips="–" if label == "A+y" else f"{wins_l}/{len(sel)}"))
    lines = header(f"Sampler settings on {args.set}", "eval_settings.py", [
        f"images: every image of {args.set}, centre {args.size}-px crops ({len(names)})",
        f"model: {model_name}; method auto (sequential on this CPU); image i draws "
        f"from fold_in(key(seed), i) (seed {args.seed}; as `deqir restore --seed`)",
        *[f"`{s}`: {smp.describe()}" for s, smp in samplers.items()],
        "`[1 sample]`: the first of the K samples whose mean is the row above",
        "ccdf=K: the last K of the T steps, from A⁺y diffused to that time (dq.restore(ccdf=K))",
        "beats_apy_*: images on which the restoration's PSNR is higher / LPIPS lower than A⁺y's",
        *[f"{task}: rows read from `{path}` "
          "(--reuse; computed by that file's own command with the same model parameters, "
          "seed, size and settings), not recomputed" for task, path in reused.items()],
        f"machine: {machine()}; {time.time() - started:.0f} s in all"
        + (" (the tasks not reused)" if reused else ""),
    ]) + table(summary) + [""]
    Path(args.out + ".md").write_text("\n".join(lines))
    order = list(tasks)
    write_csv(args.out + ".csv", sorted(rows, key=lambda r: order.index(r["task"])))
    print("\n".join(lines))


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", False)
    main()
