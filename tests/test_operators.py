"""Tests of deqir_jax.operators: algebra, dense references, golden official outputs, errors."""

import functools
import os
import subprocess
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import deqir_jax.operators as ops  # noqa: E402
from deqir_jax.operators._torch_sort import torch_sort_descending_indices  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover - torch is a test dependency
    torch = None

GOLDEN = "/work/shared/golden/deqir_official_tiny.npz"
B = 2
SHAPES = [(16, 16, 3), (12, 20, 3)]
CS_SHAPES = [(16, 16, 3), (8, 32, 3)]
ATOL = 1e-9  # float64 algebra; A⁺ amplifies rounding by at most ~1/(3e-2)² ≈ 1e3


def _box(n=4):
    return np.ones((n, n)) / n**2


def _asym_kernel():
    return np.random.default_rng(7).uniform(0.1, 1.0, (3, 5))


# (id, task, params, faithful, shapes)
CASES = [
    ("avg2", "sr_averagepooling", {"scale": 2}, False, SHAPES),
    # faithful == clean for average pooling and for CS with ratio 0.5: one size suffices
    ("avg2_f", "sr_averagepooling", {"scale": 2}, True, SHAPES[:1]),
    ("avg4", "sr_averagepooling", {"scale": 4}, False, SHAPES),
    ("bic2", "sr_bicubic", {"scale": 2}, False, SHAPES),
    ("bic2_f", "sr_bicubic", {"scale": 2}, True, SHAPES),
    ("bic4", "sr_bicubic", {"scale": 4}, False, SHAPES),
    ("bic4_f", "sr_bicubic", {"scale": 4}, True, SHAPES),
    ("bic3", "sr_bicubic", {"scale": 3}, False, [(12, 21, 3)]),
    ("bic3_f", "sr_bicubic", {"scale": 3}, True, [(12, 21, 3)]),
    ("gauss", "deblur_gauss", {}, False, SHAPES),
    ("gauss_f", "deblur_gauss", {}, True, SHAPES),
    ("uni", "deblur_uni", {}, False, SHAPES),
    ("uni_f", "deblur_uni", {}, True, SHAPES),
    ("aniso", "deblur_aniso", {}, False, SHAPES),
    ("aniso_f", "deblur_aniso", {}, True, SHAPES),
    ("user_kernel", "deblur", {"kernel": _asym_kernel()}, False, SHAPES),
    ("user_box", "deblur", {"kernel": _box()}, False, SHAPES),
    ("user_1d_f", "deblur", {"kernel": np.array([0.2, 0.5, 0.3, 0.1])}, True, SHAPES),
    ("inp_random", "inpainting", {"mask": "random", "keep_ratio": 0.5}, False, SHAPES),
    ("inp_box", "inpainting", {"mask": "box"}, True, SHAPES),
    ("inp_half", "inpainting", {"mask": "half"}, False, SHAPES),
    ("color", "colorization", {}, False, SHAPES),
    ("color_f", "colorization", {}, True, SHAPES),
    ("cs", "cs_walshhadamard", {"ratio": 0.5}, False, CS_SHAPES),
    ("cs_f", "cs_walshhadamard", {"ratio": 0.5}, True, CS_SHAPES[1:]),
    ("cs03", "cs_walshhadamard", {"ratio": 0.3}, False, CS_SHAPES),
    ("denoise", "denoising", {}, False, SHAPES),
]
PARAMS = [
    pytest.param(cid, shape, id=f"{cid}-{shape[0]}x{shape[1]}")
    for cid, *_, shapes in CASES
    for shape in shapes
]
# one case per operator class (the dtype handling lives in the base class and each class's
# casts), on its first shape
DTYPE_CASES = [pytest.param(cid, _shapes[0], id=cid) for cid, *_, _shapes in CASES
               if cid in ("avg2", "bic2_f", "gauss", "gauss_f", "inp_random", "color_f", "cs",
                          "denoise")]
_BY_ID = {c[0]: c for c in CASES}


@functools.cache
def make(cid, shape):
    _, task, params, faithful, _ = _BY_ID[cid]
    return ops.get(task, shape, faithful=faithful, key=3, **params)


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def inner(a, b):
    return float(jnp.vdot(jnp.ravel(a), jnp.ravel(b)))


# ------------------------------------------------------------------------------------------
# algebra, shapes, jit, dtype for every operator


@jax.jit
def _algebra(op, x, u, y, w):
    """The quantities the algebra test needs, with few operator calls (one small compile).

    Inputs are stacked along a leading axis so each round is one call of A, A⁺ or Aᵀ.
    """
    ax, au = op.A(jnp.stack([x, u]))
    px, pu, apy, apw = op.A_pinv(jnp.stack([ax, au, y, w]))
    apx, aapy, aapw = op.A(jnp.stack([px, apy, apw]))  # A P x, A A⁺ y, A A⁺ w
    ppx, apaapy = op.A_pinv(jnp.stack([apx, aapy]))
    return {"ax": ax, "px": px, "pu": pu, "apy": apy, "apx": apx, "aapy": aapy, "aapw": aapw,
            "ppx": ppx, "apaapy": apaapy, "aty": op.At(y)}


@pytest.mark.parametrize("cid,shape", PARAMS)
def test_algebra(cid, shape):
    op = make(cid, shape)
    assert op.image_shape == shape and op.has_adjoint
    x, u = rand((B, *shape), 0), rand((B, *shape), 1)
    y, w = rand((B, *op.measurement_shape), 2), rand((B, *op.measurement_shape), 3)
    r = {k: np.asarray(v) for k, v in _algebra(op, x, u, y, w).items()}
    assert r["ax"].shape == (B, *op.measurement_shape)
    assert r["apy"].shape == r["aty"].shape == (B, *shape)
    np.testing.assert_allclose(r["apx"], r["ax"], atol=ATOL)  # A A⁺ A = A
    # A⁺ A A⁺ = A⁺: for y = A x this is P² = P (P idempotent), and for arbitrary y
    np.testing.assert_allclose(r["ppx"], r["px"], atol=ATOL)
    np.testing.assert_allclose(r["apaapy"], r["apy"], atol=ATOL)
    assert inner(r["aapy"], w) == pytest.approx(inner(y, r["aapw"]), abs=1e-8)  # (A A⁺)ᵀ = A A⁺
    assert inner(r["px"], u) == pytest.approx(inner(x, r["pu"]), abs=1e-8)  # Pᵀ = P
    assert inner(r["ax"], y) == pytest.approx(inner(x, r["aty"]), rel=1e-10, abs=1e-9)  # Aᵀ


@jax.jit
def _low_precision(op, x32, y32, xbf):
    return {"ax": op.A(x32), "apy": op.A_pinv(y32), "aty": op.At(y32), "axbf": op.A(xbf)}


@pytest.mark.parametrize("cid,shape", DTYPE_CASES)
def test_dtype_preserved(cid, shape):
    op = make(cid, shape)
    x, u = rand((B, *shape), 0), rand((B, *shape), 1)
    y, w = rand((B, *op.measurement_shape), 2), rand((B, *op.measurement_shape), 3)
    ref = _algebra(op, x, u, y, w)  # float64 (cached compile from test_algebra)
    assert ref["ax"].dtype == ref["apy"].dtype == ref["aty"].dtype == jnp.float64
    low = _low_precision(op, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                         jnp.asarray(x, jnp.bfloat16))
    assert low.pop("axbf").dtype == jnp.float32  # bfloat16 is computed and returned in float32
    for k, v in low.items():
        assert v.dtype == jnp.float32, k
        # float32 rounding, amplified by A⁺ by up to ~1e3 (smallest kept singular values)
        np.testing.assert_allclose(v, ref[k], atol=2e-3 * max(1.0, float(np.abs(ref[k]).max())))


@pytest.mark.parametrize("cid", ["gauss_f", "bic2", "cs"])
def test_project_null(cid):
    op = make(cid, _BY_ID[cid][4][0])
    x = rand((B, *op.image_shape), 0)
    qx = op.project_null(x)
    np.testing.assert_allclose(qx + op.project_range(x), x, atol=ATOL)
    np.testing.assert_allclose(op.A(qx), 0.0, atol=ATOL)  # A Q = 0
    assert inner(qx, op.project_range(rand(x.shape, 1))) == pytest.approx(0.0, abs=1e-8)


def test_grad_vmap_and_extra_batch_axes():
    op = make("gauss_f", (12, 20, 3))
    x = jnp.asarray(rand((B, 12, 20, 3), 0))
    g = jax.grad(lambda v: 0.5 * jnp.sum(op.A(v) ** 2))(x)
    np.testing.assert_allclose(g, op.At(op.A(x)), atol=1e-10)  # ∇ ½‖Ax‖² = Aᵀ A x
    np.testing.assert_allclose(jax.vmap(op.A)(x[:, None])[:, 0], op.A(x), atol=1e-12)
    x5 = jnp.stack([x, 2 * x])  # (2, B, H, W, C): any number of leading batch axes
    np.testing.assert_allclose(op.A(x5)[1], 2 * op.A(x), atol=1e-12)


def test_pytree_leaves_and_static_metadata():
    a = ops.get("inpainting", (16, 16, 3), mask="random", key=0)
    b = ops.get("inpainting", (16, 16, 3), mask="random", key=1)
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb and len(la) == 1 and la[0].shape == (16, 16, 3)
    traces = []

    @jax.jit
    def f(op, x):
        traces.append(1)
        return op.project_range(x)

    x = jnp.ones((1, 16, 16, 3))
    np.testing.assert_allclose(f(a, x), a.project_range(x))
    np.testing.assert_allclose(f(b, x), b.project_range(x))
    assert len(traces) == 1  # masks are leaves: a new mask does not retrace
    sr = ops.get("sr_bicubic", (16, 16, 3), scale=2)
    assert sr.name == "sr_bicubic" and sr.measurement_shape == (8, 8, 3)
    assert "scale" not in [type(v).__name__ for v in jax.tree_util.tree_leaves(sr)]


def test_float32_without_x64_in_subprocess():
    code = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "import deqir_jax.operators as ops\n"
        "assert not jax.config.jax_enable_x64\n"
        "for t, kw in [('deblur_aniso', {'faithful': True}), ('cs', {})]:\n"
        "    op = ops.get(t, (16, 16, 3), **kw)\n"
        "    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 3)),\n"
        "                    jnp.float32)\n"
        "    y = jax.jit(lambda o, v: o.A(v))(op, x)\n"
        "    p = jax.jit(lambda o, v: o.project_range(v))(op, x)\n"
        "    assert y.dtype == jnp.float32 and p.dtype == jnp.float32, t\n"
        "    assert float(jnp.abs(op.project_range(p) - p).max()) < 1e-3, t\n"
        "print('ok')\n"
    )
    env = {**os.environ, "JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


# ------------------------------------------------------------------------------------------
# independent dense references (written from the definitions, numpy only)


def _dense_apply(mats, x):
    """Apply per-channel dense matrices (list of C matrices on row-major vec(X))."""
    b, h, w, c = x.shape
    cols = [np.asarray(x[..., ch]).reshape(b, h * w) @ mats[ch].T for ch in range(c)]
    return np.stack(cols, axis=-1)


def _cubic(t, a=-0.5):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def _official_bicubic_1d(n, s):
    k = np.array([_cubic((i - np.floor(4 * s / 2) + 0.5) / s) for i in range(4 * s)])
    k = (k / k.sum()).astype(np.float32)
    k = k / k.sum(dtype=np.float32)
    m = np.zeros((n // s, n))
    for i in range(s // 2, n + s // 2, s):
        for j in range(i - 2 * s, i + 2 * s):
            jj = -j - 1 if j < 0 else (2 * n - 1 - j if j >= n else j)
            m[i // s, jj] += k[j - i + 2 * s]
    return m


def _truncate(m, thr=3e-2):
    u, s, vt = np.linalg.svd(m)
    s = np.where(s < thr, 0.0, s)
    return (u[:, : s.size] * s) @ vt[: s.size]


@pytest.mark.parametrize("shape,scale", [((16, 16, 3), 2), ((12, 20, 3), 4), ((12, 21, 3), 3)])
def test_faithful_bicubic_matches_dense_official_definition(shape, scale):
    h, w, c = shape
    dense = np.kron(_truncate(_official_bicubic_1d(h, scale)),
                    _truncate(_official_bicubic_1d(w, scale)))
    op = ops.get("sr_bicubic", shape, scale=scale, faithful=True)
    x, y = rand((B, *shape), 0), rand((B, h // scale, w // scale, c), 1)
    ref_y = _dense_apply([dense] * c, x).reshape(B, h // scale, w // scale, c)
    np.testing.assert_allclose(op.A(x), ref_y, atol=1e-12)
    ref_p = _dense_apply([np.linalg.pinv(dense)] * c, y).reshape(B, *shape)
    np.testing.assert_allclose(op.A_pinv(y), ref_p, atol=1e-10)


def test_clean_bicubic_odd_scale_centres_kernel_on_block():
    h, w, s = 12, 21, 3
    op = ops.get("sr_bicubic", (h, w, 1), scale=s)
    x = np.zeros((1, h, w, 1))
    x[0, :, :, 0] = np.arange(w)[None, :]  # a ramp along W: the block mean is the centre
    y = np.asarray(op.A(x))[0, :, :, 0]
    inner_cols = y[:, 2:-2]  # away from the reflected borders (kernel half-width 2s)
    centres = np.broadcast_to((np.arange(w // s) * s + 1.0)[2:-2], inner_cols.shape)
    np.testing.assert_allclose(inner_cols, centres, atol=1e-12)


def _official_deblur_1d(kernel, n):
    k = len(kernel)
    m = np.zeros((n, n))
    for i in range(n):
        for j in range(i - k // 2, i + k // 2):  # exclusive bound: the last tap is dropped
            if 0 <= j < n:
                m[i, j] = kernel[j - i + k // 2]
    return m


def _f32_gauss(sigma, size):
    """torch.exp(torch.Tensor([-0.5 * (x / sigma) ** 2])) per tap, then k / k.sum() in float32."""
    taps = [np.float32(np.exp(np.float64(np.float32(-0.5 * (x / sigma) ** 2))))
            for x in range(-(size // 2), size // 2 + 1)]
    total = np.float32(0)
    for t in taps:  # PyTorch sums these short float32 kernels left to right
        total = np.float32(total + t)
    return np.array([np.float32(t / total) for t in taps], dtype=np.float64)


OFFICIAL_1D = {
    "deblur_gauss": (_f32_gauss(10, 5), _f32_gauss(10, 5)),
    "deblur_uni": (np.full(9, np.float32(1 / 9)).astype(np.float64),) * 2,
    "deblur_aniso": (_f32_gauss(1, 9), _f32_gauss(20, 9)),
}


def _faithful_deblur_dense(task, shape):
    """Per-channel dense matrices U diag(σ_c) Vᵀ from the official construction."""
    h, w, c = shape
    kh, kw = OFFICIAL_1D[task]
    uh, sh, vht = np.linalg.svd(_official_deblur_1d(kh, h))
    uw, sw, vwt = np.linalg.svd(_official_deblur_1d(kw, w))
    sh, sw = np.where(sh < 3e-2, 0, sh), np.where(sw < 3e-2, 0, sw)
    keys = (sh.astype(np.float32)[:, None] * sw.astype(np.float32)[None, :]).reshape(-1)
    perm = torch.sort(torch.from_numpy(keys), descending=True)[1].numpy()
    ss = np.outer(sh, sw).reshape(-1)[perm]
    big_u, big_v = np.kron(uh, uw), np.kron(vht.T, vwt.T)
    mats, pinvs = [], []
    for ch in range(c):
        sigma = np.empty(h * w)
        sigma[perm] = ss[(c * np.arange(h * w) + ch) % (h * w)]  # repeat(1, 3) tiling quirk
        sigma_pinv = np.divide(1.0, sigma, out=np.zeros_like(sigma), where=sigma != 0)
        mats.append((big_u * sigma) @ big_v.T)
        pinvs.append((big_v * sigma_pinv) @ big_u.T)
    return mats, pinvs


@pytest.mark.skipif(torch is None, reason="torch is needed for the reference sort order")
@pytest.mark.parametrize("task", ["deblur_gauss", "deblur_uni", "deblur_aniso"])
@pytest.mark.parametrize("shape", SHAPES)
def test_faithful_deblur_matches_dense_official_definition(task, shape):
    mats, pinvs = _faithful_deblur_dense(task, shape)
    op = ops.get(task, shape, faithful=True)
    x, y = rand((B, *shape), 0), rand((B, *shape), 1)
    np.testing.assert_allclose(op.A(x), _dense_apply(mats, x).reshape(x.shape), atol=1e-10)
    np.testing.assert_allclose(op.A_pinv(y), _dense_apply(pinvs, y).reshape(y.shape), atol=1e-8)


def test_faithful_deblur_is_not_the_plain_blur():
    # The official layout quirk makes A differ from M_h X M_wᵀ (documented in SVDDeblur).
    shape = (16, 16, 3)
    op = ops.get("deblur_gauss", shape, faithful=True)
    m = _official_deblur_1d(OFFICIAL_1D["deblur_gauss"][0], 16)
    x = rand((1, *shape), 0)
    plain = np.einsum("ih,bhwc,jw->bijc", m, x, m)
    assert float(np.abs(op.A(x) - plain).max()) > 1e-2


def _circulant(kernel, h, w):
    kh, kw = kernel.shape
    dense = np.zeros((h * w, h * w))
    for n1 in range(h):
        for n2 in range(w):
            for m1 in range(kh):
                for m2 in range(kw):
                    src = ((n1 - (m1 - kh // 2)) % h) * w + (n2 - (m2 - kw // 2)) % w
                    dense[n1 * w + n2, src] += kernel[m1, m2]
    return dense


@pytest.mark.parametrize("kernel,thr,shape", [
    (_box(), None, (8, 8, 2)),  # exact zero frequencies; the default 1e-3 cut keeps the rest
    (_asym_kernel(), 0.05, (6, 10, 2)),  # a cut that removes frequencies from A as well
])
def test_clean_deblur_matches_dense_circulant(kernel, thr, shape):
    h, w, c = shape
    dense = _circulant(kernel, h, w)
    u, s, vt = np.linalg.svd(dense)
    s = np.where(s > (1e-3 if thr is None else thr) * s.max(), s, 0.0)
    dense_t = (u * s) @ vt
    op = ops.get("deblur", shape, kernel=kernel, pinv_threshold=thr)
    x, y = rand((B, *shape), 0), rand((B, *shape), 1)
    np.testing.assert_allclose(op.A(x), _dense_apply([dense_t] * c, x).reshape(x.shape),
                               atol=1e-10)
    ref_p = _dense_apply([np.linalg.pinv(dense_t, rcond=1e-10)] * c, y).reshape(y.shape)
    np.testing.assert_allclose(op.A_pinv(y), ref_p, atol=1e-9)
    if thr is None:  # nothing but exact zeros removed: A is the exact circular convolution
        np.testing.assert_allclose(op.A(x), _dense_apply([dense] * c, x).reshape(x.shape),
                                   atol=1e-12)


@pytest.mark.parametrize("shape", CS_SHAPES)
@pytest.mark.parametrize("faithful", [False, True])
def test_cs_matches_dense_hadamard(shape, faithful):
    from scipy.linalg import hadamard

    h, w, c = shape
    n = h * w
    op = ops.get("cs_walshhadamard", shape, faithful=faithful, key=5)
    sel = np.asarray(op.selected)
    assert sel.size == n // 2
    rows = hadamard(n)[sel] / np.sqrt(n)
    x, y = rand((B, *shape), 0), rand((B, sel.size * c), 1)
    ref = np.stack([x[..., ch].reshape(B, n) @ rows.T for ch in range(c)], axis=-1)
    np.testing.assert_allclose(op.A(x), ref.reshape(B, -1), atol=1e-12)  # layout k*C + c
    ref_p = np.stack([y.reshape(B, -1, c)[..., ch] @ rows for ch in range(c)], axis=-1)
    np.testing.assert_allclose(op.A_pinv(y), ref_p.reshape(B, *shape), atol=1e-12)


def test_cs_ratio_counts():
    shape = (16, 16, 1)
    assert ops.get("cs", shape, ratio=0.3).measurement_shape == (77,)  # round(0.3 * 256)
    assert ops.get("cs", shape, ratio=0.3, faithful=True).measurement_shape == (85,)  # 256 // 3
    assert ops.get("cs", shape, ratio=1.0).measurement_shape == (256,)


@pytest.mark.parametrize("shape", SHAPES)
def test_pointwise_and_pooling_definitions(shape):
    h, w, c = shape
    x = rand((B, *shape), 0)
    blocks = x.reshape(B, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    avg_f = ops.get("sr_averagepooling", shape, scale=2, faithful=True)
    np.testing.assert_allclose(avg_f.A(x), blocks, atol=1e-12)
    np.testing.assert_allclose(make("avg2", shape).A_pinv(blocks),
                               np.repeat(np.repeat(blocks, 2, 1), 2, 2), atol=1e-12)
    np.testing.assert_allclose(make("color", shape).A(x), x.mean(-1, keepdims=True), atol=1e-12)
    wts = np.array([0.3333, 0.3334, 0.3333])
    np.testing.assert_allclose(make("color_f", shape).A(x), (x @ wts)[..., None], atol=1e-12)
    g = (x @ wts)[..., None]
    np.testing.assert_allclose(make("color_f", shape).A_pinv(g), g * wts / (wts @ wts),
                               atol=1e-12)
    op = make("inp_random", shape)
    np.testing.assert_allclose(op.A(x), x * np.asarray(op.mask), atol=0)
    assert np.asarray(op.mask)[..., 0].sum() == round(0.5 * h * w)
    np.testing.assert_allclose(make("denoise", shape).A_pinv(x), x)


def test_per_channel_mask_and_mask_from_files(tmp_path):
    from PIL import Image

    mask = (rand((12, 20, 3), 0) > 0).astype(np.float64)
    op = ops.get("inpaint", (12, 20, 3), mask=mask)
    np.testing.assert_array_equal(np.asarray(op.mask), mask)
    png = np.zeros((12, 20), np.uint8)
    png[:, :7] = 255
    Image.fromarray(png).save(tmp_path / "m.png")
    Image.fromarray(np.stack([png, 0 * png, 0 * png], -1)).save(tmp_path / "rgb.png")
    np.save(tmp_path / "m.npy", png > 0)
    for name in ("m.png", "rgb.png", "m.npy"):
        op = ops.get("inpainting", (12, 20, 3), mask=str(tmp_path / name))
        np.testing.assert_array_equal(np.asarray(op.mask)[..., 1], (png > 0).astype(float))
    np.testing.assert_array_equal(ops.load_mask(tmp_path / "m.png"), png > 0)


def test_mask_helpers():
    m = ops.box_mask(8, 12)
    assert m.shape == (8, 12) and m.sum() == 8 * 12 - 4 * 6 and m[4, 6] == 0
    m = ops.box_mask(8, 12, top=0, left=0, box_height=2, box_width=3)
    assert m[:2, :3].sum() == 0 and m.sum() == 90
    h = ops.half_mask(8, 12)
    assert h[:, :6].all() and not h[:, 6:].any()
    assert ops.half_mask(8, 12, keep="bottom")[4:].all()
    r = ops.random_mask(8, 12, 0.25, key=1)
    assert r.sum() == 24 and set(np.unique(r)) <= {0.0, 1.0}


# ------------------------------------------------------------------------------------------
# golden outputs of the official PyTorch code


@pytest.fixture(scope="module")
def golden():
    if not os.path.exists(GOLDEN):
        pytest.skip(f"golden file {GOLDEN} is absent (see shared/golden/README.md)")
    return np.load(GOLDEN)


# Tolerances: the reference is float32 PyTorch arithmetic. Pixel-wise operators agree to
# float32 rounding (~1e-7); the deblurring A⁺ divides by products of singular values as small
# as (3e-2)² ≈ 1e-3, which amplifies the float32 rounding of the reference to ~5e-5.
GOLDEN_CASES = [
    ("sr_averagepooling", {"scale": 2}, 1e-6),
    ("deblur_gauss", {}, 1e-4),
    ("colorization", {}, 1e-6),
    ("inpainting", None, 1e-6),
]


@pytest.mark.parametrize("task,params,tol", GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES])
def test_faithful_matches_official_golden(golden, task, params, tol):
    x = golden["x_gt"].transpose(0, 2, 3, 1).astype(np.float64)
    if params is None:
        params = {"mask": golden["inpainting_mask"]}
    op = ops.get(task, x.shape[1:], faithful=True, **params)
    ref = golden[f"{task}/A_pinv_A_x"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(op.project_range(x), ref, atol=tol, rtol=0)
    p32 = op.project_range(x.astype(np.float32))
    np.testing.assert_allclose(p32, ref, atol=max(tol, 2e-6), rtol=0)


def test_clean_differs_from_official_where_documented(golden):
    x = golden["x_gt"].transpose(0, 2, 3, 1).astype(np.float64)
    for task, lo in (("deblur_gauss", 1e-2), ("colorization", 1e-5)):
        ref = golden[f"{task}/A_pinv_A_x"].transpose(0, 2, 3, 1)
        assert float(np.abs(ops.get(task, x.shape[1:]).project_range(x) - ref).max()) > lo


@pytest.mark.skipif(torch is None, reason="torch is needed to check the sort emulation")
def test_sort_emulation_matches_torch():
    rng = np.random.default_rng(0)
    for n in (1, 2, 15, 16, 17, 100, 1024, 5000):
        keys = rng.integers(0, max(2, n // 5), n).astype(np.float32)
        ref = torch.sort(torch.from_numpy(keys), descending=True)[1].numpy()
        np.testing.assert_array_equal(torch_sort_descending_indices(keys), ref)


def test_faithful_deblur_accepts_official_perm():
    shape = (12, 20, 3)
    op = ops.get("deblur_uni", shape, faithful=True)
    perm = np.arange(12 * 20)[::-1]
    op2 = ops.get("deblur_uni", shape, faithful=True, perm=perm)
    assert not np.array_equal(np.asarray(op.sigma), np.asarray(op2.sigma))
    with pytest.raises(ValueError, match="perm"):
        ops.get("deblur_uni", shape, faithful=True, perm=np.zeros(240, int))
    with pytest.raises(ValueError, match="perm"):
        ops.get("deblur_uni", shape, perm=perm)


# ------------------------------------------------------------------------------------------
# randomness


def test_randomness_reproducible_from_key():
    shape = (16, 16, 3)
    m = lambda k: np.asarray(ops.get("inpainting", shape, mask="random", key=k).mask)
    np.testing.assert_array_equal(m(4), m(4))
    np.testing.assert_array_equal(m(4), m(jax.random.PRNGKey(4)))
    kr = ops.get("inpainting", shape, keep_ratio=0.25, key=4).mask  # keep_ratio implies random
    assert np.asarray(kr)[..., 0].sum() == 64
    np.testing.assert_array_equal(m(None), m(0))  # default: seed 0
    assert not np.array_equal(m(4), m(5))
    s = lambda k: np.asarray(ops.get("cs", shape, key=k).selected)
    np.testing.assert_array_equal(s(jax.random.key(9)), s(jax.random.key(9)))
    assert not np.array_equal(s(1), s(2))


# ------------------------------------------------------------------------------------------
# names and errors


def test_names_and_aliases():
    assert ops.TASKS == ("sr_averagepooling", "sr_bicubic", "deblur_gauss", "deblur_uni",
                         "deblur_aniso", "inpainting", "colorization", "cs_walshhadamard",
                         "denoising")
    for alias, task in [("sr", "sr_bicubic"), ("SR-AVG", "sr_averagepooling"),
                        ("deblur", "deblur_gauss"), ("inpaint", "inpainting"),
                        ("color", "colorization"), ("cs", "cs_walshhadamard"),
                        ("denoise", "denoising")]:
        shape = (16, 16, 3)
        assert ops.get(alias, shape, **({"scale": 2} if "sr" in task else {})).name == task
    assert ops.get("deblur", (16, 16, 3), kernel=_box()).name == "deblur"


BAD = [
    (("nope", (16, 16, 3)), {}, ValueError, "sr_averagepooling, sr_bicubic"),
    (("sr_bicubic", (16, 20, 3)), {"scale": 3}, ValueError, "scale=3.*16x20"),
    (("sr_avg", (16, 16, 3)), {"scale": 2.0}, TypeError, "scale"),
    (("sr_avg", (16, 16, 3)), {"scale": 0}, ValueError, "scale"),
    (("inpainting", (16, 16, 3)), {"mask": np.ones((16, 15))}, ValueError, "mask"),
    (("inpainting", (16, 16, 3)), {"mask": np.ones((16, 16, 2))}, ValueError, "mask"),
    (("inpainting", (16, 16, 3)), {"mask": np.full((16, 16), np.nan)}, ValueError, "non-finite"),
    (("inpainting", (16, 16, 3)), {"mask": np.full((16, 16), 0.5)}, ValueError, "mask"),
    (("inpainting", (16, 16, 3)), {"mask": "/no/such.png"}, ValueError, "mask"),
    (("inpainting", (16, 16, 3)), {"mask": "random", "keep_ratio": 0.0}, ValueError, "keep_ratio"),
    (("inpainting", (16, 16, 3)), {"mask": "random", "keep_ratio": 1.5}, ValueError, "keep_ratio"),
    (("inpainting", (16, 16, 3)), {"mask": "box", "keep_ratio": 0.5}, ValueError, "keep_ratio"),
    (("deblur", (16, 16, 3)), {"kernel": np.ones((3, 3, 3))}, ValueError, "kernel"),
    (("deblur", (16, 16, 3)), {"kernel": np.array([[1.0, np.inf]])}, ValueError, "kernel"),
    (("deblur", (16, 16, 3)), {"kernel": np.ones((17, 3))}, ValueError, "kernel"),
    (("deblur", (16, 16, 3)), {"kernel": np.ones((3, 3)), "faithful": True}, ValueError,
     "kernel"),
    (("deblur_gauss", (16, 16, 3)), {"kernel_size": 4}, ValueError, "kernel_size"),
    (("deblur_uni", (4, 4, 3)), {}, ValueError, "kernel"),
    (("deblur_gauss", (16, 16, 3)), {"sigma": -1}, ValueError, "sigma"),
    (("deblur_gauss", (16, 16, 3)), {"pinv_threshold": -1}, ValueError, "pinv_threshold"),
    (("cs", (16, 16, 3)), {"ratio": 0}, ValueError, "ratio"),
    (("cs", (16, 16, 3)), {"ratio": 1.2}, ValueError, "ratio"),
    (("cs", (12, 20, 3)), {}, ValueError, "power of two"),
    (("colorization", (16, 16, 4)), {"faithful": True}, ValueError, "C=3"),
    (("inpainting", (16, 16, 3)), {"scale": 2}, TypeError, "scale"),
    (("denoising", (16, 16)), {}, ValueError, "image_shape"),
    (("denoising", (0, 16, 3)), {}, ValueError, "image_shape"),
    (("denoising", (16.0, 16, 3)), {}, ValueError, "image_shape"),
    (("denoising", "abc"), {}, ValueError, "image_shape"),
    (("denoising", (16, 16, 3)), {"key": "seed"}, TypeError, "key"),
]


@pytest.mark.parametrize("args,kwargs,exc,match", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_construction_errors(args, kwargs, exc, match):
    kwargs = dict(kwargs)
    if args[0] == "denoising" and "key" in kwargs:
        with pytest.raises(exc, match=match):
            ops.get("inpainting", args[1], mask="random", key=kwargs["key"])
        return
    with pytest.raises(exc, match=match):
        ops.get(*args, **kwargs)


def test_unknown_task_lists_all_names():
    with pytest.raises(ValueError) as err:
        ops.get("superres", (16, 16, 3))
    for t in ops.TASKS:
        assert t in str(err.value)


@pytest.mark.parametrize("cid", ["bic2", "gauss_f", "cs", "color"])
def test_wrong_input_shapes_raise(cid):
    op = make(cid, (16, 16, 3))
    for bad in (np.zeros((1, 16, 15, 3)), np.zeros((1, 16, 16, 1)), np.zeros((16, 16, 3))):
        with pytest.raises(ValueError, match="x must have shape"):
            op.A(bad)
        with pytest.raises(ValueError, match="x must have shape"):
            jax.jit(lambda o, v: o.A(v))(op, bad)  # static check, also under jit
    with pytest.raises(ValueError, match="y must have shape"):
        op.A_pinv(np.zeros((1, 5, 5, 3)))
    with pytest.raises(ValueError, match="y must have shape"):
        jax.jit(lambda o, v: o.At(v))(op, np.zeros((1, 7)))
    with pytest.raises(TypeError, match="floating"):
        op.A(np.zeros((1, 16, 16, 3), np.int32))
