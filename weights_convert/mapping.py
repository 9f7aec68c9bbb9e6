"""Name and layout mapping between the PyTorch state dicts and the Flax params trees.

For every leaf of ``deqir_jax.models.abstract_params(config)`` this gives the torch key and
torch shape, and converts a torch array to the Flax layout:

* ``Conv2d.weight`` OIHW -> ``kernel`` HWIO (``transpose(2, 3, 1, 0)``);
* ``Linear.weight`` (out, in), ADM attention ``Conv1d`` (out, in, 1) and DDPM attention 1x1
  ``Conv2d`` (out, in, 1, 1) -> dense ``kernel`` (in, out);
* GroupNorm ``weight`` -> ``scale``; ``Embedding.weight`` -> ``embedding``; biases unchanged.

All values are cast to float32 (params are always stored in float32).
"""

from __future__ import annotations

import re

import numpy as np

from deqir_jax.models import Config, abstract_params

_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}

_ADM_TOP = {"time_embed_0": "time_embed.0", "time_embed_1": "time_embed.2",
            "label_emb": "label_emb", "final_norm": "out.0", "final_conv": "out.2"}
_ADM_SUB = {"in_norm": "in_layers.0", "in_conv": "in_layers.2", "emb_linear": "emb_layers.1",
            "out_norm": "out_layers.0", "out_conv": "out_layers.3", "skip": "skip_connection"}
_ADM_CONV1D = {"qkv", "proj_out"}            # attention projections are Conv1d(k=1) in ADM
_DDPM_CONV1X1 = {"q", "k", "v", "proj_out"}  # ... and 1x1 Conv2d in DDPM

_DDPM_PATTERNS = [
    (re.compile(r"^temb_dense_(\d+)$"), r"temb.dense.\1"),
    (re.compile(r"^(down|up)_(\d+)_(block|attn)_(\d+)$"), r"\1.\2.\3.\4"),
    (re.compile(r"^(down|up)_(\d+)_(downsample|upsample)$"), r"\1.\2.\3"),
    (re.compile(r"^mid_(block_1|attn_1|block_2)$"), r"mid.\1"),
]
_ADM_PATTERNS = [
    (re.compile(r"^(input_blocks|output_blocks)_(\d+)_(\d+)$"), r"\1.\2.\3"),
    (re.compile(r"^middle_block_(\d+)$"), r"middle_block.\1"),
]


def _module_name(arch: str, name: str, top: bool) -> str:
    if arch == "adm":
        if top:
            if name in _ADM_TOP:
                return _ADM_TOP[name]
            for pat, rep in _ADM_PATTERNS:
                if pat.match(name):
                    return pat.sub(rep, name)
            return name
        return _ADM_SUB.get(name, name)
    if top:
        for pat, rep in _DDPM_PATTERNS:
            if pat.match(name):
                return pat.sub(rep, name)
    return name


def torch_name(arch: str, path: tuple[str, ...]) -> str:
    """The torch state-dict key of the Flax leaf at ``path`` (e.g. ('final_conv', 'kernel'))."""
    mods = [_module_name(arch, p, i == 0) for i, p in enumerate(path[:-1])]
    return ".".join([*mods, _LEAF[path[-1]]])


def torch_shape(arch: str, path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape of a Flax leaf of ``shape`` at ``path``."""
    if path[-1] != "kernel":
        return tuple(shape)
    if len(shape) == 4:
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    i, o = shape
    parent = path[-2] if len(path) > 1 else ""
    if arch == "adm" and parent in _ADM_CONV1D:
        return (o, i, 1)
    if arch == "ddpm" and parent in _DDPM_CONV1X1:
        return (o, i, 1, 1)
    return (o, i)


def _paths(tree: dict, prefix: tuple = ()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def expected_keys(config: Config) -> dict[str, tuple[tuple[str, ...], tuple, tuple]]:
    """``{torch key: (flax path, torch shape, flax shape)}`` for every parameter."""
    arch = config.architecture
    return {torch_name(arch, p): (p, torch_shape(arch, p, tuple(leaf.shape)), tuple(leaf.shape))
            for p, leaf in _paths(abstract_params(config))}


def to_flax(array: np.ndarray, path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Convert one torch array (of the expected torch shape) to the Flax leaf of ``shape``."""
    a = np.asarray(array)
    if path[-1] == "kernel":
        a = a.transpose(2, 3, 1, 0) if len(shape) == 4 else a.reshape(a.shape[0], a.shape[1]).T
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.shape != tuple(shape):
        raise ValueError(f"internal: {'/'.join(path)} converted to {a.shape}, expected {shape}")
    return a


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value
