"""Open a checkpoint file and pick its state dict: ``.pt/.pth/.ckpt`` (zip or legacy) or
``.safetensors``, detected from the file content (not the extension).

State-dict selection rule (``pick_state_dict``), unless ``key`` is given:

1. the loaded object itself, if it is a dict of tensors;
2. otherwise the first of these entries that (recursively, by the same rule) holds a dict of
   tensors: ``ema``, ``ema_model``, ``model_ema``, ``ema_state_dict``, ``state_dict_ema``,
   ``state_dict``, ``model_state_dict``, ``model``, ``net``, ``network``, ``params``,
   ``module`` (EMA weights first: they are what diffusion sampling uses);
3. for a list/tuple (ermongroup/ddim saves ``[model, optimizer, epoch, step, ema]``), the
   *last* element that is a dict of tensors (the EMA weights when present).

``key`` overrides the rule: an entry name, or a path of names/list indices joined by ``/``
(e.g. ``--key state_dict``, ``--key 4``, ``--key checkpoint/ema``).

Wrapper prefixes shared by *every* key are then stripped repeatedly: ``module.``
(DataParallel/DDP), ``_orig_mod.`` (torch.compile), ``model.``.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from .tensors import SAFETENSORS_DTYPES, CheckpointError, LazyTensor, Storage, contiguous_strides
from .torch_pickle import load_legacy, load_zip

PREFERRED_KEYS = ("ema", "ema_model", "model_ema", "ema_state_dict", "state_dict_ema",
                  "state_dict", "model_state_dict", "model", "net", "network", "params", "module")
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.")


def load_safetensors(path: str) -> dict[str, LazyTensor]:
    """Parse a ``.safetensors`` file (8-byte header length, JSON header, raw data) lazily."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{path}: truncated safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"{path}: truncated safetensors file (header past the end)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header")
    out: dict[str, LazyTensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt or unsupported header entry {name!r}") from None
        itemsize = np.dtype(dtype).itemsize
        if begin < 0 or end < begin or (end - begin) % itemsize:
            raise CheckpointError(f"{path}: bad data offsets for {name!r}")
        st = Storage(path, 8 + n + begin, (end - begin) // itemsize, dtype)
        if st.count != math.prod(shape):
            raise CheckpointError(f"{path}: {name!r}: data size does not match shape {shape}")
        out[name] = LazyTensor(st, 0, shape, contiguous_strides(shape))
    return out


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The raw object of a checkpoint file (tensors as LazyTensor); CheckpointError if bad."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(f"{path}: file too small to be a checkpoint ({len(head)} bytes)")
    try:
        if head[:4] == b"PK\x03\x04":
            return load_zip(path)
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and n < 1 << 30:
            return load_safetensors(path)
        if head[:1] == b"\x80" or _is_tar(path):
            return load_legacy(path)
    except CheckpointError:
        raise
    except pickle_errors() as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: "
                              f"{e})") from None
    raise CheckpointError(
        f"{path}: not a PyTorch checkpoint (.pt/.pth/.ckpt zip or legacy pickle) or a "
        ".safetensors file")


def _is_tar(path: str) -> bool:
    import tarfile

    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def pickle_errors() -> tuple[type[BaseException], ...]:
    import pickle
    import zipfile

    return (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, struct.error, zipfile.BadZipFile, UnicodeDecodeError, OverflowError,
            MemoryError, RecursionError, OSError)


def _is_tensor_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, LazyTensor) for k, v in obj.items()))


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        items = [f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:12]]
        more = f", ... ({len(obj)} entries)" if len(obj) > 12 else ""
        return "{" + ", ".join(items) + more + "}"
    if isinstance(obj, list | tuple):
        return f"{type(obj).__name__} of {[type(v).__name__ for v in obj[:12]]}"
    return type(obj).__name__


def _auto_pick(obj: Any, where: str) -> tuple[dict, str] | None:
    if _is_tensor_dict(obj):
        return dict(obj), where
    if isinstance(obj, Mapping):
        for k in PREFERRED_KEYS:
            if k in obj:
                found = _auto_pick(obj[k], f"{where}/{k}" if where else k)
                if found:
                    return found
    if isinstance(obj, list | tuple):
        for i in reversed(range(len(obj))):
            if _is_tensor_dict(obj[i]):
                return dict(obj[i]), f"{where}/{i}" if where else str(i)
    return None


def pick_state_dict(obj: Any, key: str | None = None, *, path: str = "") -> tuple[dict, str]:
    """(state dict of LazyTensors, where it was found) by the rule in the module docstring."""
    if key:
        node, walked = obj, []
        parts = [key] if isinstance(obj, Mapping) and key in obj else key.split("/")
        for part in parts:
            walked.append(part)
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list | tuple) and part.lstrip("-").isdigit() and \
                    -len(node) <= int(part) < len(node):
                node = node[int(part)]
            else:
                raise CheckpointError(
                    f"{path}: --key {key!r}: no entry {'/'.join(walked)!r}; the checkpoint "
                    f"holds {_describe(node)}")
        tensors = {k: v for k, v in node.items() if isinstance(v, LazyTensor)} \
            if isinstance(node, Mapping) else {}
        if not tensors:
            raise CheckpointError(f"{path}: --key {key!r} is not a dict of tensors "
                                  f"({_describe(node)})")
        return tensors, key
    found = _auto_pick(obj, "")
    if not found:
        raise CheckpointError(
            f"{path}: no state dict found (looked for a dict of tensors, then the entries "
            f"{', '.join(PREFERRED_KEYS)}); the checkpoint holds {_describe(obj)}; "
            "pass --key")
    sd, where = found
    return sd, where or "<top level>"


def strip_prefixes(sd: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Remove wrapper prefixes shared by every key; returns (new dict, prefixes removed)."""
    removed = []
    changed = True
    while changed and sd:
        changed = False
        for p in STRIP_PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                removed.append(p)
                changed = True
    return sd, removed


def open_state_dict(path: str | os.PathLike, key: str | None = None
                    ) -> tuple[dict[str, LazyTensor], dict[str, Any]]:
    """(lazy state dict, info) of a checkpoint: info has ``where`` and ``stripped`` prefixes."""
    path = os.fspath(path)
    obj = read_checkpoint(path)
    sd, where = pick_state_dict(obj, key, path=path)
    sd, removed = strip_prefixes(sd)
    return sd, {"where": where, "stripped": removed}


def load_torch_state_dict(path: str | os.PathLike, key: str | None = None) -> dict:
    """Read a torch/safetensors checkpoint into ``{name: numpy array}`` without torch.

    Never executes code from the file (restricted unpickler). bfloat16 tensors come back as
    ``ml_dtypes.bfloat16`` arrays. See the module docstring for which dict is picked (``key``
    overrides) and which prefixes are stripped.
    """
    sd, _ = open_state_dict(path, key)
    return {k: v.numpy() for k, v in sd.items()}
