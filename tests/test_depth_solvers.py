"""The depth-cutting parallel solvers (issue: parallel restoration in a fraction of T rounds):
the order-k system, triangular Anderson, the coarse start, per-image stopping, the default
``method="anderson"`` and ``method="auto"``."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_gradients import tiny_adm  # the random ADM of the gradient tests (tests/ on sys.path)

import deqir_jax as dq
from deqir_jax import operators
from deqir_jax.diffusion import (
    DEQMap,
    coarse_trajectory,
    initial_trajectory,
    sequential_sample,
)
from deqir_jax.restore import (
    DEFAULT_LINEARIZE,
    DEFAULT_ORDER,
    eps_view,
    make_solver,
    map_settings,
    resolve_method,
)
from deqir_jax.solve import Anderson, Picard, SlidingWindow, fixed_point

SHAPE = (8, 8, 3)
T = 8


@pytest.fixture(scope="module")
def setup():
    """A nonlinear (random ADM) prior, SR ×2, fresh noise: every coefficient in play."""
    model = tiny_adm()
    op = operators.get("sr_averagepooling", image_shape=SHAPE, scale=2)
    rng = np.random.default_rng(0)
    y = op.A(jnp.asarray(rng.uniform(-1, 1, (2,) + SHAPE)))
    prob = dq.make_problem(model, y, op, timesteps=T, key=1, nw=0.3, etw=0.4,
                           fresh_noise=True, dtype=jnp.float64)
    eps = eps_view(model.eps_fn, 3)
    _, traj = sequential_sample(eps, prob, return_trajectory=True)
    return model, op, y, prob, eps, traj


@pytest.mark.parametrize("linearize", [None, 0.1, (0.1, 1.0)])
@pytest.mark.parametrize("order", [None, 1, 2, 3, T, 2 * T])
def test_every_order_has_the_sequential_fixed_point(setup, order, linearize):
    _, _, _, prob, eps, traj = setup
    F = DEQMap(eps, order=order, linearize=linearize)
    assert float(jnp.max(jnp.abs(F(traj, prob) - traj))) <= 1e-12
    X = initial_trajectory(prob)
    for _ in range(T):  # causal: plain iteration is exact after T evaluations, any order
        X = F(X, prob)
    assert float(jnp.max(jnp.abs(X - traj))) <= 1e-12


def test_order_and_linearize_are_validated():
    with pytest.raises(ValueError, match="order"):
        DEQMap(lambda p, x, t: x, order=0)
    for bad in (0, -0.1, float("nan"), float("inf"), True, "0.1", (0.1,), (0.1, 0.0),
                (0.1, 1.0, 2.0), [0.1, 1.0], (0.1, "1")):
        with pytest.raises(ValueError, match="linearize"):
            DEQMap(lambda p, x, t: x, linearize=bad)
    assert DEQMap(lambda p, x, t: x, linearize=(0.1, 1)).linearize == (0.1, 1)


@pytest.mark.parametrize("order,linearize", [(None, None), (2, None), (None, 0.1), (3, 0.1),
                                             (None, (0.1, 1.0))])
def test_window_of_every_map_form(setup, order, linearize):
    """``DEQMap.window`` (the sliding window's map) for every order and linearization: at the
    sequential trajectory each window is those rows, and the sliding-window solver reaches
    the sequential trajectory from x_T, also under ``jax.vmap`` over the images."""
    _, _, _, prob, eps, traj = setup
    F = DEQMap(eps, order=order, linearize=linearize)
    for start, size in ((0, 3), (2, 4), (T - 3, 3)):
        np.testing.assert_allclose(np.asarray(F.window(traj, prob, start, size)),
                                   np.asarray(traj[:, start:start + size]), rtol=0, atol=1e-12)
    solver = SlidingWindow(window=3, tol=1e-12, max_steps=3 * T)
    sol = fixed_point(F, solver, initial_trajectory(prob), prob)
    assert int(sol.result) == 0
    np.testing.assert_allclose(np.asarray(sol.value), np.asarray(traj), rtol=0, atol=1e-10)

    axes = jax.tree_util.tree_map(lambda a: 0 if getattr(a, "ndim", 0) and a.shape[0] == 2
                                  else None, prob)

    def one(p):  # one image at a time: the batch axis mapped away and added back
        p = jax.tree_util.tree_map(lambda a, ax: a if ax is None else a[None], p, axes)
        return fixed_point(F, solver, initial_trajectory(p), p).value[0]

    mapped = jax.jit(jax.vmap(one, in_axes=(axes,)))(prob)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(traj), rtol=0, atol=1e-10)


def test_linearized_order_one_is_the_plain_order_one_map(setup):
    """Order 1 steps each row from its own network input, so solving ε's slope changes
    nothing there; the full-order map it changes (away from the fixed point)."""
    _, _, _, prob, eps, traj = setup
    X = initial_trajectory(prob) + 0.3 * jax.random.normal(jax.random.key(2), traj.shape,
                                                           jnp.float64)
    np.testing.assert_allclose(np.asarray(DEQMap(eps, order=1, linearize=0.2)(X, prob)),
                               np.asarray(DEQMap(eps, order=1)(X, prob)), rtol=0, atol=1e-12)
    assert float(jnp.max(jnp.abs(DEQMap(eps, linearize=0.2)(X, prob)
                                 - DEQMap(eps)(X, prob)))) > 1e-3


@pytest.mark.parametrize("etw", [1.0, 0.1])
def test_linearized_map_is_exact_in_one_evaluation_for_white_gaussian_data(etw):
    """For data N(μ, s² I) ε is affine with the slope the map solves (``linearize=s²``):
    what the scan holds fixed does not depend on X, so one evaluation from any start is the
    sequential trajectory; the official map needs up to T."""
    shape, std = (6, 6, 3), 0.5  # (exact in float32, as the model stores it)
    model = dq.diffusion.GaussianModel.create(shape, std_range=(std, std))
    op = operators.get("inpainting", image_shape=shape, mask="random", keep_ratio=0.5)
    y = op.A(jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2,) + shape)))
    prob = dq.make_problem(model, y, op, timesteps=T, key=0, etw=etw, nw=etw,
                           fresh_noise=True, dtype=jnp.float64)
    _, traj = sequential_sample(model.eps_fn, prob, return_trajectory=True)
    X0 = initial_trajectory(prob)
    one = DEQMap(model.eps_fn, linearize=std**2)(X0, prob)
    assert float(jnp.max(jnp.abs(one - traj))) <= 1e-10
    official = DEQMap(model.eps_fn)(X0, prob)
    assert float(jnp.max(jnp.abs(official - traj))) > 1e-3
    other = DEQMap(model.eps_fn, linearize=4 * std**2)(X0, prob)  # a wrong slope: not exact
    assert float(jnp.max(jnp.abs(other - traj))) > 1e-6


@pytest.mark.parametrize("etw", [1.0, 0.1])
def test_subspace_linearized_map_is_exact_for_gaussian_data_with_two_variances(etw):
    """Data whose variance is s²_r on the observed pixels (the range of an inpainting mask)
    and s²_n on the missing ones: ``linearize=(s²_n, s²_r)`` solves ε's slope exactly, so one
    evaluation is the sequential trajectory; a wrong null-space variance is not. The range
    variance matters only where the range reads ε: with DDNM's η = 1 (c2 = 0, λ = 1) the
    range part of every row is √a' A⁺y, so s²_n alone is exact too."""
    shape, s_n, s_r = (6, 6, 3), 0.25, 0.75
    op = operators.get("inpainting", image_shape=shape, mask="random", keep_ratio=0.5)
    keep = np.asarray(op.project_range(jnp.ones((1,) + shape)))[0] > 0.5
    model = dq.diffusion.GaussianModel.create(shape)
    model = dataclasses.replace(model, params=dict(
        model.params, std=jnp.asarray(np.where(keep, s_r, s_n), jnp.float32)))
    y = op.A(jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2,) + shape)))
    prob = dq.make_problem(model, y, op, timesteps=T, key=0, etw=etw, nw=etw,
                           fresh_noise=True, dtype=jnp.float64)
    _, traj = sequential_sample(model.eps_fn, prob, return_trajectory=True)
    X0 = initial_trajectory(prob)
    err = lambda lin: float(jnp.max(jnp.abs(DEQMap(model.eps_fn, linearize=lin)(X0, prob)
                                            - traj)))
    assert err((s_n**2, s_r**2)) <= 1e-10
    for wrong in ((s_r**2, s_n**2), s_r**2):
        assert err(wrong) > 1e-6, wrong
    if etw == 1.0:
        assert err(s_n**2) <= 1e-10
    else:
        assert err(s_n**2) > 1e-6


@pytest.mark.parametrize("order,linearize", [(None, None), (2, None), (None, 0.1),
                                             (None, (0.1, 1.0))])
@pytest.mark.parametrize("coarse", [0, 3])
def test_triangular_anderson_reaches_the_sequential_trajectory(setup, order, linearize,
                                                               coarse):
    _, _, _, prob, eps, traj = setup
    solver = Anderson(tol=1e-13, max_steps=T + 2, mixing="triangular", stop="per_row",
                      settle_tol=0.0)
    X0 = coarse_trajectory(eps, prob, coarse) if coarse else initial_trajectory(prob)
    sol = fixed_point(DEQMap(eps, order=order, linearize=linearize), solver, X0, prob)
    assert int(sol.result) == 0
    assert float(jnp.max(jnp.abs(sol.value - traj))) <= 1e-10


def test_coarse_start_with_all_steps_is_the_sequential_trajectory(setup):
    _, _, _, prob, eps, traj = setup
    np.testing.assert_allclose(np.asarray(coarse_trajectory(eps, prob, T)), np.asarray(traj),
                               rtol=0, atol=1e-12)
    # Fewer steps: the last row of each segment is the coarse chain's state, A x̂ = y holds.
    X = coarse_trajectory(eps, prob, 3)
    assert X.shape == traj.shape
    with pytest.raises(ValueError, match="coarse steps"):
        coarse_trajectory(eps, prob, T + 1)


def _step_from(solver, F, prob, state):
    return solver.step(F, state, prob, jnp.asarray(prob.coeffs.sqrt_1ma))


@pytest.mark.parametrize("mixing,leaks", [("triangular", False), ("per_row", False),
                                          ("per_image", True)])
def test_triangular_mixing_never_reads_later_rows(setup, mixing, leaks):
    """Two solver states that differ only in rows > r give the same rows ≤ r after a step
    (the map is causal, so only the mixing could leak later rows into earlier ones)."""
    _, _, _, prob, eps, _ = setup
    F = DEQMap(eps)
    solver = Anderson(tol=1e-30, max_steps=50, mixing=mixing, causal=False, warmup=1)
    rs = jnp.asarray(prob.coeffs.sqrt_1ma)
    state = solver.init(F, initial_trajectory(prob), prob, rs)
    for _ in range(3):
        state = _step_from(solver, F, prob, state)
    r = 3
    later = (jnp.arange(T) > r).reshape(1, T, 1, 1, 1)
    noise = jax.random.normal(jax.random.key(5), state["X_hist"].shape, jnp.float64)
    other = dict(state, X_hist=jnp.where(later, state["X_hist"] + noise, state["X_hist"]),
                 F_hist=jnp.where(later, state["F_hist"] - noise, state["F_hist"]))
    a = _step_from(solver, F, prob, state)
    b = _step_from(solver, F, prob, other)
    diff = float(jnp.max(jnp.abs(a["x"][:, :r + 1] - b["x"][:, :r + 1])))
    if leaks:
        assert diff > 1e-6  # the check can fail: one α per image mixes all rows
    else:
        assert diff == 0.0


def test_per_image_stopping(setup):
    """Each image of a batch stops on its own and gets what it gets when solved alone."""
    _, _, _, prob, eps, _ = setup
    F = DEQMap(eps)
    solver = Anderson(tol=1e-6, max_steps=T + 2, mixing="triangular", stop="per_row",
                      settle_tol=0.0)
    both = fixed_point(F, solver, initial_trajectory(prob), prob)
    for b in range(2):
        one = jax.tree_util.tree_map(lambda a, b=b: a[b:b + 1] if getattr(a, "ndim", 0) and
                                     a.shape[0] == 2 else a, prob)
        alone = fixed_point(F, solver, initial_trajectory(one), one)
        assert int(both.stats.image_steps[b]) == int(alone.stats.image_steps[0])
        np.testing.assert_allclose(np.asarray(both.value[b]), np.asarray(alone.value[0]),
                                   rtol=0, atol=1e-12)
    assert both.stats.image_result.shape == (2,)


def test_default_anderson_stops_by_itself_near_sequential():
    """The default solver on the default prior, float32, no flags: it stops before T + 1
    evaluations (its calibrated per-row rule), converged, ≥ 40 dB from the sequential x̂."""
    model = dq.models.default()
    op = operators.get("inpainting", image_shape=(16, 16, 3), mask="random", keep_ratio=0.5)
    x = jnp.asarray(np.random.default_rng(2).uniform(-0.5, 0.5, (1, 16, 16, 3)), jnp.float32)
    y = op.A(x)
    official = dq.Sampler.official()  # (the model's own settings: see the depth benchmark)
    res = dq.restore(model, y, op, method="anderson", key=0, sampler=official)
    seq = dq.restore(model, y, op, method="sequential", key=0, sampler=official)
    assert res.stats["converged"] and res.stats["method"] == "anderson"
    assert res.stats["depth"][0] <= 25
    mse = float(jnp.mean(jnp.square(res.image - seq.image)))
    assert 10 * np.log10(4 / mse) >= 40


def test_default_anderson_on_the_default_models_sampler_cuts_depth():
    """The default model's own sampler (DDNM's η = 1, fresh noise), no solver flags: the
    default map is linearized, and the solve stops by itself in far fewer rounds than T
    (measured 5-7 on these 16-px problems; the official map needs T + 1), ≥ 45 dB from the
    sequential x̂."""
    model = dq.models.default()
    op = operators.get("sr_bicubic", image_shape=(16, 16, 3), scale=4)
    x = jnp.asarray(np.random.default_rng(2).uniform(-0.5, 0.5, (1, 16, 16, 3)), jnp.float32)
    y = op.A(x)
    res = dq.restore(model, y, op, method="anderson", key=0, samples=1)
    seq = dq.restore(model, y, op, method="sequential", key=0, samples=1)
    assert res.stats["linearize"] == DEFAULT_LINEARIZE and res.stats["converged"]
    assert res.stats["depth"][0] <= 10 < model.sampler.timesteps
    mse = float(jnp.mean(jnp.square(res.image - seq.image)))
    assert 10 * np.log10(4 / mse) >= 45


def test_auto_method_and_its_reason(setup):
    model, op, y, _, _, _ = setup
    method, reason = resolve_method("auto")
    assert method == ("sequential" if jax.default_backend() == "cpu" else "anderson")
    res = dq.restore(model, y, op, T, key=1, dtype=jnp.float64)
    assert res.stats["method"] == method and res.stats["method_reason"] == reason
    if method == "sequential":
        assert res.stats["depth"] == [T, T] and res.stats["nfe"] == T
    with pytest.raises(ValueError, match="method"):
        dq.restore(model, y, op, T, "magic")


def test_restore_order_and_coarse(setup):
    model, op, y, prob, eps, traj = setup
    kw = dict(key=1, nw=0.3, etw=0.4, fresh_noise=True, dtype=jnp.float64)
    res = dq.restore(model, y, op, T, "anderson", order=2, coarse=3, tol=1e-12, **kw)
    np.testing.assert_allclose(np.asarray(res.image), np.asarray(traj[:, -1]), atol=1e-9)
    # depth: the coarse pass's 3 rounds plus each image's own parallel rounds
    assert all(3 < d <= 3 + res.stats["iterations"] for d in res.stats["depth"])
    assert max(res.stats["depth"]) == 3 + res.stats["iterations"]
    for bad in (dict(order=0), dict(coarse=T + 1), dict(coarse=-1), dict(order=1.5)):
        with pytest.raises(ValueError):
            dq.restore(model, y, op, T, "anderson", **bad, **kw)
    with pytest.raises(TypeError, match="order, linearize and coarse"):
        dq.restore(model, y, op, T, "sequential", coarse=2, **kw)
    with pytest.raises(TypeError, match="order, linearize and coarse"):
        dq.restore(model, y, op, T, "sequential", linearize=0.1, **kw)


def test_map_settings_and_the_default_linearized_map(setup):
    """The default map of ``method="anderson"`` (without ``faithful`` or a window) is the
    linearized full-order map; every other method keeps the official map; an explicit value
    always wins. ``dq.restore`` reports what ran and reaches the sequential result either way
    (DDNM's η = 1: ε weight 0)."""
    assert map_settings("anderson") == (DEFAULT_ORDER, DEFAULT_LINEARIZE)
    assert map_settings("anderson", faithful=True) == (None, None)
    assert map_settings("picard") == (None, None)
    assert map_settings("picard", solver=SlidingWindow(window=2), linearize=0.3,
                        order=2) == (2, 0.3)
    assert map_settings("anderson", linearize=None) == (DEFAULT_ORDER, None)
    ddnm = dq.Sampler(etw=1.0, nw=1.0, fresh_noise=True)
    model, op, y, _, _, _ = setup
    kw = dict(key=1, sampler=ddnm, dtype=jnp.float64)
    seq = dq.restore(model, y, op, T, "sequential", **kw)
    res = dq.restore(model, y, op, T, "anderson", tol=1e-9, **kw)
    assert res.stats["linearize"] == DEFAULT_LINEARIZE and res.stats["order"] == DEFAULT_ORDER
    np.testing.assert_allclose(np.asarray(res.image), np.asarray(seq.image), atol=1e-8)
    off = dq.restore(model, y, op, T, "anderson", tol=1e-9, linearize=None, **kw)
    assert off.stats["linearize"] is None
    np.testing.assert_allclose(np.asarray(off.image), np.asarray(seq.image), atol=1e-8)


def test_make_solver_default_is_triangular():
    s = make_solver("anderson", 25)
    assert s.mixing == "triangular" and s.stop == "per_row" and s.max_steps == 27
    assert make_solver("anderson", 25, faithful=True) == Anderson.faithful()
    assert isinstance(make_solver("picard", 25), Picard)
