"""Primitive NHWC layers shared by the ADM and DDPM UNets (flax.nnx).

All layers keep their parameters in ``param_dtype`` (float32) and compute in ``dtype``:

* ``dtype=None``: promotion, i.e. the result type of the input and the parameters. With float32
  params and inputs this is float32; with float64 params/inputs (``jax_enable_x64``) the whole
  layer runs in float64, which gradient tests elsewhere rely on.
* ``dtype=jnp.bfloat16`` (or any float dtype): inputs and parameters are cast to it.

GroupNorm statistics and softmax always run in at least float32, like the ``GroupNorm32`` /
``softmax(weight.float())`` of guided-diffusion.

Parameter names follow Flax conventions: ``kernel`` (convs are HWIO, dense is (in, out)),
``bias``, ``scale`` (GroupNorm weight) and ``embedding``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

DType = Any

# PyTorch's default Conv/Linear init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)); variance_scaling with
# scale 1/3 and a uniform distribution is the same distribution. We never zero-initialise (ADM
# does for some layers): random models from `create` must have non-trivial outputs.
_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
_normal_init = nnx.initializers.normal(stddev=1.0)
_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


class KeyGen:
    """Deterministic stream of PRNG keys ``fold_in(key, 1), fold_in(key, 2), ...`` for init.

    (A plain Python counter: much cheaper to trace than ``nnx.Rngs`` when the network is
    built under ``eval_shape``.)
    """

    def __init__(self, key: jax.Array):
        self.key, self.count = key, 0

    def __call__(self) -> jax.Array:
        self.count += 1
        return jax.random.fold_in(self.key, self.count)


def compute_dtype(dtype: DType | None, *arrays: jax.Array) -> DType:
    """The dtype a layer computes in: ``dtype`` if given, else the promotion of ``arrays``."""
    if dtype is not None:
        return jnp.dtype(dtype)
    return jnp.result_type(*arrays)


def stats_dtype(dtype: DType) -> DType:
    """At least float32 (float64 stays float64): used for GroupNorm statistics and softmax."""
    return jnp.promote_types(dtype, jnp.float32)


def _lax_conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(x, kernel, window_strides=(stride, stride),
                                        padding=padding, dimension_numbers=_CONV_DIMS)


def _shifted_products(x, kernel, stride, padding):
    """The same convolution as a sum of ``kh·kw`` strided slices times a channel matmul: linear
    in each argument, and its transpose is pads and dots."""
    kh, kw = kernel.shape[:2]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    out = None
    for a in range(kh):
        for b in range(kw):
            patch = jax.lax.slice(
                xp, (0, a, b, 0),
                (xp.shape[0], a + (ho - 1) * stride + 1, b + (wo - 1) * stride + 1, xp.shape[3]),
                (1, stride, stride, 1))
            term = jnp.einsum("nhwi,io->nhwo", patch, kernel[a, b])
            out = term if out is None else out + term
    return out


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_cpu(x, kernel, stride, padding):
    return _lax_conv(x, kernel, stride, padding)


@_conv_cpu.defjvp
def _conv_cpu_jvp(stride, padding, primals, tangents):
    x, kernel = primals
    dx, dk = tangents
    out = _lax_conv(x, kernel, stride, padding)
    return out, (_shifted_products(dx, kernel, stride, padding)
                 + _shifted_products(x, dk, stride, padding))


def conv2d(x, kernel, stride: int = 1, padding=((1, 1), (1, 1))):
    """NHWC × HWIO convolution with explicit padding ``((top, bottom), (left, right))``.

    The value is always ``lax.conv_general_dilated``. On the CPU backend its derivative is
    written as shifted slices times channel matmuls: XLA's CPU convolution transposes (the
    input and kernel gradients) fall off the fast path inside loops (a ``lax.scan`` over
    timesteps, as in reverse mode through the sequential sampler or the RowScan adjoint);
    pads and dots do not (``experiments/results/bench_conv_grad.md``: 8 VJPs of a 64-channel
    convolution in a scan cost 79× the 8 convolutions with lax's derivative, 3.2× with this
    one). Elsewhere the derivative is JAX's own. Forward and reverse mode both work, to any
    order.
    """
    padding = tuple(tuple(int(v) for v in p) for p in padding)
    if jax.default_backend() == "cpu":
        return _conv_cpu(x, kernel, int(stride), padding)
    return _lax_conv(x, kernel, stride, padding)


class Conv2d(nnx.Module):
    """2-D convolution, NHWC input, HWIO kernel, explicit ``((top, bottom), (left, right))`` pad."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: tuple[tuple[int, int], tuple[int, int]] | None = None,
        dtype: DType | None = None,
        param_dtype: DType = jnp.float32,
        keys: KeyGen,
    ):
        if padding is None:
            p = kernel_size // 2
            padding = ((p, p), (p, p))
        self.stride = stride
        self.padding = tuple(tuple(p) for p in padding)
        self.dtype = dtype
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(_kernel_init(keys(), shape, param_dtype))
        bound = 1.0 / math.sqrt(in_features * kernel_size * kernel_size)
        self.bias = nnx.Param(
            jax.random.uniform(keys(), (out_features,), param_dtype, -bound, bound)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self.kernel[...], self.bias[...]
        dt = compute_dtype(self.dtype, x, kernel)
        y = conv2d(x.astype(dt), kernel.astype(dt), self.stride, self.padding)
        return y + bias.astype(dt)


class Dense(nnx.Module):
    """Affine map on the last axis, kernel (in, out) (a torch Linear or 1x1 conv transposed)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        dtype: DType | None = None,
        param_dtype: DType = jnp.float32,
        keys: KeyGen,
    ):
        self.dtype = dtype
        self.kernel = nnx.Param(_kernel_init(keys(), (in_features, out_features), param_dtype))
        bound = 1.0 / math.sqrt(in_features)
        self.bias = nnx.Param(
            jax.random.uniform(keys(), (out_features,), param_dtype, -bound, bound)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self.kernel[...], self.bias[...]
        dt = compute_dtype(self.dtype, x, kernel)
        return jnp.matmul(x.astype(dt), kernel.astype(dt)) + bias.astype(dt)


class Embed(nnx.Module):
    """Lookup table ``embedding[y]`` (torch ``nn.Embedding``)."""

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        dtype: DType | None = None,
        param_dtype: DType = jnp.float32,
        keys: KeyGen,
    ):
        self.dtype = dtype
        self.embedding = nnx.Param(
            _normal_init(keys(), (num_embeddings, features), param_dtype)
        )

    def __call__(self, y: jax.Array) -> jax.Array:
        table = self.embedding[...]
        dt = compute_dtype(self.dtype, table)
        return jnp.take(table, y, axis=0).astype(dt)


class GroupNorm(nnx.Module):
    """GroupNorm over (H, W, C/G) with exact two-pass variance, statistics in >= float32.

    ``y = (x - mean) / sqrt(var + eps) * scale + bias`` with ``var = mean((x - mean)^2)``,
    biased (torch semantics). The affine part also runs in the statistics dtype, as in
    guided-diffusion's ``GroupNorm32`` (which upcasts to float32); the result is cast to the
    compute dtype.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        num_groups: int = 32,
        eps: float = 1e-5,
        dtype: DType | None = None,
        param_dtype: DType = jnp.float32,
        keys: KeyGen,
    ):
        if num_channels % num_groups:
            raise ValueError(
                f"GroupNorm: num_channels={num_channels} is not divisible by "
                f"num_groups={num_groups}"
            )
        del keys
        self.num_groups = num_groups
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((num_channels,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_channels,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        scale, bias = self.scale[...], self.bias[...]
        out_dt = compute_dtype(self.dtype, x, scale)
        st = stats_dtype(jnp.result_type(x, scale))
        b, h, w, c = x.shape
        g = self.num_groups
        xg = x.astype(st).reshape(b, h, w, g, c // g)
        mean = jnp.mean(xg, axis=(1, 2, 4), keepdims=True)
        centered = xg - mean
        var = jnp.mean(jnp.square(centered), axis=(1, 2, 4), keepdims=True)
        y = (centered * jax.lax.rsqrt(var + jnp.asarray(self.eps, st))).reshape(b, h, w, c)
        y = y * scale.astype(st) + bias.astype(st)
        return y.astype(out_dt)


def silu(x: jax.Array) -> jax.Array:
    """``x * sigmoid(x)`` (swish), in the dtype of ``x``."""
    return x * jax.nn.sigmoid(x)


def _embedding_dtype(ref_dtype: DType) -> DType:
    return stats_dtype(ref_dtype)


def adm_timestep_embedding(t: jax.Array, dim: int, ref_dtype: DType = jnp.float32) -> jax.Array:
    """guided-diffusion ``timestep_embedding``: ``[cos(t f), sin(t f)]``, ``f_i = 10000^(-i/half)``.

    ``half = dim // 2``, i = 0..half-1; a zero column is appended for odd ``dim``. Computed in
    float32 (float64 when ``ref_dtype`` is float64). Returns (B, dim).
    """
    dt = _embedding_dtype(ref_dtype)
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=dt) / half)
    args = t.astype(dt)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def ddpm_timestep_embedding(t: jax.Array, dim: int, ref_dtype: DType = jnp.float32) -> jax.Array:
    """DDPM / ermongroup-ddim ``get_timestep_embedding``: ``[sin(t f), cos(t f)]``.

    ``f_i = exp(-i * log(10000) / (half - 1))`` with ``half = dim // 2`` (note the ``half - 1``
    divisor, unlike ADM); zero-padded for odd ``dim``. Returns (B, dim).
    """
    dt = _embedding_dtype(ref_dtype)
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=dt) * -(math.log(10000.0) / (half - 1)))
    args = t.astype(dt)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, qk_scale: float, scale_both: bool
) -> jax.Array:
    """Softmax attention over positions for (B, T, heads, ch) q, k, v -> (B, T, heads, ch).

    ``scale_both``: ADM multiplies q and k each by ``ch^-1/4`` (more stable in low precision);
    otherwise the logits are multiplied by ``qk_scale`` (DDPM: ``C^-1/2``). The softmax runs in
    at least float32 and its weights are cast back to the compute dtype.
    """
    dt = q.dtype
    if scale_both:
        s = jnp.asarray(qk_scale, dt)
        logits = jnp.einsum("bthc,bshc->bhts", q * s, k * s)
    else:
        logits = jnp.einsum("bthc,bshc->bhts", q, k) * jnp.asarray(qk_scale, dt)
    weights = jax.nn.softmax(logits.astype(stats_dtype(dt)), axis=-1).astype(dt)
    return jnp.einsum("bhts,bshc->bthc", weights, v)


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling, stride 2 (NHWC, even H and W)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample_nearest2(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling (torch ``interpolate(scale_factor=2, mode='nearest')``)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
