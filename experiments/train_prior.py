"""Train the default diffusion prior (or any ADM prior) on image folders; thin CLI.

Train (resumable; same options as ``deqir train``)::

    python experiments/train_prior.py --data /path/Urban100 /path/SunHays80 \
        --run-dir runs/prior --steps 3000 --export deqir_jax/assets/default_model

Measure the train-step time of candidate model sizes on this machine (used to pick the
default prior's size; see experiments/results/train_prior.md)::

    python experiments/train_prior.py --benchmark --data DIR [--crop 64 --batch 16]

Sanity-check a trained prior (unconditional DDIM samples; x0 prediction from noised test images)::

    python experiments/train_prior.py --sanity deqir_jax/assets/default_model \
        --images /path/Kodak24 --out-prefix experiments/results/train_prior

Plot the loss log of a run::

    python experiments/train_prior.py --plot RUN_DIR --out experiments/results/train_prior_loss.png
"""

from __future__ import annotations

import argparse
import sys
import time

CANDIDATES = {
    # name: ADM fields changed from deqir_jax.train.DEFAULT_PRIOR_CONFIG
    "c32-m1222-r1": dict(model_channels=32, num_head_channels=32, channel_mult=(1, 2, 2, 2),
                         num_res_blocks=1),
    "c32-m1222-r2": dict(model_channels=32, num_head_channels=32, channel_mult=(1, 2, 2, 2),
                         num_res_blocks=2),
    "c64-m1112-r1": dict(model_channels=64, num_head_channels=64, channel_mult=(1, 1, 1, 2),
                         num_res_blocks=1),
}


def benchmark(argv: list[str]) -> int:
    """Time a few train steps per candidate size; prints a markdown table."""
    import jax
    import numpy as np

    from deqir_jax import models as M
    from deqir_jax import train as dqt

    p = argparse.ArgumentParser(prog="train_prior.py --benchmark")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=4, help="timed steps per candidate")
    p.add_argument("--only", nargs="*", default=None, help="candidate names")
    args = p.parse_args(argv)
    data = dqt.ImageCrops(args.data, args.crop)
    print(f"| model | params | compile s | s/step (crop {args.crop}, batch {args.batch}) |")
    print("|---|---|---|---|")
    for name, fields in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        model = M.replace_fields(dqt.DEFAULT_PRIOR_CONFIG, image_size=args.crop,
                                 attention_resolutions=(args.crop // 8,), **fields)
        cfg = dqt.TrainConfig(data=tuple(args.data), run_dir="-", model=model,
                              crop_size=args.crop, batch_size=args.batch)
        state = dqt.init_state(cfg)
        step = dqt.make_train_step(cfg)
        t0 = time.perf_counter()
        state, m = step(state, data.batch(0, 0, args.batch))
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        times = []
        for s in range(1, args.steps + 1):
            x0 = data.batch(0, s, args.batch)
            t0 = time.perf_counter()
            state, m = step(state, x0)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
        print(f"| {name} | {M.count_params(model):,} | {compile_s:.1f} | "
              f"{np.median(times):.2f} (min {min(times):.2f}) |", flush=True)
    return 0


def plot(argv: list[str]) -> int:
    """Plot loss.csv of a run (raw per-interval mean and a moving average)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from deqir_jax.train import read_loss_log

    p = argparse.ArgumentParser(prog="train_prior.py --plot")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--window", type=int, default=20, help="moving-average window (rows)")
    p.add_argument("--mark", nargs="*", default=[], metavar="STEP:LABEL",
                   help="vertical lines on the step axis, e.g. '1650:resumed'")
    args = p.parse_args(argv)
    log = read_loss_log(args.run_dir)
    step, loss = log["step"], log["loss"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for a, x, label in ((ax[0], step, "step"), (ax[1], log["elapsed_s"] / 60, "minutes")):
        a.plot(x, loss, lw=0.6, alpha=0.4, label="loss (log interval mean)")
        if len(loss) >= args.window:
            k = np.ones(args.window) / args.window
            a.plot(x[args.window - 1:], np.convolve(loss, k, mode="valid"), lw=1.5,
                   label=f"moving average ({args.window})")
        a.set_xlabel(label)
        a.set_ylabel("DDPM loss (ε MSE)")
        a.set_yscale("log")
        a.grid(alpha=0.3)
    for mark in args.mark:
        at, _, label = mark.partition(":")
        ax[0].axvline(float(at), color="k", ls="--", lw=0.8, label=label or None)
    ax[0].legend()
    fig.suptitle("default prior training loss")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


def sanity(argv: list[str]) -> int:
    """DDIM samples and a denoising check of a model checkpoint; writes PNGs, prints PSNRs."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import deqir_jax as dq
    from deqir_jax import models as M
    from deqir_jax.io import list_images, read_image, save_grid
    from deqir_jax.schedules import alphas_cumprod, linear_betas

    p = argparse.ArgumentParser(prog="train_prior.py --sanity")
    p.add_argument("model", help="model checkpoint directory")
    p.add_argument("--images", nargs="+", required=True, help="clean test images/folders")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--crop", type=int, default=128, help="centre crop side for denoising")
    p.add_argument("--t", type=int, nargs="+", default=[50, 200, 500, 700, 900, 999])
    p.add_argument("--out-prefix", required=True)
    args = p.parse_args(argv)
    model = M.load(args.model)
    res = dq.restore(model, None, None, timesteps=25, method="sequential", sampler=dq.Sampler(),
                     image_shape=(64, 64, 3), batch=4, key=0)
    img = np.clip(np.asarray(res.image), -1, 1)
    print(f"samples: range [{float(res.image.min()):.2f}, {float(res.image.max()):.2f}], "
          f"per-image std {np.round(img.std(axis=(1, 2, 3)), 3).tolist()}")
    big = [np.kron(im, np.ones((3, 3, 1), im.dtype)) for im in img]  # 3x nearest for viewing
    save_grid(f"{args.out_prefix}_samples.png", big,
              [f"DDIM-25 sample {i} (64 px, shown 3x)" for i in range(4)], ncols=4,
              overwrite=True)

    c = args.crop
    clean = []
    for path in list_images(args.images)[: args.num_images]:
        x = read_image(path)
        h, w = x.shape[:2]
        clean.append(x[(h - c) // 2:(h - c) // 2 + c, (w - c) // 2:(w - c) // 2 + c])
    x0 = jnp.asarray(np.stack(clean))
    abar = alphas_cumprod(linear_betas())
    eps_fn = jax.jit(model.eps)

    def psnr(a, b):  # images in [-1, 1]: peak-to-peak range 2
        mse = np.mean((np.clip(np.asarray(a), -1, 1) - np.asarray(b)) ** 2, axis=(1, 2, 3))
        return 10 * np.log10(4.0 / mse)

    # Reference at large t: the best per-pixel linear estimate from the crops' own mean and
    # variance, x̂0 = μ + k (x_t/√ā − μ) with k = ā v/(ā v + 1 − ā) (a Wiener filter that
    # knows the test statistics; any useful prior must beat it where the noise dominates).
    mu, var = float(x0.mean()), float(x0.var())
    print("| t | noise σ (x0 units) | PSNR noisy | PSNR predicted x0 | gain dB | PSNR Wiener |")
    print("|---|---|---|---|---|---|")
    cells, labels = [], []
    for t in args.t:
        a = float(abar[t])
        eps = jax.random.normal(jax.random.key(t), x0.shape, jnp.float32)
        xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
        pred = eps_fn(model.params, xt, jnp.full((x0.shape[0],), t))
        x0_hat = (xt - np.sqrt(1 - a) * pred) / np.sqrt(a)
        noisy = xt / np.sqrt(a)  # x0 + σ ε with σ = sqrt((1 - ā) / ā)
        k = a * var / (a * var + 1 - a)
        pn, pd = psnr(noisy, x0), psnr(x0_hat, x0)
        pw = psnr(mu + k * (noisy - mu), x0)
        print(f"| {t} | {np.sqrt((1 - a) / a):.3f} | {pn.mean():.2f} | {pd.mean():.2f} | "
              f"{(pd - pn).mean():+.2f} | {pw.mean():.2f} |")
        cells += [np.asarray(x0[0]), np.clip(np.asarray(noisy[0]), -1, 1),
                  np.clip(np.asarray(x0_hat[0]), -1, 1)]
        labels += ["clean", f"noisy t={t} {pn[0]:.1f} dB", f"pred x0 {pd[0]:.1f} dB"]
    save_grid(f"{args.out_prefix}_denoise.png", cells, labels, ncols=3, overwrite=True)
    print(f"wrote {args.out_prefix}_samples.png, {args.out_prefix}_denoise.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--benchmark":
        return benchmark(argv[1:])
    if argv and argv[0] == "--sanity":
        return sanity(argv[1:])
    if argv and argv[0] == "--plot":
        return plot(argv[1:])
    from deqir_jax.train import main as train_main

    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
