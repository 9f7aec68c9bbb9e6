"""Training hyperparameters (:class:`TrainConfig`) and the default prior's architecture."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..models import ADMConfig, config_from_dict, config_to_dict

#: Architecture of the shipped default prior (``dq.models.default()``): the ADM UNet of
#: guided-diffusion at a size that trains on a CPU and ships as a small checkpoint. No
#: learned variance (``learn_sigma`` off), attention at the lowest resolution (1/8) only,
#: BigGAN up/down blocks and scale-shift norm like ADM-256. Runs on any H, W that are
#: multiples of 8 (``image_size`` only records the training crop: attention sits at
#: downsample factor 48 / 6 = 8). Outputs v (``eps_fn`` converts it to ε): a small
#: ε-network trained briefly is poor at large t.
DEFAULT_PRIOR_CONFIG = ADMConfig(
    image_size=48,
    in_channels=3,
    model_channels=32,
    out_channels=3,
    num_res_blocks=1,
    attention_resolutions=(6,),
    channel_mult=(1, 2, 2, 2),
    num_heads=1,
    num_head_channels=32,
    use_scale_shift_norm=True,
    resblock_updown=True,
    dropout=0.0,
    prediction="v",
)

LR_SCHEDULES = ("cosine", "constant")
#: Per-timestep weights of the ε-MSE (see ``step.py``): ``"eps"`` Ho et al.'s L_simple;
#: ``"v"`` weight 1/ā_t, i.e. the v-prediction loss of an ε-network.
LOSS_WEIGHTS = ("eps", "v")

# Fields that decide the training trajectory: a resumed run must agree with the checkpoint on
# them, so that resuming reproduces the uninterrupted run. (``steps`` also decides the cosine
# schedule; it may only change with the constant schedule.)
TRAJECTORY_FIELDS = (
    "model", "crop_size", "batch_size", "lr", "warmup_steps", "lr_schedule", "min_lr_ratio",
    "weight_decay", "grad_clip", "ema_decay", "ema_warmup", "scales", "seed", "zero_init",
    "loss_weight", "init_from",
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run of an ε-prediction diffusion prior.

    Attributes:
      data: image folders and/or files (read with :func:`deqir_jax.io.list_images`, not
        recursive); every image is loaded into RAM once.
      run_dir: directory for checkpoints (``checkpoints/<step>``), ``loss.csv`` and
        ``train_config.json``.
      model: the network (an :class:`~deqir_jax.models.ADMConfig`; ``learn_sigma`` models are
        trained on their ε channels only).
      crop_size: side of the square random crops (a multiple of ``model.size_multiple``).
      batch_size: crops per step.
      steps: total optimisation steps of the run (also the length of the cosine schedule).
      lr: peak AdamW learning rate, reached linearly after ``warmup_steps``.
      lr_schedule: ``"cosine"`` (decay to ``min_lr_ratio * lr`` at ``steps``) or ``"constant"``.
      weight_decay: AdamW decoupled weight decay.
      grad_clip: clip the global gradient norm to this value (0: no clipping).
      ema_decay: EMA rate of the exported params; with ``ema_warmup`` the rate at step ``s`` is
        ``min(ema_decay, (1 + s) / (10 + s))`` so short runs are not dominated by the init.
      scales: image downscale factors in (0, 1]; each image is kept at every scale and a crop
        picks an image and a scale uniformly (multi-scale statistics for the prior).
      seed: seeds the init, the crops (numpy) and the timesteps/noise (JAX).
      zero_init: zero the last conv of every residual block, the attention output projections
        and the output conv at init, as ADM's ``zero_module`` does.
      loss_weight: ``"eps"``: the plain ε-MSE (L_simple), whose x0 error at large t is
        weighted by SNR_t ≈ 0 (t = 999: 4e-5), so a short run leaves ε_θ poor there;
        ``"v"``: ε-MSE × 1/ā_t = the v-MSE (Salimans & Ho 2022), ≈ the x0-MSE at large t and
        the ε-MSE at small t. None (default): ``"v"`` for a ``prediction="v"`` model (its
        natural loss), else ``"eps"``.
      init_from: a model checkpoint directory (``dq.models.save`` / ``weights_convert``
        output) whose params start the run, params and EMA alike (fine-tuning); its
        architecture must equal ``model`` except ``prediction`` (an ε-network can be
        fine-tuned into a v-network: at small t, v ≈ ε). None: random init.
      checkpoint_every: save a checkpoint every this many steps (and at the end).
      keep_checkpoints: how many recent checkpoints to keep.
      log_every: average the loss over this many steps per ``loss.csv`` row / progress update.
      resume: continue from the latest checkpoint in ``run_dir`` (error if none).
      export: directory to write the EMA model to at the end (``dq.models.save``), or None.
      overwrite: allow replacing an existing ``export`` directory and starting a fresh run in a
        ``run_dir`` that already has checkpoints.
    """

    data: tuple[str, ...]
    run_dir: str
    model: ADMConfig = DEFAULT_PRIOR_CONFIG
    crop_size: int = 48
    batch_size: int = 8
    steps: int = 10_000
    lr: float = 5e-4
    warmup_steps: int = 100
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    ema_warmup: bool = True
    scales: tuple[float, ...] = (1.0, 0.5, 0.25)
    seed: int = 0
    zero_init: bool = True
    loss_weight: str | None = None
    init_from: str | None = None
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    log_every: int = 10
    resume: bool = False
    export: str | None = None
    overwrite: bool = False

    def __post_init__(self):
        data = (self.data,) if isinstance(self.data, str | os.PathLike) else tuple(self.data)
        object.__setattr__(self, "data", tuple(os.fspath(d) for d in data))
        object.__setattr__(self, "run_dir", os.fspath(self.run_dir))
        for name in ("export", "init_from"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        scales = self.scales if isinstance(self.scales, list | tuple) else (self.scales,)
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))
        if not self.data:
            raise ValueError("data must name at least one image folder or file")
        if not isinstance(self.model, ADMConfig):
            raise TypeError(f"model must be an ADMConfig, got {type(self.model).__name__}")
        for name in ("crop_size", "batch_size", "steps", "checkpoint_every",
                     "keep_checkpoints", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        m = self.model.size_multiple
        if self.crop_size % m:
            raise ValueError(
                f"crop_size must be a multiple of {m} (model.size_multiple), got {self.crop_size}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.loss_weight is None:  # the natural loss of the output parameterisation
            object.__setattr__(self, "loss_weight", "v" if self.model.prediction == "v" else "eps")
        if self.loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"loss_weight must be one of {LOSS_WEIGHTS}, got {self.loss_weight!r}")
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be factors in (0, 1], got {self.scales}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the model as ``config_to_dict``)."""
        out = dataclasses.asdict(self)
        out["model"] = config_to_dict(self.model)
        out["data"] = list(self.data)
        out["scales"] = list(self.scales)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; ValueError naming unknown fields."""
        data = dict(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        if isinstance(data.get("model"), dict):
            data["model"] = config_from_dict(data["model"])
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)
