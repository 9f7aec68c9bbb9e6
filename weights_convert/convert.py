"""Convert a PyTorch/safetensors UNet checkpoint into a ``deqir_jax.models`` checkpoint.

Steps: read the file safely (``sources``), pick and clean the state dict, infer/resolve the
config (``infer``), check that the torch keys and shapes are *exactly* those of the config
(every missing, unexpected and mis-shaped key reported in one :class:`ConversionError`), map
every tensor to the Flax layout (``mapping``) with a progress bar over bytes, and save with
``deqir_jax.models.save`` (temp dir + rename; an existing destination is refused unless
``overwrite``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from deqir_jax import Sampler
from deqir_jax.models import Config, Model, dtype_name, make_eps_fn, save

from .infer import IGNORED_KEYS, field_differences, resolve_config
from .mapping import expected_keys, set_path, to_flax
from .sources import open_state_dict
from .tensors import LazyTensor


class ConversionError(ValueError):
    """The checkpoint does not match the architecture/config (details in the message)."""


@dataclasses.dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` did."""

    dst: Path
    config: Config
    num_params: int
    num_tensors: int
    source_key: str
    source_dtypes: tuple[str, ...]
    notes: tuple[str, ...]
    seconds: float
    timings: dict = dataclasses.field(default_factory=dict)  # phase -> seconds

    def summary(self) -> str:
        """One line describing the conversion."""
        notes = f" [{'; '.join(self.notes)}]" if self.notes else ""
        arch = self.config.architecture.upper()
        return (f"converted {arch} UNet: {self.num_tensors} tensors ({self.num_params:,} params, "
                f"{'/'.join(self.source_dtypes)} -> float32) from '{self.source_key}' to "
                f"{self.dst} in {self.seconds:.1f}s{notes}")


def check_state_dict(config: Config, shapes: dict[str, tuple], inferred: dict[str, Any],
                     *, src: str = "", preset: str | None = None) -> list[str]:
    """Raise :class:`ConversionError` listing all key/shape mismatches; returns ignored keys."""
    expected = expected_keys(config)
    ignored = [k for k in shapes if k in IGNORED_KEYS.get(config.architecture, ())]
    actual = {k: v for k, v in shapes.items() if k not in ignored}
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    mismatched = [k for k in expected if k in actual and tuple(actual[k]) != expected[k][1]]
    if not (missing or unexpected or mismatched):
        return ignored
    what = f"preset {preset!r}" if preset else f"the inferred {config.architecture} config"
    lines = [f"{src}: checkpoint does not match {what}: {len(missing)} missing, "
             f"{len(unexpected)} unexpected, {len(mismatched)} shape-mismatched keys"]
    diffs = field_differences(config, inferred)
    if diffs:
        lines.append("config fields that differ from the checkpoint:")
        lines += [f"  {d}" for d in diffs]
    if missing:
        lines.append("missing keys (expected by the config, absent in the checkpoint):")
        lines += [f"  {k} {expected[k][1]}" for k in missing]
    if unexpected:
        lines.append("unexpected keys (in the checkpoint, not used by the config):")
        lines += [f"  {k} {tuple(actual[k])}" for k in unexpected]
    if mismatched:
        lines.append("shape mismatches (key: config vs checkpoint):")
        lines += [f"  {k}: {expected[k][1]} vs {tuple(actual[k])}" for k in mismatched]
    raise ConversionError("\n".join(lines))


def convert_state_dict(sd: dict[str, Any], config: Config, *, progress: bool = False) -> dict:
    """Flax params (nested dict of float32 jax arrays in host memory) from a checked state dict.

    ``sd`` values are LazyTensors (read and released one at a time) or array-likes (numpy,
    torch CPU tensors). Each converted leaf is moved into a jax CPU buffer right away, so the
    peak memory is about one copy of the params (orbax's save adds one host copy).
    """
    import jax
    from tqdm.auto import tqdm

    cpu = jax.devices("cpu")[0]
    expected = expected_keys(config)
    total = sum(sd[k].nbytes for k in expected)
    params: dict = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc="converting",
              disable=not progress or None, leave=False) as bar:
        for key, (path, _, flax_shape) in expected.items():
            tensor = sd[key]
            lazy = isinstance(tensor, LazyTensor)
            array = tensor.numpy() if lazy else np.asarray(tensor)
            set_path(params, path, jax.device_put(to_flax(array, path, flax_shape), cpu))
            if lazy:
                tensor.storage.release()
            bar.update(array.nbytes)
    return params


def params_from_state_dict(state_dict: dict[str, Any], config: Config) -> dict:
    """Flax params for ``config`` from an in-memory torch-style state dict of arrays.

    Checks keys and shapes first (:class:`ConversionError` listing every problem).
    """
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    check_state_dict(config, shapes, {})
    return convert_state_dict(state_dict, config)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, preset: str | None = None,
            dtype: Any = "float32", key: str | None = None,
            overrides: dict[str, str] | list[str] | None = None, overwrite: bool = False,
            progress: bool = False) -> ConvertResult:
    """Convert the checkpoint ``src`` to a ``deqir_jax.models`` checkpoint directory ``dst``.

    Args:
      src: ``.pt/.pth/.ckpt`` (torch zip or legacy format) or ``.safetensors`` file.
      dst: output directory (must not exist unless ``overwrite``).
      preset: a ``deqir_jax.models.PRESETS`` name; default: infer (see ``infer``).
      dtype: compute dtype recorded in the checkpoint (``float32`` or ``bfloat16``); params
        are always stored as float32.
      key: which entry of the file holds the state dict (see ``sources``).
      overrides: config fields as ``{"name": "value"}`` or ``["name=value", ...]`` strings.
      overwrite: replace an existing ``dst``.
      progress: show a tqdm progress bar over the bytes converted.
    Raises:
      CheckpointError (unreadable/unsafe file), ConversionError (mismatch), ValueError (bad
      arguments), FileExistsError (``dst`` exists). ``dst`` is untouched on failure.
    """
    start = time.perf_counter()
    src = os.fspath(src)
    dst_path = Path(dst).expanduser().absolute()
    name = dtype_name(dtype)
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if dst_path.exists() and not overwrite:
        raise FileExistsError(f"{dst_path} already exists (pass --overwrite to replace it)")
    if isinstance(overrides, list | tuple):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"--set expects name=value, got {item!r}")
            k, v = item.split("=", 1)
            pairs[k.strip()] = v
        overrides = pairs
    sd, info = open_state_dict(src, key)
    shapes = {k: v.shape for k, v in sd.items()}
    config, notes, inferred = resolve_config(shapes, preset, overrides)
    ignored = check_state_dict(config, shapes, inferred, src=src, preset=preset)
    if ignored:
        notes.append(f"ignored unused keys: {', '.join(ignored)}")
    if info["stripped"]:
        notes.append(f"stripped prefixes {''.join(info['stripped'])}")
    timings = {"open_and_check": time.perf_counter() - start}
    tick = time.perf_counter()
    params = convert_state_dict(sd, config, progress=progress)
    timings["read_and_map"] = time.perf_counter() - tick
    # Official checkpoints are sampled with the official example's settings unless the user
    # stores others (model.replace(sampler=...)).
    model = Model(config=config, params=params, eps_fn=make_eps_fn(config, name), dtype=name,
                  sampler=Sampler.official())
    source_dtypes = tuple(sorted({str(sd[k].dtype) for k in expected_keys(config)}))
    tick = time.perf_counter()
    save(model, dst_path, overwrite=overwrite,
         metadata={"converted_from": os.path.abspath(src), "state_dict_key": info["where"],
                   "source_dtypes": list(source_dtypes), "notes": notes})
    timings["save"] = time.perf_counter() - tick
    n_params = sum(v.size for v in _leaves(params))
    return ConvertResult(dst=dst_path, config=config, num_params=n_params,
                         num_tensors=len(expected_keys(config)), source_key=info["where"],
                         source_dtypes=source_dtypes, notes=tuple(notes),
                         seconds=time.perf_counter() - start, timings=timings)


def _leaves(tree: dict):
    for v in tree.values():
        if isinstance(v, dict):
            yield from _leaves(v)
        else:
            yield v
