"""PyTorch references for the parity tests, and their own full-size key/shape checks.

* ADM: the upstream guided-diffusion ``UNetModel`` from PyPI ``guided-diffusion-sdk==1.0.0``
  (install with ``pip install --no-deps``; only ``guided_diffusion.unet`` is imported, which
  needs torch and numpy but not blobfile/mpi4py).
* DDPM: :class:`DDPMReference`, a small PyTorch re-implementation of ermongroup/ddim's
  ``models/diffusion.py`` ``Model`` (same module names, so the same state-dict keys).

Other test modules import this file (``import test_models_torchref``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import deqir_jax.models as M  # noqa: E402
from weights_convert.mapping import expected_keys  # noqa: E402


def import_upstream_unet():
    """``guided_diffusion.unet`` (skips the test with install instructions if absent)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp.custom_fwd deprecation
        return pytest.importorskip(
            "guided_diffusion.unet",
            reason="needs the upstream ADM code: pip install --no-deps guided-diffusion-sdk==1.0.0")


def adm_torch(cfg: M.ADMConfig):
    """The upstream ``UNetModel`` for ``cfg`` (attention given as downsample factors)."""
    unet = import_upstream_unet()
    return unet.UNetModel(
        image_size=cfg.image_size, in_channels=cfg.in_channels,
        model_channels=cfg.model_channels, out_channels=cfg.out_channels,
        num_res_blocks=cfg.num_res_blocks, attention_resolutions=cfg.attention_ds,
        dropout=cfg.dropout, channel_mult=cfg.channel_mult, conv_resample=cfg.conv_resample,
        num_classes=cfg.num_classes, num_heads=cfg.num_heads,
        num_head_channels=cfg.num_head_channels, num_heads_upsample=cfg.num_heads_upsample,
        use_scale_shift_norm=cfg.use_scale_shift_norm, resblock_updown=cfg.resblock_updown,
        use_new_attention_order=cfg.use_new_attention_order)


# ---------------------------------------------------------------- DDPM reference (ddim semantics)
def _timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm(c):
    return nn.GroupNorm(32, c, eps=1e-6)


def _swish(x):
    return x * torch.sigmoid(x)


class _Upsample(nn.Module):
    def __init__(self, c, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class _Downsample(nn.Module):
    def __init__(self, c, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, 2)


class _ResnetBlock(nn.Module):
    def __init__(self, cin, cout, temb):
        super().__init__()
        self.cin, self.cout = cin, cout
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.temb_proj = nn.Linear(temb, cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, temb):
        h = self.conv1(_swish(self.norm1(x)))
        h = h + self.temb_proj(_swish(temb))[:, :, None, None]
        h = self.conv2(_swish(self.norm2(h)))
        return (self.nin_shortcut(x) if self.cin != self.cout else x) + h


class _AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        w = torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * c ** -0.5
        w = torch.softmax(w, dim=2)
        out = torch.bmm(v.reshape(b, c, -1), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class DDPMReference(nn.Module):
    """ermongroup/ddim ``Model`` for a :class:`DDPMConfig` (NCHW, inference)."""

    def __init__(self, cfg: M.DDPMConfig):
        super().__init__()
        ch, mult, nrb = cfg.ch, tuple(cfg.ch_mult), cfg.num_res_blocks
        self.ch, self.nrb, self.nlev = ch, nrb, len(mult)
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, 4 * ch), nn.Linear(4 * ch, 4 * ch)])
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        res, in_mult = cfg.resolution, (1, *mult)
        self.down = nn.ModuleList()
        for lvl in range(self.nlev):
            d = nn.Module()
            d.block, d.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[lvl], ch * mult[lvl]
            for _ in range(nrb):
                d.block.append(_ResnetBlock(block_in, block_out, 4 * ch))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    d.attn.append(_AttnBlock(block_in))
            if lvl != self.nlev - 1:
                d.downsample = _Downsample(block_in, cfg.resamp_with_conv)
                res //= 2
            self.down.append(d)
        self.mid = nn.Module()
        self.mid.block_1 = _ResnetBlock(block_in, block_in, 4 * ch)
        self.mid.attn_1 = _AttnBlock(block_in)
        self.mid.block_2 = _ResnetBlock(block_in, block_in, 4 * ch)
        self.up = nn.ModuleList()
        for lvl in reversed(range(self.nlev)):
            u = nn.Module()
            u.block, u.attn = nn.ModuleList(), nn.ModuleList()
            block_out = skip_in = ch * mult[lvl]
            for b in range(nrb + 1):
                if b == nrb:
                    skip_in = ch * in_mult[lvl]
                u.block.append(_ResnetBlock(block_in + skip_in, block_out, 4 * ch))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    u.attn.append(_AttnBlock(block_in))
            if lvl != 0:
                u.upsample = _Upsample(block_in, cfg.resamp_with_conv)
                res *= 2
            self.up.insert(0, u)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, 3, 1, 1)

    def forward(self, x, t):
        temb = self.temb.dense[1](_swish(self.temb.dense[0](_timestep_embedding(t, self.ch))))
        hs = [self.conv_in(x)]
        for lvl in range(self.nlev):
            for b in range(self.nrb):
                h = self.down[lvl].block[b](hs[-1], temb)
                if len(self.down[lvl].attn):
                    h = self.down[lvl].attn[b](h)
                hs.append(h)
            if lvl != self.nlev - 1:
                hs.append(self.down[lvl].downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for lvl in reversed(range(self.nlev)):
            for b in range(self.nrb + 1):
                h = self.up[lvl].block[b](torch.cat([h, hs.pop()], dim=1), temb)
                if len(self.up[lvl].attn):
                    h = self.up[lvl].attn[b](h)
            if lvl != 0:
                h = self.up[lvl].upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


def torch_model(cfg):
    return adm_torch(cfg) if isinstance(cfg, M.ADMConfig) else DDPMReference(cfg)


# ---------------------------------------------------------------- helpers
# Tests only: XLA's backend optimisations roughly double the compile time of these tiny nets,
# which dominates the test time; turning them off does not change float32 results materially.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def fast_jit(fun, **kw):
    """``jax.jit`` with cheap compilation (see ``FAST_COMPILE``)."""
    import jax

    return jax.jit(fun, compiler_options=FAST_COMPILE, **kw)


def randomize_(model, seed: int = 0):
    """Re-draw EVERY tensor (ADM zero-inits output convs; a parity test on those is vacuous).

    Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), GroupNorm scales ~ 1 + N(0, 0.1^2),
    embeddings ~ N(0, 1): every layer contributes and activations stay O(1).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.ndim >= 2 and not name.endswith("label_emb.weight"):
                r = r / math.sqrt(math.prod(p.shape[1:]))
            elif p.ndim == 1 and "norm" in name and name.endswith("weight") or \
                    name.endswith(("in_layers.0.weight", "out_layers.0.weight", "out.0.weight")):
                r = 1.0 + 0.1 * r
            elif p.ndim == 1:
                r = 0.1 * r
            p.copy_(r.to(p.dtype))
    return model


def numpy_state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def torch_forward(model, x_nhwc: np.ndarray, t: np.ndarray, y=None) -> np.ndarray:
    """Run the torch model on NHWC numpy input; returns NHWC numpy output."""
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
        kw = {} if y is None else {"y": torch.from_numpy(np.asarray(y))}
        out = model(x, torch.from_numpy(np.asarray(t)), **kw)
    return out.numpy().transpose(0, 2, 3, 1)


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def meta_shapes(model_fn) -> dict[str, tuple]:
    """State-dict names and shapes of a torch model built on the meta device (no memory)."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = model_fn()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- full-size checks
@pytest.mark.parametrize("name,count", [("adm-imagenet256-uncond", 552_814_086),
                                        ("ddpm-celebahq256", 113_673_219)])
def test_full_size_param_count_and_every_torch_key(name, count):
    cfg = M.PRESETS[name]
    assert M.count_params(cfg) == count
    torch_shapes = meta_shapes(lambda: torch_model(cfg))
    assert sum(math.prod(s) for s in torch_shapes.values()) == count
    ours = {k: v[1] for k, v in expected_keys(cfg).items()}
    assert sorted(ours) == sorted(torch_shapes)
    assert ours == torch_shapes


@pytest.mark.parametrize("name", ["adm-imagenet256-cond", "adm-imagenet64", "adm-imagenet128",
                                  "adm-imagenet512", "ddpm-cifar10", "adm-tiny-golden"])
def test_other_presets_match_torch_keys(name):
    cfg = M.PRESETS[name]
    torch_shapes = meta_shapes(lambda: torch_model(cfg))
    assert {k: v[1] for k, v in expected_keys(cfg).items()} == torch_shapes
    assert M.count_params(cfg) == sum(math.prod(s) for s in torch_shapes.values())
