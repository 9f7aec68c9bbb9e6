"""The DEQ map with every degradation operator: fixed point = sequential trajectory, Picard is
exact within T iterations, the last row satisfies A x̂ = y, and the noise-aware variant."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deqir_jax as dq
from deqir_jax import operators
from deqir_jax.diffusion import DEQMap, GaussianModel, initial_trajectory, sequential_sample
from deqir_jax.restore import eps_view
from deqir_jax.solve import Anderson, Picard, fixed_point

SHAPE = (16, 16, 3)
TASKS = [
    ("sr_averagepooling", dict(scale=2)),
    ("sr_bicubic", dict(scale=2)),
    ("deblur_gauss", {}),
    ("deblur_uni", {}),
    ("deblur_aniso", {}),
    ("inpainting", dict(mask="random", keep_ratio=0.5)),
    ("colorization", {}),
    ("cs_walshhadamard", dict(ratio=0.5)),
    ("denoising", {}),
]


@pytest.fixture(scope="module")
def gauss():
    return GaussianModel.create(SHAPE, dtype=np.float64)


def _setup(gauss, task, params, fresh, faithful=False, **kw):
    op = operators.get(task, image_shape=SHAPE, faithful=faithful, **params)
    x_gt = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2,) + SHAPE))
    y = op.A(x_gt)
    prob = dq.make_problem(gauss, y, op, timesteps=8, key=5, fresh_noise=fresh, nw=0.3,
                           etw=0.2, dtype=jnp.float64, **kw)
    return op, y, prob


@pytest.mark.parametrize("fresh", [False, True], ids=["shared_noise", "fresh_noise"])
@pytest.mark.parametrize("task,params", TASKS, ids=[t for t, _ in TASKS])
def test_fixed_point_is_sequential_trajectory(gauss, task, params, fresh):
    op, y, prob = _setup(gauss, task, params, fresh)
    eps = eps_view(gauss.eps_fn, 3)
    x, traj = sequential_sample(eps, prob, return_trajectory=True)
    F = DEQMap(eps)
    scale = float(jnp.max(jnp.abs(traj)))
    assert float(jnp.max(jnp.abs(F(traj, prob) - traj))) <= 1e-10 * scale
    sol = fixed_point(F, Picard(tol=1e-14, max_steps=8), initial_trajectory(prob), prob)
    assert float(jnp.max(jnp.abs(sol.value - traj))) <= 1e-10 * scale
    # Noiseless DDNM: the restored image is consistent with the measurement to float precision.
    np.testing.assert_allclose(np.asarray(op.A(x)), np.asarray(y), atol=1e-10)
    # Anderson (affine combinations of map outputs) keeps A x̂ = y at every iterate.
    sol = fixed_point(F, Anderson(max_steps=6, tol=1e-14), initial_trajectory(prob), prob)
    np.testing.assert_allclose(np.asarray(op.A(sol.value[:, -1])), np.asarray(y), atol=1e-9)


@pytest.mark.parametrize("task,params", TASKS[:3] + TASKS[5:7], ids=lambda v: str(v)[:20])
def test_faithful_operators_fixed_point(gauss, task, params):
    op, y, prob = _setup(gauss, task, params, False, faithful=True)
    eps = eps_view(gauss.eps_fn, 3)
    _, traj = sequential_sample(eps, prob, return_trajectory=True)
    scale = float(jnp.max(jnp.abs(traj)))
    assert float(jnp.max(jnp.abs(DEQMap(eps)(traj, prob) - traj))) <= 1e-10 * scale


def test_noise_aware_fixed_point(gauss):
    """DDNM+ (λ_i < 1 at late steps) keeps the fixed point = sequential property; the range
    scan then has non-zero decay, which the affine scan handles exactly."""
    op, y, prob = _setup(gauss, "sr_averagepooling", dict(scale=2), False, sigma_y=0.1,
                         noise_aware=True)
    assert float(jnp.min(prob.coeffs.lam)) < 1.0  # the correction is active
    eps = eps_view(gauss.eps_fn, 3)
    _, traj = sequential_sample(eps, prob, return_trajectory=True)
    sol = fixed_point(DEQMap(eps), Picard(tol=1e-14, max_steps=8), initial_trajectory(prob), prob)
    scale = float(jnp.max(jnp.abs(traj)))
    assert float(jnp.max(jnp.abs(sol.value - traj))) <= 1e-10 * scale


def test_restore_methods_agree(gauss):
    op = operators.get("inpainting", image_shape=SHAPE, mask="half")
    x_gt = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (1,) + SHAPE))
    y = op.A(x_gt)
    common = dict(key=0, etw=0.1, dtype=jnp.float64)
    seq = dq.restore(gauss, y, op, 10, "sequential", **common)
    pic = dq.restore(gauss, y, op, 10, "picard", tol=1e-13, **common)
    anr = dq.restore(gauss, y, op, 10, "anderson", tol=1e-10, max_steps=60, **common)
    np.testing.assert_allclose(np.asarray(pic.image), np.asarray(seq.image), atol=1e-10)
    np.testing.assert_allclose(np.asarray(anr.image), np.asarray(seq.image), atol=1e-6)
    assert pic.stats["nfe"] == pic.stats["iterations"] * 10


def test_restore_input_errors(gauss):
    op = operators.get("sr_averagepooling", image_shape=SHAPE, scale=2)
    with pytest.raises(ValueError, match="y must have shape"):
        dq.restore(gauss, jnp.zeros((1, 16, 16, 3)), op, 5)
    with pytest.raises(ValueError, match="non-finite"):
        dq.restore(gauss, jnp.full((1, 8, 8, 3), jnp.nan), op, 5)
    with pytest.raises(ValueError, match=r"timesteps must be an integer in \[1, 1000\]"):
        dq.restore(gauss, jnp.zeros((1, 8, 8, 3)), op, 1001)
    with pytest.raises(ValueError, match="x_T must have shape"):
        dq.restore(gauss, jnp.zeros((1, 8, 8, 3)), op, 5, x_T=jnp.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="noise must have shape"):
        dq.restore(gauss, jnp.zeros((1, 8, 8, 3)), op, 5, noise=jnp.zeros((1, 3, 16, 16, 3)))
    with pytest.raises(TypeError, match="y must be a floating"):
        dq.restore(gauss, jnp.zeros((1, 8, 8, 3), jnp.int32), op, 5)
    jax.clear_caches()


@pytest.mark.parametrize("method", ["sequential", "picard"])
def test_restore_samples_is_mean_of_independent_restorations(gauss, method):
    """samples=K solves B·K rows image-major and returns their mean (and all of them)."""
    op = operators.get("sr_averagepooling", image_shape=SHAPE, scale=2)
    x_gt = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2,) + SHAPE))
    y = op.A(x_gt)
    K = 3
    rng = np.random.default_rng(3)
    x_T = jnp.asarray(rng.standard_normal((2 * K,) + SHAPE))
    noise = jnp.asarray(rng.standard_normal((2 * K, 1) + SHAPE))
    common = dict(x_T=x_T, noise=noise, etw=0.1, dtype=jnp.float64)
    opts = {"tol": 1e-13} if method == "picard" else {}
    res = dq.restore(gauss, y, op, 6, method, samples=K, **common, **opts)
    each = dq.restore(gauss, jnp.repeat(y, K, axis=0), op, 6, method, **common, **opts)
    per = np.asarray(each.image).reshape((2, K) + SHAPE)
    assert res.samples.shape == (2, K) + SHAPE and res.image.shape == (2,) + SHAPE
    np.testing.assert_allclose(np.asarray(res.samples), per, atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.image), per.mean(axis=1), atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.apy), np.asarray(op.A_pinv(y)), atol=1e-12)
    # the K samples really differ (independent x_T), and every one is consistent with y
    assert float(np.abs(per[:, 0] - per[:, 1]).max()) > 1e-3
    np.testing.assert_allclose(np.asarray(op.A(res.image)), np.asarray(y), atol=1e-10)
    # keyed draws: K independent samples per image, different from samples=1
    keyed = dq.restore(gauss, y, op, 6, "sequential", samples=K, key=1, dtype=jnp.float64)
    assert keyed.x_T.shape == (2 * K,) + SHAPE and keyed.samples.shape == (2, K) + SHAPE
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        dq.restore(gauss, y, op, 6, "sequential", samples=0)
    with pytest.raises(ValueError, match="x_T must have shape"):
        dq.restore(gauss, y, op, 6, "sequential", samples=K, x_T=x_T[:2])
