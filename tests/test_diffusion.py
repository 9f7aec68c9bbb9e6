"""Schedules, samplers and the DEQ map, checked in float64 against independent derivations."""

import jax.numpy as jnp
import numpy as np
import pytest

import deqir_jax as dq
from deqir_jax.diffusion import (
    DEQMap,
    GaussianModel,
    initial_trajectory,
    sequential_sample,
    step_coefficients,
    timesteps,
)
from deqir_jax.restore import eps_view
from deqir_jax.solve import Picard, fixed_point

SHAPE = (8, 6, 3)


def test_official_timesteps():
    taus, nxt = timesteps(25)
    assert taus[0] == 960 and taus[-1] == 0 and len(taus) == 25
    assert np.all(np.diff(taus) == -40)
    assert nxt[-1] == -1 and np.array_equal(nxt[:-1], taus[1:])
    taus, _ = timesteps(10, skip_type="quad")
    assert taus[0] == int(np.sqrt(800) ** 2) and taus[-1] == 0 and np.all(np.diff(taus) < 0)


@pytest.mark.parametrize("T", [0, 1001, -3])
def test_timesteps_out_of_range(T):
    with pytest.raises(ValueError, match="timesteps T must be in"):
        timesteps(T)


def test_bad_weights_and_schedule():
    with pytest.raises(ValueError, match="nw"):
        step_coefficients(10, nw=1.5)
    with pytest.raises(ValueError, match="schedule"):
        step_coefficients(10, schedule="sigmoid")
    with pytest.raises(ValueError, match="sigma_y"):
        step_coefficients(10, sigma_y=float("nan"))


def test_schedule_values():
    c = step_coefficients(25)
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    assert np.allclose(c.sqrt_a**2, abar[np.arange(960, -1, -40)])
    assert c.sqrt_a_next[-1] == 1.0  # ā_{-1} = 1
    assert np.isclose(np.sqrt(1 - c.sqrt_a[0] ** 2) / c.sqrt_a[0], 107.0, atol=1.0)  # k1_1


def _problem(model, op=None, y=None, T=10, fresh=False, **kw):
    return dq.make_problem(
        model, y, op, timesteps=T, key=3, image_shape=SHAPE, batch=2, fresh_noise=fresh,
        dtype=jnp.float64, **kw,
    )


@pytest.fixture(scope="module")
def gauss():
    return GaussianModel.create(SHAPE, dtype=np.float64)


def test_ddim_matches_closed_form(gauss):
    """Deterministic DDIM (nw = etw = 0) with the exact Gaussian ε: each step maps the centred
    state w = x − √ā μ by the scalar factor (√(a a') s² + √((1−a)(1−a'))) / (a s² + 1 − a)."""
    T = 20
    prob = _problem(gauss, T=T)
    out = sequential_sample(eps_view(gauss.eps_fn, 3), prob)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    times = list(range(0, 1000, 1000 // T))[::-1] + [-1]
    ab = lambda t: 1.0 if t < 0 else abar[t]
    mu, s = np.asarray(gauss.params["mean"]), np.asarray(gauss.params["std"])
    w = np.asarray(prob.x_T) - np.sqrt(ab(times[0])) * mu
    for t, tn in zip(times[:-1], times[1:], strict=True):
        a, an = ab(t), ab(tn)
        w = w * (np.sqrt(a * an) * s**2 + np.sqrt((1 - a) * (1 - an))) / (a * s**2 + 1 - a)
    np.testing.assert_allclose(np.asarray(out), mu + w, rtol=1e-12, atol=1e-12)


def test_sampler_deterministic_given_key(gauss):
    a = dq.restore(gauss, None, None, 10, "sequential", key=7, image_shape=SHAPE, nw=0.5, etw=0.5)
    b = dq.restore(gauss, None, None, 10, "sequential", key=7, image_shape=SHAPE, nw=0.5, etw=0.5)
    c = dq.restore(gauss, None, None, 10, "sequential", key=8, image_shape=SHAPE, nw=0.5, etw=0.5)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.allclose(np.asarray(a.image), np.asarray(c.image))


def _check_fixed_point(model, op, y, fresh, **kw):
    T = 10
    prob = _problem(model, op, y, T=T, fresh=fresh, nw=0.3, etw=0.3, **kw)
    eps = eps_view(model.eps_fn, 3)
    x, traj = sequential_sample(eps, prob, return_trajectory=True)
    F = DEQMap(eps)
    scale = float(jnp.max(jnp.abs(traj)))
    # The sequential trajectory is a fixed point of F ...
    assert float(jnp.max(jnp.abs(F(traj, prob) - traj))) <= 1e-10 * scale
    # ... and plain Picard from the official start reaches it exactly within T evaluations
    # (the Jacobian is strictly block lower-triangular: row k is exact after k evaluations).
    sol = fixed_point(F, Picard(tol=1e-13, max_steps=T), initial_trajectory(prob), prob)
    assert float(jnp.max(jnp.abs(sol.value - traj))) <= 1e-10 * scale
    return x, prob


@pytest.mark.parametrize("fresh", [False, True])
def test_ddim_fixed_point_equals_sequential(gauss, fresh):
    _check_fixed_point(gauss, None, None, fresh)


def test_triangular_jacobian(gauss):
    """Row i of F depends only on rows < i: perturbing row j changes no row ≤ j."""
    prob = _problem(gauss, T=6, nw=0.2, etw=0.2)
    F = DEQMap(eps_view(gauss.eps_fn, 3))
    X = initial_trajectory(prob) + 0.1
    base = F(X, prob)
    for j in range(6):
        moved = F(X.at[:, j].add(1.0), prob)
        diff = np.asarray(jnp.max(jnp.abs(moved - base), axis=(0, 2, 3, 4)))
        assert np.all(diff[: j + 1] == 0)
        if j < 5:
            assert diff[j + 1] > 0


@pytest.mark.parametrize("W", [1, 3, 10])
def test_sliding_window_reaches_sequential(gauss, W):
    from deqir_jax.solve import SlidingWindow

    kw = dict(key=4, image_shape=SHAPE, batch=2, nw=0.2, etw=0.3, fresh_noise=True,
              dtype=jnp.float64)
    seq = dq.restore(gauss, None, None, 10, "sequential", **kw)
    res = dq.restore(gauss, None, None, 10, "picard",
                     solver=SlidingWindow(window=W, tol=1e-9, max_steps=50), **kw)
    assert res.stats["converged"] and res.stats["iterations"] <= 10
    assert res.stats["nfe"] == res.stats["iterations"] * W  # only the window is evaluated
    np.testing.assert_allclose(np.asarray(res.image), np.asarray(seq.image), atol=1e-10)
    if W == 1:
        assert res.stats["iterations"] == 10  # one row per iteration: the sequential sampler
    with pytest.raises(ValueError, match="window"):
        SlidingWindow(window=0)


@pytest.mark.parametrize("fresh", [False, True])
def test_ccdf_start(gauss, fresh):
    """CCDF: ccdf = T is the plain sampler exactly; ccdf = k runs the last k steps of the same
    schedule from √ā A⁺y + √(1−ā) x_T at the first kept step's time (ā from the linear
    schedule, computed here), its DEQ fixed point is its sequential chain, and the restored
    image keeps A x̂ = y (noise-free y, λ = 1, nw = etw = 0 at the last step)."""
    T, k = 10, 4
    op = dq.operators.get("inpainting", image_shape=SHAPE, mask="random", keep_ratio=0.5)
    x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2,) + SHAPE))
    y = op.A(x)
    kw = dict(key=3, fresh_noise=fresh, nw=0.3, etw=0.3, dtype=jnp.float64)
    plain = dq.restore(gauss, y, op, T, "sequential", **kw)
    same = dq.restore(gauss, y, op, T, "sequential", ccdf=T, **kw)
    np.testing.assert_array_equal(np.asarray(plain.image), np.asarray(same.image))

    res = dq.restore(gauss, y, op, T, "sequential", ccdf=k, **kw)
    assert res.stats["timesteps"] == k and res.stats["nfe"] == k
    t0 = list(range(0, 1000, 1000 // T))[::-1][T - k]  # network time of the first kept step
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t0]
    start = np.sqrt(abar) * np.asarray(op.A_pinv(y)) + np.sqrt(1 - abar) * np.asarray(
        plain.x_T)
    np.testing.assert_allclose(np.asarray(res.x_T), start, rtol=1e-12, atol=1e-12)
    if fresh:  # the last k of the T fresh noises
        np.testing.assert_array_equal(np.asarray(res.noise), np.asarray(plain.noise[:, T - k:]))
    np.testing.assert_allclose(np.asarray(op.A(res.image)), np.asarray(y), atol=1e-10)
    assert not np.allclose(np.asarray(res.image), np.asarray(plain.image))

    deq = dq.restore(gauss, y, op, T, "picard", ccdf=k,
                     solver=Picard(tol=1e-13, max_steps=k + 1), on_max_steps="raise", **kw)
    np.testing.assert_allclose(np.asarray(deq.image), np.asarray(res.image), atol=1e-10)
    assert deq.solution.value.shape[1] == k and deq.stats["nfe"] == k * deq.stats["iterations"]


def test_ccdf_errors(gauss):
    op = dq.operators.get("inpainting", image_shape=SHAPE, mask="random", keep_ratio=0.5)
    y = op.A(jnp.zeros((1,) + SHAPE))
    for bad in (0, 11, 2.5, True):
        with pytest.raises(ValueError, match="ccdf must be an integer in"):
            dq.restore(gauss, y, op, 10, "sequential", ccdf=bad)
    with pytest.raises(ValueError, match="needs an operator"):
        dq.restore(gauss, None, None, 10, "sequential", ccdf=4, image_shape=SHAPE)
