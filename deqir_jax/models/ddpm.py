"""DDPM UNet of ermongroup/ddim (``models/diffusion.py`` ``Model``) in flax.nnx, NHWC.

Semantics reproduced exactly (Ho et al. 2020 architecture, as ported to PyTorch by DDIM):

* timestep embedding ``[sin, cos]`` with ``f_i = exp(-i log(10000) / (half - 1))``, then
  Linear-SiLU-Linear to ``4 * ch`` (the SiLU before ``temb_proj`` is inside each ResnetBlock);
* ``GroupNorm(32 groups, eps=1e-6)``;
* ResnetBlock: ``GN-SiLU-conv3x3``, ``+ temb_proj(SiLU(temb))``, ``GN-SiLU-(dropout)-conv3x3``,
  a 1x1 ``nin_shortcut`` when channels change;
* AttnBlock: single head, separate 1x1 q/k/v/proj_out convs, logits scaled by ``C^-1/2``;
* Downsample conv: pad right/bottom by one (``(0, 1)``), then 3x3 stride 2 with no padding;
  without ``resamp_with_conv`` 2x2 average pooling; Upsample: nearest x2 (+ 3x3 conv);
* decoder inputs are ``concat([h, skip], channels)``.

Parameter tree names mirror the torch ones with dots replaced by underscores at the module
level: ``temb_dense_{0,1}``, ``conv_in``, ``down_{l}_block_{b}``, ``down_{l}_attn_{b}``,
``down_{l}_downsample``, ``mid_block_1``, ``mid_attn_1``, ``mid_block_2``, ``up_{l}_block_{b}``,
``up_{l}_attn_{b}``, ``up_{l}_upsample``, ``norm_out``, ``conv_out``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .configs import DDPMConfig
from .layers import (
    Conv2d,
    Dense,
    DType,
    GroupNorm,
    KeyGen,
    avg_pool2,
    compute_dtype,
    ddpm_timestep_embedding,
    dot_product_attention,
    silu,
    upsample_nearest2,
)

GN_EPS = 1e-6


class ResnetBlock(nnx.Module):
    """DDPM residual block with additive timestep conditioning."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *,
                 dtype: DType | None, keys: KeyGen):
        kw = dict(dtype=dtype, keys=keys)
        self.norm1 = GroupNorm(in_channels, eps=GN_EPS, **kw)
        self.conv1 = Conv2d(in_channels, out_channels, 3, **kw)
        self.temb_proj = Dense(temb_channels, out_channels, **kw)
        self.norm2 = GroupNorm(out_channels, eps=GN_EPS, **kw)
        self.conv2 = Conv2d(out_channels, out_channels, 3, **kw)
        self.nin_shortcut = (Conv2d(in_channels, out_channels, 1, **kw)
                             if in_channels != out_channels else None)

    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        h = self.conv1(silu(self.norm1(x)))
        h = h + self.temb_proj(silu(temb)).astype(h.dtype)[:, None, None, :]
        h = self.conv2(silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nnx.Module):
    """Single-head spatial self-attention with 1x1 q, k, v and output projections."""

    def __init__(self, channels: int, *, dtype: DType | None, keys: KeyGen):
        kw = dict(dtype=dtype, keys=keys)
        self.norm = GroupNorm(channels, eps=GN_EPS, **kw)
        self.q = Dense(channels, channels, **kw)
        self.k = Dense(channels, channels, **kw)
        self.v = Dense(channels, channels, **kw)
        self.proj_out = Dense(channels, channels, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        h = self.norm(x)
        q, k, v = (f(h).reshape(b, hh * ww, 1, c) for f in (self.q, self.k, self.v))
        a = dot_product_attention(q, k, v, qk_scale=float(c) ** -0.5, scale_both=False)
        return x + self.proj_out(a.reshape(b, hh, ww, c))


class Downsample(nnx.Module):
    """Asymmetric (0, 1)-padded 3x3 stride-2 conv (``conv``), or 2x2 average pooling."""

    def __init__(self, channels: int, with_conv: bool, *, dtype: DType | None, keys: KeyGen):
        self.conv = (Conv2d(channels, channels, 3, stride=2, padding=((0, 1), (0, 1)),
                            dtype=dtype, keys=keys) if with_conv else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        return avg_pool2(x) if self.conv is None else self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2, then an optional 3x3 conv (``conv``)."""

    def __init__(self, channels: int, with_conv: bool, *, dtype: DType | None, keys: KeyGen):
        self.conv = Conv2d(channels, channels, 3, dtype=dtype, keys=keys) if with_conv else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = upsample_nearest2(x)
        return x if self.conv is None else self.conv(x)


class DDPMUNet(nnx.Module):
    """The full DDPM UNet; call ``(x NHWC, t (B,)) -> (B, H, W, out_ch)``."""

    def __init__(self, config: DDPMConfig, *, dtype: DType | None = None, keys: KeyGen):
        cfg = config
        self.config = cfg
        self.dtype = dtype
        ch, temb_ch = cfg.ch, 4 * cfg.ch
        n_levels = len(cfg.ch_mult)
        attn_ds = set(cfg.attention_ds)
        kw = dict(dtype=dtype, keys=keys)
        self.temb_dense_0 = Dense(ch, temb_ch, keys=keys)
        self.temb_dense_1 = Dense(temb_ch, temb_ch, keys=keys)
        self.conv_in = Conv2d(cfg.in_channels, ch, 3, **kw)
        in_ch_mult = (1, *cfg.ch_mult)
        block_in, ds = ch, 1
        self.attn_levels = tuple(2 ** lvl in attn_ds for lvl in range(n_levels))
        for lvl in range(n_levels):
            block_in = ch * in_ch_mult[lvl]
            block_out = ch * cfg.ch_mult[lvl]
            for b in range(cfg.num_res_blocks):
                setattr(self, f"down_{lvl}_block_{b}",
                        ResnetBlock(block_in, block_out, temb_ch, **kw))
                block_in = block_out
                if ds in attn_ds:
                    setattr(self, f"down_{lvl}_attn_{b}", AttnBlock(block_in, **kw))
            if lvl != n_levels - 1:
                setattr(self, f"down_{lvl}_downsample",
                        Downsample(block_in, cfg.resamp_with_conv, **kw))
                ds *= 2
        self.mid_block_1 = ResnetBlock(block_in, block_in, temb_ch, **kw)
        self.mid_attn_1 = AttnBlock(block_in, **kw)
        self.mid_block_2 = ResnetBlock(block_in, block_in, temb_ch, **kw)
        for lvl in reversed(range(n_levels)):
            block_out = ch * cfg.ch_mult[lvl]
            skip_in = ch * cfg.ch_mult[lvl]
            for b in range(cfg.num_res_blocks + 1):
                if b == cfg.num_res_blocks:
                    skip_in = ch * in_ch_mult[lvl]
                setattr(self, f"up_{lvl}_block_{b}",
                        ResnetBlock(block_in + skip_in, block_out, temb_ch, **kw))
                block_in = block_out
                if ds in attn_ds:
                    setattr(self, f"up_{lvl}_attn_{b}", AttnBlock(block_in, **kw))
            if lvl != 0:
                setattr(self, f"up_{lvl}_upsample", Upsample(block_in, cfg.resamp_with_conv, **kw))
                ds //= 2
        self.norm_out = GroupNorm(block_in, eps=GN_EPS, keys=keys)
        self.conv_out = Conv2d(block_in, cfg.out_ch, 3, keys=keys)

    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None) -> jax.Array:
        del y  # unconditional
        cfg = self.config
        n_levels = len(cfg.ch_mult)
        ref = compute_dtype(None, x, self.temb_dense_0.kernel[...])
        temb = self.temb_dense_0(ddpm_timestep_embedding(t, cfg.ch, ref))
        temb = self.temb_dense_1(silu(temb))
        hs = [self.conv_in(x.astype(compute_dtype(self.dtype, x, self.conv_in.kernel[...])))]
        for lvl in range(n_levels):
            for b in range(cfg.num_res_blocks):
                h = getattr(self, f"down_{lvl}_block_{b}")(hs[-1], temb)
                if self.attn_levels[lvl]:
                    h = getattr(self, f"down_{lvl}_attn_{b}")(h)
                hs.append(h)
            if lvl != n_levels - 1:
                hs.append(getattr(self, f"down_{lvl}_downsample")(hs[-1]))
        h = self.mid_block_2(self.mid_attn_1(self.mid_block_1(hs[-1], temb)), temb)
        for lvl in reversed(range(n_levels)):
            for b in range(cfg.num_res_blocks + 1):
                h = getattr(self, f"up_{lvl}_block_{b}")(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb)
                if self.attn_levels[lvl]:
                    h = getattr(self, f"up_{lvl}_attn_{b}")(h)
            if lvl != 0:
                h = getattr(self, f"up_{lvl}_upsample")(h)
        h = h.astype(ref)
        return self.conv_out(silu(self.norm_out(h)))
