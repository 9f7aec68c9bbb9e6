"""Architecture configurations (frozen dataclasses), presets and their JSON form.

Two families:

* :class:`ADMConfig`: the guided-diffusion ``UNetModel`` (Dhariwal & Nichol, "Diffusion Models
  Beat GANs", 2021). Field names follow the upstream constructor, with ``attention_resolutions``
  given **in pixels at ``image_size``** like ``script_util.create_model``'s ``"32,16,8"`` string
  (the upstream constructor itself takes downsample factors ``ds = image_size // res``).
* :class:`DDPMConfig`: the ``Model`` of ermongroup/ddim (Ho et al. DDPM architecture). Field
  names follow its YAML ``model`` section; ``attn_resolutions`` is also in pixels at
  ``resolution``, as upstream.

Both networks are fully convolutional: attention is tied to a feature-map level by its
downsample factor ``ds`` (see ``attention_ds``), so any input whose height and width are
multiples of ``2 ** (len(channel_mult) - 1)`` works, not only ``image_size``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


def _tuple(v: Any) -> tuple:
    return tuple(v) if isinstance(v, list | tuple) else (v,)


def _clean_mult(v: Any) -> tuple:
    return tuple(int(m) if float(m).is_integer() else float(m) for m in _tuple(v))


def _ds_from_px(size: int, resolutions: tuple[int, ...], field: str) -> tuple[int, ...]:
    out = []
    for res in resolutions:
        if res <= 0 or size % res:
            raise ValueError(f"{field}: {res} px must divide the image size {size}")
        out.append(size // res)
    return tuple(sorted(set(out)))


#: Output parameterisations of an ADM network (see :class:`ADMConfig`).
PREDICTIONS = ("eps", "v")


@dataclasses.dataclass(frozen=True)
class ADMConfig:
    """guided-diffusion ``UNetModel`` hyperparameters (defaults: 256x256 unconditional).

    ``out_channels`` is 6 when the model learns its variance (``learn_sigma``): channels
    ``[:in_channels]`` are the ε prediction, the rest the variance interpolation ``v``.
    ``num_head_channels`` (if not -1) overrides ``num_heads``; ``num_heads_upsample`` (-1: same
    as ``num_heads``) is used by the decoder's attention blocks when ``num_head_channels == -1``.
    ``num_classes`` (None: unconditional) adds a label embedding: then ``eps_fn`` needs ``y``.
    ``dropout`` is recorded for completeness; the network runs in inference mode (no dropout).
    ``prediction`` is what the first ``in_channels`` output channels mean: ``"eps"`` (ε, every
    released checkpoint) or ``"v"`` (v = √ā_t ε − √(1−ā_t) x_0, Salimans & Ho 2022, on the
    linear 1000-step DDPM schedule); ``eps_fn`` always returns ε, converting v as
    ``ε = √ā_t v + √(1−ā_t) x_t``. An ε-network has to output almost exactly its input at
    large t (x0 error = ε error/√ā_t, √ā_999 ≈ 0.006); a v-network outputs ≈ −x_0 there.
    """

    architecture: ClassVar[str] = "adm"

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    out_channels: int = 6
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    num_classes: int | None = None
    dropout: float = 0.0
    conv_resample: bool = True
    prediction: str = "eps"

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        object.__setattr__(self, "attention_resolutions", tuple(
            int(r) for r in _tuple(self.attention_resolutions)))
        object.__setattr__(self, "channel_mult", _clean_mult(self.channel_mult))
        if not self.channel_mult:
            raise ValueError("channel_mult must not be empty")
        for name in ("image_size", "in_channels", "model_channels", "out_channels",
                     "num_res_blocks"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        _ds_from_px(self.image_size, self.attention_resolutions, "attention_resolutions")
        for level, m in enumerate(self.channel_mult):
            ch = int(m * self.model_channels)
            if ch <= 0 or ch % 32:
                raise ValueError(
                    f"channel_mult[{level}]={m} * model_channels={self.model_channels} = {ch} "
                    "must be a positive multiple of 32 (GroupNorm with 32 groups)"
                )
            if self.num_head_channels != -1 and ch % self.num_head_channels:
                raise ValueError(
                    f"num_head_channels={self.num_head_channels} does not divide the {ch} "
                    f"channels of level {level}"
                )
        if self.num_head_channels == -1 and self.num_heads <= 0:
            raise ValueError("num_heads must be positive when num_head_channels == -1")
        if self.num_classes is not None and int(self.num_classes) <= 0:
            raise ValueError(f"num_classes must be None or positive, got {self.num_classes}")

    @property
    def learn_sigma(self) -> bool:
        """True when the network also outputs the variance channels (``2 * in_channels``)."""
        return self.out_channels == 2 * self.in_channels

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsample factors ``image_size // res`` at which attention blocks sit."""
        return _ds_from_px(self.image_size, self.attention_resolutions, "attention_resolutions")

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (``2 ** (levels - 1)``)."""
        return 2 ** (len(self.channel_mult) - 1)


@dataclasses.dataclass(frozen=True)
class DDPMConfig:
    """ermongroup/ddim ``Model`` hyperparameters (defaults: CelebA-HQ 256 of SDEdit/DDNM).

    ``out_ch`` is the number of output channels (3: ε only). GroupNorm eps is 1e-6, the timestep
    embedding is sin-then-cos with divisor ``half - 1``, stride-2 convs pad (0, 1) and attention
    is single-head. ``dropout`` is recorded only (inference mode).
    """

    architecture: ClassVar[str] = "ddpm"

    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    resamp_with_conv: bool = True

    def __post_init__(self):
        object.__setattr__(self, "attn_resolutions", tuple(
            int(r) for r in _tuple(self.attn_resolutions)))
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in _tuple(self.ch_mult)))
        if not self.ch_mult:
            raise ValueError("ch_mult must not be empty")
        for name in ("resolution", "in_channels", "ch", "out_ch", "num_res_blocks"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        _ds_from_px(self.resolution, self.attn_resolutions, "attn_resolutions")
        for level, m in enumerate((1, *self.ch_mult)):
            if (m * self.ch) % 32 or m <= 0:
                raise ValueError(
                    f"ch_mult entry {m} * ch={self.ch} must be a positive multiple of 32 "
                    f"(GroupNorm with 32 groups) (level {level - 1})"
                )

    @property
    def out_channels(self) -> int:
        return self.out_ch

    @property
    def learn_sigma(self) -> bool:
        return self.out_ch == 2 * self.in_channels

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsample factors ``resolution // res`` at which attention blocks sit."""
        return _ds_from_px(self.resolution, self.attn_resolutions, "attn_resolutions")

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


Config = ADMConfig | DDPMConfig
ARCHITECTURES: dict[str, type] = {"adm": ADMConfig, "ddpm": DDPMConfig}

_ADM_RELEASED = dict(
    model_channels=256, out_channels=6, num_res_blocks=2, attention_resolutions=(32, 16, 8),
    num_heads=4, num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True,
)

#: Named configurations. ImageNet ones are the released guided-diffusion checkpoints
#: (README "MODEL_FLAGS"): 64x64 (cond, new attention order, 192 channels, 3 res blocks),
#: 128x128 (cond, 4 heads), 256x256 cond/uncond and 512x512 cond. ``adm-tiny-golden`` is the
#: network of ``golden/adm_tiny.pt``.
PRESETS: dict[str, Config] = {
    "adm-imagenet256-uncond": ADMConfig(image_size=256, **_ADM_RELEASED),
    "adm-imagenet256-cond": ADMConfig(image_size=256, num_classes=1000, **_ADM_RELEASED),
    "adm-imagenet512": ADMConfig(
        **{**_ADM_RELEASED, "image_size": 512, "channel_mult": (0.5, 1, 1, 2, 2, 4, 4),
           "num_classes": 1000}),
    "adm-imagenet128": ADMConfig(
        **{**_ADM_RELEASED, "image_size": 128, "channel_mult": (1, 1, 2, 3, 4),
           "num_head_channels": -1, "num_heads": 4, "num_classes": 1000}),
    "adm-imagenet64": ADMConfig(
        **{**_ADM_RELEASED, "image_size": 64, "model_channels": 192, "num_res_blocks": 3,
           "channel_mult": (1, 2, 3, 4), "use_new_attention_order": True,
           "num_classes": 1000, "dropout": 0.1}),
    "adm-tiny-golden": ADMConfig(
        image_size=32, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
        attention_resolutions=(16,), channel_mult=(1, 2), num_heads=1, num_head_channels=16,
        use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=False),
    "ddpm-celebahq256": DDPMConfig(),
    "ddpm-cifar10": DDPMConfig(resolution=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                               attn_resolutions=(16,), dropout=0.1),
}

def get_preset(name: str) -> Config:
    """The preset config called ``name``; ValueError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None


def config_to_dict(config: Config) -> dict[str, Any]:
    """``{"architecture": ..., <every field>}`` with tuples as lists (JSON-ready)."""
    out: dict[str, Any] = {"architecture": config.architecture}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_from_dict(data: dict[str, Any]) -> Config:
    """Inverse of :func:`config_to_dict`; ValueError naming unknown architectures/fields."""
    if not isinstance(data, dict):
        raise ValueError(f"config must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    arch = data.pop("architecture", None)
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}"
        )
    cls = ARCHITECTURES[arch]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {arch} config field(s): {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as e:
        raise ValueError(f"invalid {arch} config: {e}") from None


def replace_fields(config: Config, **changes: Any) -> Config:
    """``dataclasses.replace`` with ValueError for unknown field names."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ValueError(
            f"unknown {config.architecture} config field(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    return dataclasses.replace(config, **changes)
