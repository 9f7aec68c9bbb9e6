"""Command line of the trainer: ``deqir train ...`` / ``experiments/train_prior.py``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from ..models import ADMConfig, count_params, read_config, replace_fields
from ..models.configs import PREDICTIONS
from .config import DEFAULT_PRIOR_CONFIG, LOSS_WEIGHTS, LR_SCHEDULES, TrainConfig


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace(",", " ").split())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.replace(",", " ").split())


def _given(value, default):
    return default if value is None else value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the training options to ``parser`` (a new one by default) and return it."""
    p = parser or argparse.ArgumentParser(
        prog="deqir train",
        description="Train an ADM diffusion prior (v- or ε-prediction) on folders of images "
                    "(resumable; exports the EMA params as a dq.models checkpoint).")
    d, m = TrainConfig.__dataclass_fields__, DEFAULT_PRIOR_CONFIG
    g = p.add_argument_group("data and run")
    g.add_argument("--data", nargs="+", required=True, metavar="DIR",
                   help="image folders (not recursive) and/or image files")
    g.add_argument("--run-dir", required=True, help="checkpoints, loss.csv, train_config.json")
    g.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --run-dir")
    g.add_argument("--extend", action="store_true",
                   help="with --resume: accept a new --steps for a cosine run (warm restart)")
    g.add_argument("--export", default=None, metavar="DIR",
                   help="write the EMA model here at the end (dq.models.load-able)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing --export and restart a --run-dir with checkpoints")
    g.add_argument("--seed", type=int, default=d["seed"].default)
    g.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                   help="stop (with a checkpoint) after this many minutes of this session")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("optimisation")
    g.add_argument("--crop", type=int, default=d["crop_size"].default, help="crop side (px)")
    g.add_argument("--scales", type=_floats, default=d["scales"].default,
                   help="image downscale factors, e.g. '1,0.5,0.25'")
    g.add_argument("--batch", type=int, default=d["batch_size"].default)
    g.add_argument("--steps", type=int, default=d["steps"].default)
    g.add_argument("--lr", type=float, default=d["lr"].default)
    g.add_argument("--warmup", type=int, default=d["warmup_steps"].default)
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d["lr_schedule"].default)
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"].default)
    g.add_argument("--grad-clip", type=float, default=d["grad_clip"].default)
    g.add_argument("--ema-decay", type=float, default=d["ema_decay"].default)
    g.add_argument("--loss-weight", choices=LOSS_WEIGHTS, default=None,
                   help="'eps': plain ε-MSE (L_simple); 'v': ε-MSE/ā_t (the v-MSE, trains "
                        "large t on their x0 error); default: 'v' for a v-network, else 'eps'")
    g.add_argument("--init-from", default=None, metavar="MODEL_DIR",
                   help="start from this model checkpoint's params (fine-tuning; its "
                        "architecture is used, so the model options below are refused)")
    g.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"].default)
    g.add_argument("--log-every", type=int, default=d["log_every"].default)
    g = p.add_argument_group("model (ADM UNet; defaults: the shipped default prior)")
    # (defaults None: filled in from DEFAULT_PRIOR_CONFIG, and refused with --init-from)
    g.add_argument("--model-channels", type=int, default=None,
                   help=f"base width (default {m.model_channels})")
    g.add_argument("--channel-mult", type=_floats, default=None,
                   help=f"e.g. '1,2,2,2' (default {','.join(map(str, m.channel_mult))})")
    g.add_argument("--num-res-blocks", type=int, default=None,
                   help=f"(default {m.num_res_blocks})")
    g.add_argument("--attention-ds", type=_ints, default=None,
                   help="downsample factors with attention (default: the lowest resolution)")
    g.add_argument("--num-head-channels", type=int, default=None,
                   help=f"(default {m.num_head_channels})")
    g.add_argument("--prediction", choices=PREDICTIONS, default=None,
                   help="network output: 'eps' or 'v' (default: 'v' like the shipped prior; "
                        "with --init-from: the checkpoint's)")
    g.add_argument("--learn-sigma", action="store_true",
                   help="6 output channels like released ADM models (only ε is trained)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments (ValueError for invalid combinations)."""
    arch = {f"--{k.replace('_', '-')}": v for k, v in (
        ("model_channels", args.model_channels), ("channel_mult", args.channel_mult),
        ("num_res_blocks", args.num_res_blocks), ("attention_ds", args.attention_ds),
        ("num_head_channels", args.num_head_channels),
        ("learn_sigma", args.learn_sigma or None)) if v is not None}
    if args.init_from is not None:
        if arch:
            raise ValueError(f"--init-from takes the architecture from {args.init_from}; "
                             f"drop {', '.join(arch)}")
        model = read_config(args.init_from)[0]
        if not isinstance(model, ADMConfig):
            raise ValueError(f"--init-from {args.init_from}: training supports ADM models, "
                             f"got {type(model).__name__}")
        if args.prediction is not None:
            model = replace_fields(model, prediction=args.prediction)
        return _train_config(args, model)
    m = DEFAULT_PRIOR_CONFIG
    mult = _given(args.channel_mult, m.channel_mult)
    levels = len(mult)
    ds = args.attention_ds or (2 ** (levels - 1),)
    size = args.crop
    if any(d <= 0 or size % d for d in ds):
        raise ValueError(f"--attention-ds {ds} must divide the crop size {args.crop}")
    model = replace_fields(
        m, image_size=size, model_channels=_given(args.model_channels, m.model_channels),
        channel_mult=mult, num_res_blocks=_given(args.num_res_blocks, m.num_res_blocks),
        attention_resolutions=tuple(size // d for d in ds),
        num_head_channels=_given(args.num_head_channels, m.num_head_channels),
        out_channels=6 if args.learn_sigma else 3,
        prediction=args.prediction or DEFAULT_PRIOR_CONFIG.prediction)
    return _train_config(args, model)


def _train_config(args: argparse.Namespace, model: ADMConfig) -> TrainConfig:
    return TrainConfig(
        data=tuple(args.data), run_dir=args.run_dir, model=model, crop_size=args.crop,
        batch_size=args.batch, steps=args.steps, lr=args.lr, warmup_steps=args.warmup,
        lr_schedule=args.lr_schedule, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        ema_decay=args.ema_decay, scales=args.scales, seed=args.seed,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, resume=args.resume,
        export=args.export, overwrite=args.overwrite, loss_weight=args.loss_weight,
        init_from=args.init_from)


def run_args(args: argparse.Namespace) -> int:
    """Run training for parsed ``args``; returns the exit code (0 done, 1 error, 130 stopped)."""
    from .loop import train

    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model: {count_params(config.model):,} params, config {config.model}")

    def on_term(signum, frame):  # `kill PID` checkpoints like Ctrl-C
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    try:
        limit = None if args.time_limit is None else 60.0 * args.time_limit
        result = train(config, time_limit=limit, progress=not args.no_progress,
                       extend=args.extend)
    except KeyboardInterrupt as e:
        print(f"stopped: {e or 'interrupted'}; rerun with --resume to continue", file=sys.stderr)
        return 130
    except (ValueError, FileExistsError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    status = "done" if result.completed else "stopped early (rerun with --resume)"
    print(f"{status}: step {result.step}/{config.steps}, "
          f"{result.elapsed_s / 60:.1f} min, last loss "
          f"{result.losses[-1] if result.losses else float('nan'):.4f}")
    if result.export:
        print(f"exported EMA model to {result.export}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``deqir train`` entry point: parse ``argv`` and train; returns the exit code."""
    return run_args(build_parser().parse_args(argv))
