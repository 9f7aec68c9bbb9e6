"""ADM UNet of guided-diffusion (``guided_diffusion/unet.py`` ``UNetModel``) in flax.nnx, NHWC.

Semantics reproduced exactly (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs"):

* timestep embedding ``[cos, sin]`` with ``f_i = 10000^(-i/half)``, then Linear-SiLU-Linear to
  ``4 * model_channels``; class-conditional models add ``label_emb[y]``;
* ``GroupNorm(32 groups, eps=1e-5)`` with float32 statistics (``GroupNorm32``);
* ResBlock: ``in = GN-SiLU-[up/down]-conv3x3``, emb projection, then either
  ``GN(h) * (1 + scale) + shift`` (``use_scale_shift_norm``) or ``GN(h + emb)``, SiLU, conv3x3,
  plus a 1x1 skip conv when the channel count changes; ``resblock_updown`` blocks resample
  both ``h`` (after GN-SiLU) and ``x`` with nearest-upsampling / 2x2 average pooling;
* Downsample conv: 3x3, stride 2, symmetric padding (1, 1); Upsample: nearest x2 then 3x3 conv;
* attention: GN, qkv 1x1 conv, heads = ``num_heads`` or ``C // num_head_channels``; the legacy
  order splits heads before q/k/v (channel ``o = (head*3 + {q,k,v}) * ch + c``), the new order
  splits q/k/v first (``o = ({q,k,v} * heads + head) * ch + c``); q and k are each scaled by
  ``ch^-1/4``; softmax in float32; zero-init-able ``proj_out`` and a residual;
* decoder inputs are ``concat([h, skip], channels)``, in that order.

Mixed precision like the official fp16 mode: the time embedding and the output head run at
parameter precision, the encoder/middle/decoder ("torso") in ``dtype``.

Parameter tree names (used by ``weights_convert``): ``time_embed_0``, ``time_embed_1``,
``label_emb``, ``input_blocks_{i}_{j}``, ``middle_block_{j}``, ``output_blocks_{i}_{j}`` (i, j as
in the torch ``ModuleList``/``TimestepEmbedSequential`` indices), ``final_norm``,
``final_conv``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from .configs import ADMConfig
from .layers import (
    Conv2d,
    Dense,
    DType,
    Embed,
    GroupNorm,
    KeyGen,
    adm_timestep_embedding,
    avg_pool2,
    compute_dtype,
    dot_product_attention,
    silu,
    upsample_nearest2,
)

GN_EPS = 1e-5


class ResBlock(nnx.Module):
    """ADM residual block (optionally the BigGAN-style up/down-sampling variant)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, *,
                 use_scale_shift_norm: bool, up: bool = False, down: bool = False,
                 dtype: DType | None, keys: KeyGen):
        kw = dict(dtype=dtype, keys=keys)
        self.use_scale_shift_norm = use_scale_shift_norm
        self.up, self.down = up, down
        self.in_norm = GroupNorm(channels, eps=GN_EPS, **kw)
        self.in_conv = Conv2d(channels, out_channels, 3, **kw)
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_linear = Dense(emb_channels, emb_out, **kw)
        self.out_norm = GroupNorm(out_channels, eps=GN_EPS, **kw)
        self.out_conv = Conv2d(out_channels, out_channels, 3, **kw)
        self.skip = Conv2d(channels, out_channels, 1, **kw) if out_channels != channels else None

    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        h = silu(self.in_norm(x))
        if self.up:
            h, x = upsample_nearest2(h), upsample_nearest2(x)
        elif self.down:
            h, x = avg_pool2(h), avg_pool2(x)
        h = self.in_conv(h)
        e = self.emb_linear(silu(emb)).astype(h.dtype)[:, None, None, :]
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(silu(h))
        skip = x if self.skip is None else self.skip(x)
        return skip + h


class AttentionBlock(nnx.Module):
    """Multi-head self-attention over all positions, with both qkv channel orders."""

    def __init__(self, channels: int, num_heads: int, *, new_order: bool,
                 dtype: DType | None, keys: KeyGen):
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.new_order = new_order
        self.norm = GroupNorm(channels, eps=GN_EPS, dtype=dtype, keys=keys)
        self.qkv = Dense(channels, 3 * channels, dtype=dtype, keys=keys)
        self.proj_out = Dense(channels, channels, dtype=dtype, keys=keys)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        heads, ch = self.num_heads, c // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(b, hh * ww, 3 * c)
        if self.new_order:
            qkv = qkv.reshape(b, hh * ww, 3, heads, ch)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            qkv = qkv.reshape(b, hh * ww, heads, 3, ch)
            q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
        a = dot_product_attention(q, k, v, qk_scale=1.0 / math.sqrt(math.sqrt(ch)),
                                  scale_both=True)
        return x + self.proj_out(a.reshape(b, hh, ww, c))


class Downsample(nnx.Module):
    """Stride-2 3x3 conv with symmetric padding (``op``), or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, *, dtype: DType | None, keys: KeyGen):
        self.op = (Conv2d(channels, channels, 3, stride=2, padding=((1, 1), (1, 1)),
                          dtype=dtype, keys=keys) if use_conv else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        return avg_pool2(x) if self.op is None else self.op(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2, then an optional 3x3 conv (``conv``)."""

    def __init__(self, channels: int, use_conv: bool, *, dtype: DType | None, keys: KeyGen):
        self.conv = Conv2d(channels, channels, 3, dtype=dtype, keys=keys) if use_conv else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = upsample_nearest2(x)
        return x if self.conv is None else self.conv(x)


def _heads(cfg: ADMConfig, channels: int, num_heads: int) -> int:
    return num_heads if cfg.num_head_channels == -1 else channels // cfg.num_head_channels


class ADMUNet(nnx.Module):
    """The full ADM UNet; call ``(x NHWC, t (B,), y (B,) | None) -> (B, H, W, out_channels)``."""

    def __init__(self, config: ADMConfig, *, dtype: DType | None = None, keys: KeyGen):
        cfg = config
        self.config = cfg
        self.dtype = dtype
        mc, emb_dim = cfg.model_channels, 4 * cfg.model_channels
        attn_ds = set(cfg.attention_ds)
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        kw = dict(dtype=dtype, keys=keys)
        self.time_embed_0 = Dense(mc, emb_dim, keys=keys)
        self.time_embed_1 = Dense(emb_dim, emb_dim, keys=keys)
        self.label_emb = Embed(cfg.num_classes, emb_dim, keys=keys) if cfg.num_classes else None

        def res(cin, cout, **extra):
            return ResBlock(cin, emb_dim, cout, use_scale_shift_norm=cfg.use_scale_shift_norm,
                            **extra, **kw)

        def attn(c, n_heads):
            return AttentionBlock(c, _heads(cfg, c, n_heads),
                                  new_order=cfg.use_new_attention_order, **kw)

        ch = input_ch = int(cfg.channel_mult[0] * mc)
        inputs: list[list[nnx.Module]] = [[Conv2d(cfg.in_channels, ch, 3, **kw)]]
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attn_ds:
                    layers.append(attn(ch, cfg.num_heads))
                inputs.append(layers)
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                inputs.append([res(ch, ch, down=True) if cfg.resblock_updown
                               else Downsample(ch, cfg.conv_resample, **kw)])
                skip_chans.append(ch)
                ds *= 2
        middle = [res(ch, ch), attn(ch, cfg.num_heads), res(ch, ch)]
        outputs: list[list[nnx.Module]] = []
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in attn_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown
                                  else Upsample(ch, cfg.conv_resample, **kw))
                    ds //= 2
                outputs.append(layers)
        self.final_norm = GroupNorm(ch, eps=GN_EPS, keys=keys)
        self.final_conv = Conv2d(input_ch, cfg.out_channels, 3, keys=keys)

        self.input_names = self._register("input_blocks", inputs)
        self.middle_names = tuple(self._set(f"middle_block_{j}", m) for j, m in enumerate(middle))
        self.output_names = self._register("output_blocks", outputs)

    def _set(self, name: str, layer: nnx.Module) -> str:
        setattr(self, name, layer)
        return name

    def _register(self, prefix: str, blocks: list[list[nnx.Module]]) -> tuple:
        return tuple(tuple(self._set(f"{prefix}_{i}_{j}", layer) for j, layer in enumerate(ls))
                     for i, ls in enumerate(blocks))

    def _run_block(self, names: tuple, h: jax.Array, emb: jax.Array) -> jax.Array:
        for name in names:
            layer = getattr(self, name)
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None) -> jax.Array:
        ref = compute_dtype(None, x, self.time_embed_0.kernel[...])
        emb = self.time_embed_0(adm_timestep_embedding(t, self.config.model_channels, ref))
        emb = self.time_embed_1(silu(emb))
        if self.label_emb is not None:
            emb = emb + self.label_emb(y).astype(emb.dtype)
        h = x.astype(compute_dtype(self.dtype, x, self.input_blocks_0_0.kernel[...]))
        hs = []
        for names in self.input_names:
            h = self._run_block(names, h, emb)
            hs.append(h)
        h = self._run_block(self.middle_names, h, emb)
        for names in self.output_names:
            h = self._run_block(names, jnp.concatenate([h, hs.pop()], axis=-1), emb)
        h = h.astype(ref)
        return self.final_conv(silu(self.final_norm(h)))
