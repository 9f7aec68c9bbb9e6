"""The :class:`Model` bundle, the pure ``eps_fn`` and random initialisation.

A network is built once as a flax.nnx module *on abstract values* and split into its static
graph definition and a params pytree (a plain nested ``dict`` of arrays, ``kernel``/``bias``/
``scale``/``embedding`` leaves). ``eps_fn(params, x, t, *, y=None)`` merges the two inside the
call, so it is a pure function of its arguments: it works under ``jax.jit``, ``jax.vmap``,
``jax.grad`` (w.r.t. params and x) and ``jax.checkpoint``, and the solver never sees a module.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..schedules import NUM_TRAIN_STEPS, alphas_cumprod, linear_betas
from .adm import ADMUNet
from .configs import ADMConfig, Config, DDPMConfig
from .ddpm import DDPMUNet
from .layers import KeyGen

_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_name(dtype: Any) -> str:
    """Canonical name of a compute dtype: ``"float32"`` (default/None), ``"bfloat16"``, ...

    ``"float32"`` means *promotion*: float32 with float32 params and inputs, float64 when params
    or inputs are float64 (x64 mode). ValueError for unsupported dtypes.
    """
    if dtype is None:
        return "float32"
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return name


def _module_class(config: Config):
    if isinstance(config, ADMConfig):
        return ADMUNet
    if isinstance(config, DDPMConfig):
        return DDPMUNet
    raise TypeError(f"config must be an ADMConfig or DDPMConfig, got {type(config).__name__}")


def _build(config: Config, dtype: str, key: jax.Array) -> nnx.Module:
    return _module_class(config)(config, dtype=_DTYPES[dtype], keys=KeyGen(key))


@functools.lru_cache(maxsize=32)
def _graph(config: Config, dtype: str):
    """(graphdef, abstract params) of the network; built once per (config, dtype)."""
    abstract = nnx.eval_shape(lambda: _build(config, dtype, jax.random.key(0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                          nnx.to_pure_dict(state))
    return graphdef, params


def abstract_params(config: Config) -> dict:
    """The params pytree of ``config`` as ``jax.ShapeDtypeStruct`` leaves (no memory used)."""
    return jax.tree.map(lambda s: s, _graph(config, "float32")[1])  # a fresh (mutable) copy


def count_params(config: Config) -> int:
    """Number of scalar parameters of the network, computed with ``eval_shape`` (no weights)."""
    return int(sum(math.prod(s.shape) for s in jax.tree.leaves(abstract_params(config))))


def _check_inputs(config: Config, x: jax.Array, t: jax.Array, y: Any) -> None:
    """ValueError naming the argument when shapes/dtypes do not fit ``config``."""
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC (B, H, W, C) or (H, W, C), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a float array, got dtype {x.dtype}")
    b, h, w, c = x.shape
    if c != config.in_channels:
        raise ValueError(
            f"x has {c} channels (last axis, NHWC), the model expects {config.in_channels}; "
            f"shape {x.shape}"
        )
    m = config.size_multiple
    if h % m or w % m or h == 0 or w == 0:
        raise ValueError(
            f"x height and width must be positive multiples of {m} "
            f"(2 ** (levels - 1)), got {h}x{w}"
        )
    if t.ndim != 1 or t.shape[0] != b:
        raise ValueError(f"t must have shape ({b},) (one timestep per row) or (), got {t.shape}")
    conditional = getattr(config, "num_classes", None) is not None
    if conditional and y is None:
        raise ValueError("this model is class-conditional: pass y=labels of shape (B,)")
    if not conditional and y is not None:
        raise ValueError("y was given but this model is not class-conditional")
    if y is not None and (jnp.ndim(y) != 1 or jnp.shape(y)[0] != b):
        raise ValueError(f"y must have shape ({b},), got {jnp.shape(y)}")


def make_eps_fn(config: Config, dtype: Any = "float32") -> Callable:
    """The pure network function ``eps_fn(params, x, t, *, y=None) -> (B, H, W, out_channels)``.

    Args (of the returned function):
      params: the params pytree (nested dict of arrays, as in ``Model.params``).
      x: (B, H, W, in_channels) float images in [-1, 1] (an unbatched (H, W, C) also works);
        H and W multiples of ``config.size_multiple``.
      t: (B,) integer (or float) raw timesteps 0..999, or a scalar broadcast to every row.
      y: (B,) integer class labels in [0, num_classes), required iff ``config.num_classes``
        is set (out-of-range labels cannot be checked under jit: they give NaN outputs).
    Returns:
      the full network output (ε in the first ``in_channels`` channels, then the learned
      variance channels when ``config.learn_sigma``), in the promoted dtype of x and params.
      A ``prediction="v"`` network's v is converted to ε here, so every sampler sees ε.
    """
    return _make_eps_fn(config, dtype_name(dtype))


def _v_to_eps(out: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """``ε = √ā_t v + √(1−ā_t) x_t`` on the first C channels (linear DDPM schedule, integer
    t; a float t is rounded)."""
    abar = alphas_cumprod(linear_betas(NUM_TRAIN_STEPS))
    idx = jnp.clip(jnp.round(t).astype(jnp.int32), 0, NUM_TRAIN_STEPS - 1)
    a = jnp.asarray(abar, out.dtype)[idx][:, None, None, None]
    c = x.shape[-1]
    eps = jnp.sqrt(a) * out[..., :c] + jnp.sqrt(1 - a) * x.astype(out.dtype)
    return jnp.concatenate([eps, out[..., c:]], axis=-1) if out.shape[-1] > c else eps


@functools.lru_cache(maxsize=32)
def _make_eps_fn(config: Config, name: str) -> Callable:
    graphdef, _ = _graph(config, name)

    def eps_fn(params: Any, x: jax.Array, t: jax.Array, *, y: jax.Array | None = None):
        x = jnp.asarray(x)
        unbatched = x.ndim == 3
        if unbatched:
            x = x[None]
            y = None if y is None else jnp.reshape(jnp.asarray(y), (1,))
        t = jnp.asarray(t)
        if t.ndim == 0 and x.ndim == 4:
            t = jnp.broadcast_to(t, (x.shape[0],))
        if y is not None:
            y = jnp.asarray(y)
        _check_inputs(config, x, t, y)
        out = nnx.merge(graphdef, params)(x, t, y)
        if getattr(config, "prediction", "eps") == "v":
            out = _v_to_eps(out, x, t)
        return out[0] if unbatched else out

    eps_fn.__name__ = f"{config.architecture}_eps_fn"
    return eps_fn


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A network: its config, its params pytree and the pure ``eps_fn`` that applies them.

    ``model.eps_fn(model.params, x, t)`` is the full output (B, H, W, out_channels);
    ``model.eps(params, x, t)`` only the ε channels. ``dtype`` is the compute dtype name
    (``"float32"`` = promotion, or ``"bfloat16"``); params are float32 either way.
    ``sampler``: the model's recommended sampler settings (a :class:`deqir_jax.Sampler`,
    stored with its checkpoint), used by ``dq.restore`` and the CLI unless overridden; None:
    the library defaults.

    A pytree: ``params`` is its only child; the rest is static, so a model can be passed
    into ``jax.jit``/``jax.grad`` like any other argument.
    """

    config: Config
    params: Any
    eps_fn: Callable
    dtype: str = "float32"
    sampler: Any = None

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    @property
    def learn_sigma(self) -> bool:
        return self.config.learn_sigma

    @property
    def architecture(self) -> str:
        return self.config.architecture

    def eps(self, params: Any, x: jax.Array, t: jax.Array, **kw: Any) -> jax.Array:
        """The ε prediction: the first ``in_channels`` output channels of ``eps_fn``."""
        return self.eps_fn(params, x, t, **kw)[..., : self.in_channels]

    def __call__(self, x: jax.Array, t: jax.Array, **kw: Any) -> jax.Array:
        """``eps_fn(self.params, x, t, **kw)`` (convenience for interactive use)."""
        return self.eps_fn(self.params, x, t, **kw)

    def replace(self, **changes: Any) -> Model:
        """A copy with some fields replaced (e.g. ``params=...``)."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_pytree_node(
    Model,
    lambda m: ((m.params,), (m.config, m.eps_fn, m.dtype, m.sampler)),
    lambda aux, children: Model(aux[0], children[0], *aux[1:]),
)


def from_params(config: Config, params: Any, dtype: Any = "float32") -> Model:
    """Wrap an existing params pytree (checked against ``config``'s abstract tree)."""
    check_params(config, params)
    name = dtype_name(dtype)
    return Model(config=config, params=params, eps_fn=make_eps_fn(config, name), dtype=name)


def _random_leaf(rng: np.random.Generator, name: str, shape: tuple, fan_in: int) -> np.ndarray:
    """PyTorch-default-like init: U(+-1/sqrt(fan_in)) for kernels/biases, N(0,1) embeddings."""
    if name == "scale":
        return np.ones(shape, np.float32)
    if name == "embedding":
        return rng.standard_normal(shape, dtype=np.float32)
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _seed(key: jax.Array | int | None) -> int:
    if key is None:
        return 0
    if isinstance(key, int | np.integer):
        return int(key)
    data = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                      else key).ravel()
    return int.from_bytes(data.astype(np.uint32).tobytes(), "little")


def create(config: Config, key: jax.Array | int | None = None, dtype: Any = jnp.float32) -> Model:
    """A model with random float32 params (no zero-initialised layers).

    Kernels and biases are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default for
    Conv/Linear), GroupNorm scales 1 and label embeddings N(0, 1). The draws use numpy seeded
    from ``key`` (deterministic; much faster than tracing a flax init of a large UNet on CPU);
    the tree is the flax.nnx module's param tree (``abstract_params(config)``).

    Args:
      config: an :class:`ADMConfig` or :class:`DDPMConfig` (e.g. ``PRESETS[name]``).
      key: a PRNG key, an int seed, or None (seed 0).
      dtype: compute dtype, ``jnp.float32`` (promotion; default) or ``jnp.bfloat16``.
    """
    _module_class(config)
    name = dtype_name(dtype)
    abstract = abstract_params(config)
    seed = _seed(key)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    fan_ins = {path[:-1]: math.prod(leaf.shape[:-1]) for path, leaf in flat
               if path[-1].key == "kernel"}
    leaves = []
    for i, (path, leaf) in enumerate(flat):
        rng = np.random.default_rng([seed, i])
        fan_in = fan_ins.get(path[:-1], leaf.shape[-1])
        leaves.append(jnp.asarray(_random_leaf(rng, path[-1].key, tuple(leaf.shape), fan_in)))
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    return Model(config=config, params=params, eps_fn=make_eps_fn(config, name), dtype=name)


def params_mismatch(expected: Any, actual: Any) -> list[str]:
    """Human-readable lines for missing, unexpected and wrongly shaped leaves (empty if equal)."""

    def flat(tree):
        leaves = jax.tree_util.tree_flatten_with_path(
            tree, is_leaf=lambda v: hasattr(v, "shape") and hasattr(v, "dtype"))[0]
        return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path):
                tuple(v.shape) for path, v in leaves}

    e, a = flat(expected), flat(actual)
    lines = [f"missing: {k} {e[k]}" for k in sorted(set(e) - set(a))]
    lines += [f"unexpected: {k} {a[k]}" for k in sorted(set(a) - set(e))]
    lines += [f"shape mismatch: {k} expected {e[k]}, got {a[k]}"
              for k in sorted(set(e) & set(a)) if e[k] != a[k]]
    return lines


def check_params(config: Config, params: Any) -> None:
    """ValueError listing every missing/unexpected/mis-shaped leaf of ``params``."""
    problems = params_mismatch(abstract_params(config), params)
    if problems:
        raise ValueError(
            f"params do not match the {config.architecture} config "
            f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )
