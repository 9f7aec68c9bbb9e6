"""Infer the architecture and its config from state-dict names and shapes.

Inferred from the tensors (exactly):

* ADM: ``in_channels``, ``model_channels``, ``out_channels`` (so ``learn_sigma``),
  ``num_res_blocks``, ``channel_mult``, the attention levels (as downsample factors),
  ``use_scale_shift_norm`` (emb projection width), ``resblock_updown`` (resampling res blocks),
  ``conv_resample`` (resampling convs, or parameter-free pooling) and ``num_classes``;
* DDPM: ``in_channels``, ``ch``, ``out_ch``, ``ch_mult``, ``num_res_blocks``, the attention
  levels and ``resamp_with_conv``.

Not stored in the weights, hence taken from ``--preset``, else from a preset whose inferred
fields all match (reported), else from ``--set``, else defaulted and reported:

* ``image_size``/``resolution`` (the networks are fully convolutional; it only fixes how the
  attention levels are written in pixels; guessed as 32 px (ADM) / 16 px (DDPM) at the
  coarsest attention level), ``dropout`` (0; inference only);
* ADM ``num_heads``/``num_head_channels``/``num_heads_upsample`` (qkv shapes do not depend
  on them): **required** via ``--set`` when no preset matches;
  ``use_new_attention_order``: defaults to False (upstream default) and is reported.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

from deqir_jax.models import PRESETS, ADMConfig, Config, DDPMConfig, get_preset

ADM_INFERRED = ("in_channels", "model_channels", "out_channels", "num_res_blocks",
                "channel_mult", "use_scale_shift_norm", "resblock_updown", "conv_resample",
                "num_classes")
DDPM_INFERRED = ("in_channels", "ch", "out_ch", "ch_mult", "num_res_blocks", "resamp_with_conv")
IGNORED_KEYS = {"ddpm": ("logvar",)}  # ddim "bayesian" models: a per-timestep log-variance


def detect_architecture(shapes: dict[str, tuple]) -> str:
    """``"adm"`` or ``"ddpm"`` from characteristic key names; ValueError otherwise."""
    if "input_blocks.0.0.weight" in shapes and "time_embed.0.weight" in shapes:
        return "adm"
    if "conv_in.weight" in shapes and "temb.dense.0.weight" in shapes:
        return "ddpm"
    sample = ", ".join(sorted(shapes)[:8])
    raise ValueError(
        "cannot recognise the architecture: expected guided-diffusion ADM keys "
        "('input_blocks.0.0.weight', 'time_embed.0.weight') or ermongroup/ddim DDPM keys "
        f"('conv_in.weight', 'temb.dense.0.weight'); found {len(shapes)} keys, e.g. {sample}")


def _indices(shapes: dict, pattern: str) -> dict[int, set[str]]:
    """{block index: set of rest-of-key} for keys matching ``pattern`` (with one int group)."""
    out: dict[int, set[str]] = {}
    rx = re.compile(pattern)
    for k in shapes:
        m = rx.match(k)
        if m:
            out.setdefault(int(m.group(1)), set()).add(m.group(2))
    return out


def _mult(ch: int, base: int) -> float | int:
    m = ch / base
    return int(m) if m.is_integer() else m


def infer_adm(shapes: dict[str, tuple]) -> tuple[dict[str, Any], tuple[int, ...]]:
    """(inferred ADM fields, attention downsample factors)."""
    mc = shapes["time_embed.0.weight"][1]
    ch0, in_ch = shapes["input_blocks.0.0.weight"][:2]
    out_ch = shapes["out.2.weight"][0] if "out.2.weight" in shapes else None
    inputs = _indices(shapes, r"^input_blocks\.(\d+)\.(.*)$")
    outputs = _indices(shapes, r"^output_blocks\.(\d+)\.(.*)$")
    if not outputs:
        raise ValueError("no output_blocks.* keys: not a complete ADM UNet")
    n_out = max(outputs) + 1
    up_blocks = sorted(i for i, rest in outputs.items()
                       if any(re.match(r"^[12]\.(in_layers\.0\.weight|conv\.weight)$", r)
                              for r in rest))
    updown = any(any(re.match(r"^[12]\.in_layers\.0\.weight$", r) for r in outputs[i])
                 for i in up_blocks)
    conv_resample = True
    if up_blocks:
        nrb = up_blocks[0]
    else:
        missing = [i for i in range(max(inputs) + 1) if i not in inputs]
        conv_resample = not missing
        nrb = missing[0] - 1 if missing else n_out - 1
    if nrb <= 0 or n_out % (nrb + 1):
        raise ValueError(f"cannot infer num_res_blocks from {n_out} output blocks")
    levels = n_out // (nrb + 1)
    mult, attn_ds = [], []
    for lvl in range(levels):
        key = f"input_blocks.{1 + lvl * (nrb + 1)}.0.out_layers.3.weight"
        if key not in shapes:
            raise ValueError(f"cannot infer channel_mult: missing {key}")
        mult.append(_mult(shapes[key][0], mc))
        if f"input_blocks.{1 + lvl * (nrb + 1)}.1.qkv.weight" in shapes:
            attn_ds.append(2 ** lvl)
    first = shapes.get("input_blocks.1.0.out_layers.3.weight", (0,))[0]
    emb = shapes.get("input_blocks.1.0.emb_layers.1.weight", (0,))[0]
    fields = dict(
        in_channels=in_ch, model_channels=mc, out_channels=out_ch, num_res_blocks=nrb,
        channel_mult=tuple(mult), use_scale_shift_norm=emb == 2 * first,
        resblock_updown=updown, conv_resample=conv_resample,
        num_classes=shapes["label_emb.weight"][0] if "label_emb.weight" in shapes else None)
    if int(mult[0] * mc) != ch0:
        raise ValueError(f"inconsistent first-level channels ({ch0} vs {mult[0]} * {mc})")
    return fields, tuple(attn_ds)


def infer_ddpm(shapes: dict[str, tuple]) -> tuple[dict[str, Any], tuple[int, ...]]:
    """(inferred DDPM fields, attention downsample factors)."""
    ch, in_ch = shapes["conv_in.weight"][:2]
    down = _indices(shapes, r"^down\.(\d+)\.(.*)$")
    if not down:
        raise ValueError("no down.* keys: not a complete DDPM UNet")
    levels = max(down) + 1
    nrb = len({m.group(1) for k in down[0]
               for m in [re.match(r"^block\.(\d+)\.", k)] if m})
    mult, attn_ds = [], []
    for lvl in range(levels):
        key = f"down.{lvl}.block.0.conv1.weight"
        if key not in shapes:
            raise ValueError(f"cannot infer ch_mult: missing {key}")
        mult.append(_mult(shapes[key][0], ch))
        if f"down.{lvl}.attn.0.q.weight" in shapes:
            attn_ds.append(2 ** lvl)
    fields = dict(in_channels=in_ch, ch=ch,
                  out_ch=shapes["conv_out.weight"][0] if "conv_out.weight" in shapes else None,
                  ch_mult=tuple(mult), num_res_blocks=nrb,
                  resamp_with_conv=levels == 1 or "down.0.downsample.conv.weight" in shapes)
    return fields, tuple(attn_ds)


def parse_value(config_cls: type, name: str, text: str) -> Any:
    """Parse ``--set name=text`` according to the dataclass field type."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    if name not in fields:
        raise ValueError(f"--set {name}: unknown {config_cls.architecture} field; known: "
                         f"{', '.join(sorted(fields))}")
    hint = typing.get_type_hints(config_cls)[name]
    args = typing.get_args(hint)
    t = text.strip()
    try:
        if isinstance(hint, types.UnionType) and type(None) in args:
            if t.lower() in ("none", "null", ""):
                return None
            hint = next(a for a in args if a is not type(None))
        if hint is bool:
            if t.lower() in ("1", "true", "yes", "on"):
                return True
            if t.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(t)
        if typing.get_origin(hint) is tuple:
            elem = typing.get_args(hint)[0]
            return tuple(elem(float(v)) if elem is int else elem(v)
                         for v in t.strip("()[]").split(",") if v.strip())
        return hint(t)
    except (ValueError, StopIteration):
        raise ValueError(f"--set {name}={text}: cannot parse as {hint}") from None


def _guess_size(attn_ds: tuple[int, ...], levels: int, px: int) -> int:
    return px * min(attn_ds) if attn_ds else px * 2 ** (levels - 1)


def resolve_config(shapes: dict[str, tuple], preset: str | None = None,
                   overrides: dict[str, str] | None = None) -> tuple[Config, list[str], dict]:
    """(config, notes, inferred fields) for a state dict given as ``{key: shape}``.

    ``overrides`` are raw ``--set`` strings. With ``preset`` the preset is used as is (plus
    overrides); a mismatch with the checkpoint is reported later by the key/shape check,
    together with the fields that differ (``inferred``).
    """
    overrides = dict(overrides or {})
    arch = detect_architecture(shapes)
    cls = ADMConfig if arch == "adm" else DDPMConfig
    parsed = {k: parse_value(cls, k, v) for k, v in overrides.items()}
    try:
        fields, attn_ds = infer_adm(shapes) if arch == "adm" else infer_ddpm(shapes)
        inferred = {**fields, "attention_ds": attn_ds}
    except (KeyError, IndexError, ValueError) as e:
        if preset is None:
            raise ValueError(f"cannot infer the {arch} config from the checkpoint ({e}); "
                             "pass --preset") from None
        inferred, fields, attn_ds = {}, {}, ()
    notes: list[str] = []
    size_field = "image_size" if arch == "adm" else "resolution"
    attn_field = "attention_resolutions" if arch == "adm" else "attn_resolutions"
    if preset is not None:
        base = get_preset(preset)
        if base.architecture != arch:
            raise ValueError(f"preset {preset!r} is a {base.architecture} config but the "
                             f"checkpoint has {arch} keys")
        notes.append(f"preset {preset}")
    else:
        base = None
        for name, cand in PRESETS.items():
            if cand.architecture == arch and all(
                    getattr(cand, k) == v for k, v in fields.items()) \
                    and cand.attention_ds == attn_ds:
                base = cand
                notes.append(f"matches preset {name}")
                break
    if base is None:
        base_fields = dict(fields)
        size = parsed.get(size_field) or _guess_size(attn_ds, len(
            fields["channel_mult" if arch == "adm" else "ch_mult"]), 32 if arch == "adm" else 16)
        base_fields[size_field] = size
        base_fields[attn_field] = tuple(size // d for d in attn_ds)
        if size_field not in parsed:
            notes.append(f"{size_field}={size} guessed (not stored in weights; "
                         f"--set {size_field}=N)")
        if arch == "adm":
            if "num_heads" not in parsed and "num_head_channels" not in parsed:
                raise ValueError(
                    "cannot infer the attention heads of this ADM checkpoint (no preset "
                    "matches it): pass --set num_head_channels=N (e.g. 64) or --set num_heads=N,"
                    " and --set use_new_attention_order=true if it was trained with it")
            base_fields.setdefault("num_heads", 1)
            base_fields["num_head_channels"] = -1
            if "use_new_attention_order" not in parsed:
                notes.append("use_new_attention_order=False assumed (--set to change)")
        try:
            base = cls(**base_fields)
        except (TypeError, ValueError) as e:
            raise ValueError(f"inferred an invalid {arch} config ({e}); pass --preset") from None
    if size_field in parsed and attn_field not in parsed:
        parsed[attn_field] = tuple(parsed[size_field] // d for d in base.attention_ds)
    try:
        config = dataclasses.replace(base, **parsed)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid config: {e}") from None
    return config, notes, inferred


def field_differences(config: Config, inferred: dict[str, Any]) -> list[str]:
    """Lines ``field: config value vs checkpoint value`` for inferred fields that differ."""
    out = []
    for k, v in inferred.items():
        have = config.attention_ds if k == "attention_ds" else getattr(config, k)
        if have != v:
            out.append(f"{k}: {have!r} in the config, {v!r} in the checkpoint")
    return out
