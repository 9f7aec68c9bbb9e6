"""deqir_jax.models: parity with PyTorch for every flag, JAX transforms, dtypes, checkpoints."""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deqir_jax.models as M

sys.path.insert(0, os.path.dirname(__file__))
from test_models_torchref import (  # noqa: E402
    fast_jit,
    numpy_state_dict,
    randomize_,
    rel_err,
    torch_forward,
    torch_model,
)

from weights_convert import params_from_state_dict  # noqa: E402

ADM = M.ADMConfig
DDPM = M.DDPMConfig
# Small configs covering every flag; inputs are 12x20 (non-square, odd sizes at the coarsest
# level) so the fully-convolutional paths and DDPM's (0, 1) padding are exercised.
CASES = {
    "adm-ss-updown-legacy-headch-sigma": ADM(
        image_size=32, model_channels=32, out_channels=6, num_res_blocks=1,
        attention_resolutions=(16,), channel_mult=(1, 2), num_heads=1, num_head_channels=16,
        use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=False),
    "adm-noss-convresample-new-numheads-eps": ADM(
        image_size=32, model_channels=32, out_channels=3, num_res_blocks=1,
        attention_resolutions=(16, 8), channel_mult=(1, 2, 2), num_heads=2,
        num_head_channels=-1, use_scale_shift_norm=False, resblock_updown=False,
        conv_resample=True, use_new_attention_order=True),
    "adm-classcond-poolresample-headsup": ADM(
        image_size=32, model_channels=32, out_channels=6, num_res_blocks=2,
        attention_resolutions=(32, 16), channel_mult=(1, 2), num_heads=2, num_head_channels=-1,
        num_heads_upsample=4, use_scale_shift_norm=True, resblock_updown=False,
        conv_resample=False, num_classes=7),
    "adm-halfmult-updown-noss-new-headch": ADM(
        image_size=64, model_channels=64, out_channels=6, num_res_blocks=1,
        attention_resolutions=(64, 32), channel_mult=(0.5, 1), num_head_channels=32,
        use_scale_shift_norm=False, resblock_updown=True, use_new_attention_order=True),
    "ddpm-convresample": DDPM(resolution=32, ch=32, out_ch=3, ch_mult=(1, 2, 2),
                              num_res_blocks=1, attn_resolutions=(16,), resamp_with_conv=True),
    "ddpm-poolresample-sigma": DDPM(resolution=32, ch=32, out_ch=6, ch_mult=(1, 2),
                                    num_res_blocks=2, attn_resolutions=(32, 16),
                                    resamp_with_conv=False),
}
TINY = CASES["adm-ss-updown-legacy-headch-sigma"]
# Smallest nets with a down/up level and attention, for the (compile-heavy) transform tests.
MICRO_ADM = ADM(image_size=8, model_channels=32, out_channels=6, num_res_blocks=1,
                attention_resolutions=(4,), channel_mult=(1, 1), num_head_channels=16,
                use_scale_shift_norm=True, resblock_updown=True, num_classes=4)
MICRO_DDPM = DDPM(resolution=8, ch=32, out_ch=3, ch_mult=(1, 1), num_res_blocks=1,
                  attn_resolutions=(4,), resamp_with_conv=True)


def _inputs(cfg, batch=2, hw=(12, 20), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (batch, *hw, cfg.in_channels)).astype(np.float32)
    t = np.array([3, 999, 500, 17][:batch], np.int64)
    n_cls = getattr(cfg, "num_classes", None)
    y = np.array([3, 5, 0, 6][:batch]) % n_cls if n_cls else None
    return x, t, y


def _torch_pair(cfg, seed=0):
    tm = randomize_(torch_model(cfg), seed)
    return tm, M.from_params(cfg, params_from_state_dict(numpy_state_dict(tm), cfg))


@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_pytorch(name):
    cfg = CASES[name]
    tm, model = _torch_pair(cfg)
    x, t, y = _inputs(cfg)
    kw = {} if y is None else {"y": y}
    out = fast_jit(model.eps_fn)(model.params, x, t, **kw)
    ref = torch_forward(tm, x, t, y)
    assert out.shape == ref.shape == (2, 12, 20, cfg.out_channels)
    assert np.abs(ref).max() > 0.1  # every layer re-randomized: the output is not trivial
    assert rel_err(out, ref) < 1e-5


def test_attention_order_matters():
    """The parity test is sensitive to the qkv channel order (guards against vacuity)."""
    cfg = CASES["adm-noss-convresample-new-numheads-eps"]
    tm, model = _torch_pair(cfg)
    x, t, _ = _inputs(cfg)
    wrong = M.from_params(M.replace_fields(cfg, use_new_attention_order=False), model.params)
    assert rel_err(fast_jit(wrong.eps_fn)(wrong.params, x, t), torch_forward(tm, x, t)) > 1e-3


@pytest.mark.slow
def test_transforms_jit_vmap_grad():
    model = M.create(MICRO_ADM, key=0)
    x, t, y = _inputs(MICRO_ADM, hw=(8, 8))
    f = fast_jit(model.eps_fn)
    out = f(model.params, x, t, y=y)
    # vmap over the batch: each call sees an unbatched (H, W, C) image and a scalar t
    vm = fast_jit(jax.vmap(lambda xi, ti, yi: model.eps_fn(model.params, xi, ti, y=yi)))(x, t, y)
    np.testing.assert_allclose(vm, out, rtol=1e-4, atol=1e-5)

    def loss(params, x):
        return jnp.sum(model.eps_fn(params, x, t, y=y) ** 2)

    gp, gx = fast_jit(jax.grad(loss, argnums=(0, 1)))(model.params, x)
    assert gx.shape == x.shape and np.all(np.isfinite(gx)) and np.abs(gx).max() > 0
    leaves = jax.tree.leaves(gp)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert jax.tree.structure(gp) == jax.tree.structure(model.params)
    assert sum(float(np.abs(g).sum()) > 0 for g in leaves) == len(leaves)  # every param used


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [MICRO_ADM, MICRO_DDPM], ids=["adm", "ddpm"])
def test_float64_checkpointed_grad_matches_finite_differences(cfg):
    with jax.enable_x64(True):
        model = M.create(cfg, key=1)
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), model.params)
        x, t, y = _inputs(cfg, batch=1, hw=(8, 8))
        kw = {} if y is None else {"y": y}
        x = jnp.asarray(x, jnp.float64)
        v = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape))
        # jax.checkpoint around the network: its gradient is what the FD check verifies
        net = jax.checkpoint(lambda x: model.eps_fn(params, x, t, **kw))
        assert jax.eval_shape(net, x).dtype == jnp.float64
        value_and_grad = fast_jit(jax.value_and_grad(lambda x: jnp.sum(jnp.sin(net(x)))))
        _, g = value_and_grad(x)
        h = 1e-5
        fd = (value_and_grad(x + h * v)[0] - value_and_grad(x - h * v)[0]) / (2 * h)
        assert abs(float(jnp.vdot(g, v)) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))


def test_bfloat16_close_to_float32():
    cfg = MICRO_ADM
    model = M.create(cfg, key=2)
    bf = M.from_params(cfg, model.params, dtype=jnp.bfloat16)
    assert bf.dtype == "bfloat16"
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf.params))
    x, t, y = _inputs(cfg, hw=(8, 8))
    ref = fast_jit(model.eps_fn)(model.params, x, t, y=y)
    out = fast_jit(bf.eps_fn)(bf.params, x, t, y=y)
    assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
    # bf16 keeps 8 mantissa bits (~4e-3 relative per rounding); through ~15 layers the
    # deviation grows to a few percent of the output range, far below O(1) for a wrong net.
    assert rel_err(out, ref) < 0.1
    assert rel_err(out, ref) > 0  # it really ran in bf16


def test_input_validation():
    model = M.create(MICRO_ADM, key=0)
    x, t, y = _inputs(model.config)
    p = model.params
    with pytest.raises(ValueError, match="channels"):
        model.eps_fn(p, x[..., :2], t, y=y)
    with pytest.raises(ValueError, match="multiples of 2"):
        model.eps_fn(p, x[:, :11], t, y=y)
    with pytest.raises(ValueError, match="t must have shape"):
        model.eps_fn(p, x, t[:1], y=y)
    with pytest.raises(ValueError, match="class-conditional"):
        model.eps_fn(p, x, t)
    with pytest.raises(ValueError, match="NHWC"):
        model.eps_fn(p, x[0, 0], t, y=y)
    tiny = M.create(TINY)
    with pytest.raises(ValueError, match="not class-conditional"):
        tiny.eps_fn(tiny.params, x, t, y=y)


def test_create_is_deterministic_and_nontrivial():
    a, b = M.create(TINY, key=3), M.create(TINY, key=jax.random.key(3))
    c = M.create(TINY, key=4)
    la, lc = jax.tree.leaves(a.params), jax.tree.leaves(c.params)
    assert all(np.array_equal(u, v) for u, v in zip(la, jax.tree.leaves(M.create(TINY, 3).params),
                                                    strict=True))
    assert any(not np.array_equal(u, v) for u, v in zip(la, lc, strict=True))
    assert b.out_channels == 6 and b.learn_sigma and a.architecture == "adm"
    assert all(float(np.abs(v).max()) > 0 for v in la)  # no zero-initialised layer
    # model.eps = the first in_channels channels of eps_fn
    fake = M.Model(config=TINY, params=None,
                   eps_fn=lambda p, x, t, **kw: jnp.concatenate([x, -x], axis=-1))
    x = jnp.ones((1, 8, 8, 3))
    np.testing.assert_array_equal(fake.eps(None, x, None), x)
    assert M.count_params(TINY) == sum(v.size for v in la)


def test_presets_and_config_roundtrip():
    assert M.get_preset("adm-tiny-golden").attention_ds == (2,)
    assert M.PRESETS["ddpm-celebahq256"].attention_ds == (16,)
    assert M.PRESETS["adm-imagenet256-uncond"].attention_ds == (8, 16, 32)
    for cfg in M.PRESETS.values():
        assert M.config_from_dict(json.loads(json.dumps(M.config_to_dict(cfg)))) == cfg
    with pytest.raises(ValueError, match="unknown preset"):
        M.get_preset("nope")
    with pytest.raises(ValueError, match="must divide"):
        ADM(image_size=32, attention_resolutions=(12,))
    with pytest.raises(ValueError, match="multiple of 32"):
        ADM(model_channels=40)
    with pytest.raises(ValueError, match="unknown adm config field"):
        M.replace_fields(TINY, bogus=1)


def test_v_prediction_network_returns_eps(tmp_path):
    """prediction="v": same params, eps = sqrt(abar) v + sqrt(1 - abar) x on the ε channels."""
    v_cfg = M.replace_fields(TINY, prediction="v")
    model = M.create(v_cfg, key=3)
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    t = jnp.asarray([0, 420, 999])
    raw = M.make_eps_fn(TINY)(model.params, x, t)  # the same weights read as an ε-network
    eps = model.eps_fn(model.params, x, t)
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[[0, 420, 999]][:, None, None, None]
    c = TINY.in_channels
    want = np.sqrt(abar) * np.asarray(raw[..., :c]) + np.sqrt(1 - abar) * np.asarray(x)
    np.testing.assert_allclose(np.asarray(eps[..., :c]), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(eps[..., c:]), np.asarray(raw[..., c:]))
    M.save(model, tmp_path / "v")  # the parameterisation travels with the checkpoint
    assert M.load(tmp_path / "v").config.prediction == "v"
    assert M.config_from_dict({k: v for k, v in M.config_to_dict(TINY).items()
                               if k != "prediction"}) == TINY  # older checkpoints: ε
    with pytest.raises(ValueError, match="prediction must be one of"):
        M.replace_fields(TINY, prediction="x0")


def test_save_load_roundtrip_and_overwrite(tmp_path):
    model = M.create(TINY, key=5)
    dst = tmp_path / "ckpt"
    M.save(model, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left
    assert json.loads((dst / "config.json").read_text())["architecture"] == "adm"
    loaded = M.load(dst)
    assert loaded.config == TINY and loaded.dtype == "float32"
    for u, v in zip(jax.tree.leaves(model.params), jax.tree.leaves(loaded.params), strict=True):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(FileExistsError):
        M.save(model, dst)
    other = M.create(TINY, key=6)
    M.save(other, dst, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    again = M.load(dst, dtype=jnp.bfloat16)
    assert again.dtype == "bfloat16"
    np.testing.assert_array_equal(jax.tree.leaves(again.params)[0],
                                  jax.tree.leaves(other.params)[0])


def test_load_errors_name_path_and_problem(tmp_path):
    with pytest.raises(ValueError, match="not a model checkpoint directory"):
        M.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="missing config.json"):
        M.load(tmp_path / "empty")
    dst = tmp_path / "ckpt"
    M.save(M.create(TINY, key=0), dst)
    cfg_file = dst / "config.json"
    good = cfg_file.read_text()
    cfg_file.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON") as e:
        M.load(dst)
    assert str(dst) in str(e.value)
    data = json.loads(good)
    data["config"]["model_channels"] = 64
    cfg_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="shape mismatch") as e:
        M.load(dst)
    assert "params do not match" in str(e.value) and str(dst) in str(e.value)
    data["config"] = {**json.loads(good)["config"], "num_classes": 3}
    cfg_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="missing: label_emb/embedding"):
        M.load(dst)
    data["config"]["bogus"] = 1
    cfg_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown adm config field"):
        M.load(dst)


@pytest.mark.parametrize("stride,padding,ksize", [
    (1, ((1, 1), (1, 1)), 3),   # every 3x3 conv
    (2, ((1, 1), (1, 1)), 3),   # ADM downsample
    (2, ((0, 1), (0, 1)), 3),   # DDPM downsample
    (1, ((0, 0), (0, 0)), 1),   # 1x1 skip
])
def test_conv2d_derivatives_equal_lax(stride, padding, ksize):
    """The CPU conv's own derivative (shifted slices × matmuls, fast inside loops) equals JAX's
    derivative of lax.conv_general_dilated: reverse mode for both arguments, forward mode, and
    a second derivative, in float32 with x64 off and in float64."""
    # Both sides sum the same kh·kw·C products in a different order: float32 rounding of sums
    # of ~36 O(1) terms is ~1e-5; float64 ~1e-14. Gradients and second derivatives sum more
    # terms (over the output pixels), hence the looser atol there.
    for x64, tol in ((False, 2e-5), (True, 1e-12)):
        with jax.enable_x64(x64):
            _check_conv(stride, padding, ksize, jnp.float64 if x64 else jnp.float32, tol)


def _check_conv(stride, padding, ksize, dt, tol):
    from deqir_jax.models.layers import _lax_conv, conv2d

    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 9, 10, 4), dt)  # odd sizes: the stride-2 edge
    k = jax.random.normal(kk, (ksize, ksize, 4, 5), dt)
    ref = lambda x, k: _lax_conv(x, k, stride, padding)
    ours = lambda x, k: conv2d(x, k, stride, padding)
    out = ours(x, k)
    assert out.dtype == dt
    np.testing.assert_allclose(out, ref(x, k), rtol=tol, atol=tol)
    g = jax.random.normal(kg, out.shape, dt)
    loss = lambda f: lambda x, k: jnp.sum(f(x, k) * g)
    for a, b in zip(jax.jit(jax.grad(loss(ours), (0, 1)))(x, k),
                    jax.grad(loss(ref), (0, 1))(x, k), strict=True):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * 10)
    t_ours = jax.jvp(ours, (x, k), (x * 0.5, k * 2))[1]
    t_ref = jax.jvp(ref, (x, k), (x * 0.5, k * 2))[1]
    np.testing.assert_allclose(t_ours, t_ref, rtol=tol, atol=tol * 10)
    second = lambda f: jax.grad(lambda x: jnp.sum(jnp.square(jax.grad(
        lambda x: jnp.sum(jnp.sin(f(x, k))))(x))))
    np.testing.assert_allclose(second(ours)(x), second(ref)(x), rtol=tol * 10, atol=tol * 100)
    # Inside a scan (the case the CPU rule exists for) the gradient is the same.
    scan_loss = lambda f: lambda k: jax.lax.scan(
        lambda c, _: (c + jnp.sum(f(x, k) * g), None), 0.0, None, length=3)[0]
    np.testing.assert_allclose(jax.grad(scan_loss(ours))(k), jax.grad(scan_loss(ref))(k),
                               rtol=tol, atol=tol * 100)
