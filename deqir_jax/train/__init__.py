"""Train a diffusion prior (an ADM UNet predicting v, as the shipped prior, or ε) on images.

Public API::

    from deqir_jax import train as dqt
    cfg = dqt.TrainConfig(data=("photos/",), run_dir="runs/prior", steps=5000,
                          export="my_prior")                 # model=dqt.DEFAULT_PRIOR_CONFIG
    result = dqt.train(cfg)                                  # checkpoints + loss.csv in run_dir
    result = dqt.train(cfg.replace(resume=True))             # continue after an interruption
    model = dq.models.load("my_prior")                       # the exported EMA params
    dqt.main(["--data", "photos/", "--run-dir", "runs/prior", ...])   # the command line

The loss is DDPM's ``L_simple`` on the linear schedule (see :mod:`.step`); data are random
crops with horizontal flips from images held in RAM (:class:`ImageCrops`).
"""

from .checkpoints import RunDir, read_loss_log
from .cli import build_parser, config_from_args, main
from .config import DEFAULT_PRIOR_CONFIG, LR_SCHEDULES, TrainConfig
from .data import ImageCrops, find_images
from .loop import TrainResult, export_checkpoint, export_ema, train
from .step import ddpm_loss, init_state, lr_schedule, make_train_step, optimizer

__all__ = [
    "DEFAULT_PRIOR_CONFIG",
    "ImageCrops",
    "LR_SCHEDULES",
    "RunDir",
    "TrainConfig",
    "TrainResult",
    "build_parser",
    "config_from_args",
    "ddpm_loss",
    "export_checkpoint",
    "export_ema",
    "find_images",
    "init_state",
    "lr_schedule",
    "main",
    "make_train_step",
    "optimizer",
    "read_loss_log",
    "train",
]
