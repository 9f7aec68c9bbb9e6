"""Model checkpoints on disk: ``config.json`` plus an orbax save of the params.

Layout of a checkpoint directory::

    DST/
      config.json   {"format": "deqir_jax.model", "format_version": 1,
                     "architecture": "adm" | "ddpm", "config": {<every field>},
                     "dtype": "float32" | "bfloat16", "metadata": {...optional},
                     "sampler": {...optional: the recommended dq.Sampler settings}}
      params/       orbax StandardCheckpointer save of the params pytree

Restoring builds the target tree from the config with ``jax.eval_shape`` and places every
array on the default device, so a checkpoint written on a GPU (with its sharding metadata)
restores on a CPU-only machine. Writes go to a hidden temporary sibling directory that is
renamed into place at the end, so ``DST`` is never half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ..sampler import Sampler
from .configs import config_from_dict, config_to_dict
from .model import Model, abstract_params, check_params, dtype_name, make_eps_fn, params_mismatch

FORMAT = "deqir_jax.model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def _to_host(params: Any) -> Any:
    """Leaves as numpy/jax arrays (orbax accepts both); python scalars are refused."""
    def leaf(v):
        if not hasattr(v, "shape"):
            raise ValueError(f"params leaves must be arrays, got {type(v).__name__}")
        return v
    return jax.tree.map(leaf, params)


def write_checkpoint(dst: str | os.PathLike, config_json: dict, params: Any, *,
                     overwrite: bool = False) -> Path:
    """Atomically write ``config_json`` and ``params`` to ``dst`` (temp dir + rename).

    FileExistsError if ``dst`` exists and ``overwrite`` is False; on any failure the temporary
    directory is removed and ``dst`` is left as it was.
    """
    dst = Path(dst).expanduser().absolute()
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite=True / --overwrite)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = dst.parent / f".{dst.name}.tmp-{token}"
    try:
        tmp.mkdir()
        (tmp / CONFIG_FILE).write_text(json.dumps(config_json, indent=2) + "\n")
        ckptr = _checkpointer()
        ckptr.save(tmp / PARAMS_DIR, _to_host(params))
        ckptr.wait_until_finished()
        ckptr.close()
        if dst.exists():
            old = dst.parent / f".{dst.name}.old-{token}"
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def save(model: Model, path: str | os.PathLike, overwrite: bool = False,
         metadata: dict | None = None) -> Path:
    """Save ``model`` (config, compute dtype, params) to the directory ``path``.

    Refuses an existing ``path`` unless ``overwrite``; never leaves a half-written ``path``.
    ``metadata``: optional JSON-serialisable provenance stored in ``config.json``.
    ``model.sampler`` (recommended sampler settings), when set, is stored with it.
    """
    check_params(model.config, model.params)
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model.config.architecture,
        "config": {k: v for k, v in config_to_dict(model.config).items() if k != "architecture"},
        "dtype": dtype_name(model.dtype),
        "param_count": int(sum(np.prod(v.shape) for v in jax.tree.leaves(model.params))),
    }
    if metadata:
        data["metadata"] = metadata
    if model.sampler is not None:
        data["sampler"] = _sampler(model.sampler, "model.sampler").to_dict()
    return write_checkpoint(path, data, model.params, overwrite=overwrite)


def _sampler(value: Any, where: str):
    """A :class:`~deqir_jax.Sampler` from a Sampler or its dict; ValueError naming ``where``."""
    if isinstance(value, Sampler):
        return value
    try:
        return Sampler.from_dict(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid sampler settings ({e})") from None


def read_config(path: str | os.PathLike) -> tuple[Any, str, dict]:
    """(config, dtype name, raw JSON) of the checkpoint directory ``path``; ValueError if bad."""
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not path.is_dir():
        raise ValueError(f"{path}: not a model checkpoint directory (does not exist or is a file)")
    if not cfg_file.is_file():
        raise ValueError(f"{path}: missing {CONFIG_FILE} (not a deqir_jax model checkpoint)")
    try:
        data = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_file}: unreadable or invalid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{cfg_file}: not a {FORMAT} config (missing 'format': '{FORMAT}')")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{cfg_file}: format_version {data.get('format_version')} is newer than this "
            f"library supports ({FORMAT_VERSION})"
        )
    try:
        config = config_from_dict({"architecture": data.get("architecture"),
                                   **(data.get("config") or {})})
        dtype = dtype_name(data.get("dtype", "float32"))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{cfg_file}: {e}") from None
    return config, dtype, data


def _stored_tree(params_dir: Path) -> Any:
    md = _checkpointer().metadata(params_dir)
    tree = getattr(md, "item_metadata", md)
    return getattr(tree, "tree", tree)


def load(path: str | os.PathLike, dtype: Any = None) -> Model:
    """Load a checkpoint written by :func:`save` (or ``weights_convert``, or training).

    Args:
      path: the checkpoint directory.
      dtype: compute dtype override (``jnp.float32``/``jnp.bfloat16``); None keeps the saved one.
    Returns:
      a :class:`Model` with float32 params on the default device and the checkpoint's
      recommended sampler settings (``model.sampler``; None if it stores none).
    Raises:
      ValueError naming the path and the problem (missing/corrupt config, params that do not
      match the config: every missing, unexpected and mis-shaped array is listed).
    """
    path = Path(path).expanduser().absolute()
    config, saved_dtype, data = read_config(path)
    sampler = data.get("sampler")
    if sampler is not None:
        sampler = _sampler(sampler, f"{path / CONFIG_FILE} 'sampler'")
    name = saved_dtype if dtype is None else dtype_name(dtype)
    params_dir = path / PARAMS_DIR
    if not params_dir.is_dir():
        raise ValueError(f"{path}: missing {PARAMS_DIR}/ (orbax params checkpoint)")
    expected = abstract_params(config)
    try:
        stored = _stored_tree(params_dir)
    except Exception as e:  # orbax raises many types for unreadable metadata
        raise ValueError(f"{params_dir}: unreadable orbax checkpoint ({e})") from None
    problems = params_mismatch(expected, stored)
    if problems:
        raise ValueError(
            f"{params_dir}: params do not match the {config.architecture} config in "
            f"{CONFIG_FILE} ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    stored_dtypes = jax.tree.map(lambda e, s: s.dtype, expected, stored)
    target = jax.tree.map(
        lambda e, dt: jax.ShapeDtypeStruct(e.shape, dt, sharding=sharding), expected,
        stored_dtypes)
    try:
        params = _checkpointer().restore(params_dir, target)
    except Exception as e:
        raise ValueError(f"{params_dir}: could not restore params ({e})") from None
    return Model(config=config, params=params, eps_fn=make_eps_fn(config, name), dtype=name,
                 sampler=sampler)
