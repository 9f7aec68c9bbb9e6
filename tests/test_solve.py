"""The fixed-point solvers: official Anderson arithmetic, result codes, tracing, guards."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deqir_jax as dq
from deqir_jax.diffusion import DEQMap, GaussianModel, initial_trajectory
from deqir_jax.restore import eps_view
from deqir_jax.solve import Anderson, Picard, Result, fixed_point

SHAPE = (8, 6, 3)


def official_anderson(f, x0, m=5, lam=1e-3, max_iter=15, tol=1e-3, beta=1.0):
    """ALGORITHM.md §4 written out in numpy: rows are the Anderson batch, two plain set-up
    steps, bordered (n+1)x(n+1) solve per row, global relative residual, last mixed iterate."""
    bsz = x0.shape[0]
    X = np.zeros((bsz, m, x0[0].size))
    F = np.zeros_like(X)
    X[:, 0] = x0.reshape(bsz, -1)
    F[:, 0] = f(x0).reshape(bsz, -1)
    X[:, 1] = F[:, 0]
    F[:, 1] = f(F[:, 0].reshape(x0.shape)).reshape(bsz, -1)
    evals = 2
    for k in range(2, max_iter):
        n = min(k, m)
        G = F[:, :n] - X[:, :n]
        H = np.zeros((bsz, n + 1, n + 1))
        H[:, 0, 1:] = H[:, 1:, 0] = 1
        H[:, 1:, 1:] = G @ G.transpose(0, 2, 1) + lam * np.eye(n)[None]
        rhs = np.zeros((bsz, n + 1))
        rhs[:, 0] = 1
        alpha = np.linalg.solve(H, rhs[..., None])[:, 1:, 0]
        X[:, k % m] = beta * np.einsum("bn,bnd->bd", alpha, F[:, :n]) + (1 - beta) * np.einsum(
            "bn,bnd->bd", alpha, X[:, :n]
        )
        F[:, k % m] = f(X[:, k % m].reshape(x0.shape)).reshape(bsz, -1)
        evals += 1
        res = np.linalg.norm(F[:, k % m] - X[:, k % m]) / (1e-5 + np.linalg.norm(F[:, k % m]))
        if res < tol:
            break
    return X[:, k % m].reshape(x0.shape), evals


@pytest.fixture(scope="module")
def setup():
    model = GaussianModel.create(SHAPE, dtype=np.float64)
    prob = dq.make_problem(model, None, None, timesteps=12, key=0, image_shape=SHAPE,
                           etw=0.1, dtype=jnp.float64)
    return DEQMap(eps_view(model.eps_fn, 3)), prob


@pytest.mark.parametrize("tol,beta", [(1e-3, 1.0), (1e-12, 1.0), (1e-12, 0.7)])
def test_faithful_anderson_matches_official_arithmetic(setup, tol, beta):
    F, prob = setup
    X0 = initial_trajectory(prob)
    f_np = lambda X: np.asarray(F(jnp.asarray(X)[None], prob))[0]
    expected, evals = official_anderson(f_np, np.asarray(X0[0]), tol=tol, beta=beta)
    sol = fixed_point(F, Anderson.faithful(tol=tol, beta=beta), X0, prob)
    assert int(sol.stats.map_evals) == evals
    np.testing.assert_allclose(np.asarray(sol.value[0]), expected, rtol=1e-9, atol=1e-9)


def test_picard_exact_and_history(setup):
    F, prob = setup
    sol = fixed_point(F, Picard(tol=1e-12, max_steps=20), initial_trajectory(prob), prob)
    assert sol.converged and int(sol.stats.map_evals) <= 12 + 2
    hist = np.asarray(sol.stats.residual_history)
    assert np.isnan(hist[int(sol.stats.map_evals):]).all()


def test_causal_anderson_is_exact_within_rows_plus_one(setup):
    """On the (causal) DEQ map the settled-prefix rule makes Anderson end like Picard: at the
    exact fixed point after at most R + 1 evaluations, even with a tolerance no mixing
    reaches; without the rule the same solve runs to its step limit."""
    F, prob = setup
    X0 = initial_trajectory(prob)
    seq = dq.restore(GaussianModel.create(SHAPE, dtype=np.float64), None, None, 12,
                     "sequential", key=0, image_shape=SHAPE, etw=0.1, dtype=jnp.float64)
    causal = fixed_point(F, Anderson(tol=1e-15, max_steps=40), X0, prob)
    assert causal.converged and int(causal.stats.map_evals) <= 12 + 1
    np.testing.assert_allclose(np.asarray(causal.value[:, -1]), np.asarray(seq.image),
                               rtol=0, atol=1e-12)  # float64 closed-form map vs the scan
    mixed = fixed_point(F, Anderson(tol=1e-15, max_steps=40, causal=False), X0, prob)
    assert int(mixed.stats.map_evals) > int(causal.stats.map_evals)
    # settle_tol=inf counts every row as settled: every step is the plain (Picard) step
    plain = fixed_point(F, Anderson(tol=1e-15, max_steps=6, settle_tol=np.inf), X0, prob)
    picard = fixed_point(F, Picard(tol=1e-15, max_steps=6), X0, prob)
    hist = [np.asarray(s.stats.residual_history)[2:] for s in (  # (warm-up evals: NaN)
        plain, picard, fixed_point(F, Anderson(tol=1e-15, max_steps=6), X0, prob))]
    np.testing.assert_allclose(hist[0], hist[1], rtol=1e-6)
    assert not np.allclose(hist[0], hist[2], rtol=1e-3)
    with pytest.raises(ValueError, match="settle_tol must be"):
        Anderson(settle_tol=-1.0)


def _divergent(X, args):
    return jnp.exp(X) + args  # exp(X) + 1 > X everywhere: no fixed point exists


def _nan_map(X, args):
    return jnp.where(jnp.arange(X.shape[1])[None, :, None] > 1, jnp.nan, X * 0.5 + args)


@pytest.mark.parametrize("solver", [Picard(max_steps=2000, tol=1e-6), Anderson(max_steps=200)])
def test_divergence_is_reported(solver):
    X0 = jnp.ones((1, 4, 5))
    sol = fixed_point(_divergent, solver, X0, jnp.ones((1, 4, 5)))
    assert int(sol.result) in (Result.NONFINITE, Result.MAX_STEPS)
    assert not sol.converged
    assert "converge" in sol.message() or "non-finite" in sol.message()


def test_nan_map_is_nonfinite():
    sol = fixed_point(_nan_map, Anderson(), jnp.ones((1, 4, 5)), jnp.ones((1, 4, 5)))
    assert int(sol.result) == Result.NONFINITE
    assert int(sol.stats.map_evals) == 1  # stops at once, no hanging


def test_restore_raises_on_nan_model():
    class NaNModel:
        params = {}

        @staticmethod
        def eps_fn(params, x, t):
            return x * jnp.nan

    with pytest.raises(dq.SolverError, match="non-finite"):
        dq.restore(NaNModel(), None, None, 5, "anderson", image_shape=SHAPE)


def test_max_steps_warns_and_can_raise():
    model = GaussianModel.create(SHAPE)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        r = dq.restore(model, None, None, 10, "picard", image_shape=SHAPE, max_steps=3)
    assert r.stats["converged"] is False and r.stats["iterations"] == 3
    with pytest.raises(dq.SolverError, match="did not converge"):
        dq.restore(model, None, None, 10, "picard", image_shape=SHAPE, max_steps=3,
                   on_max_steps="raise")


def test_solver_loop_traces_once():
    traces = []

    def counting_eps(params, x, t):
        traces.append(1)  # runs at trace time only
        return x * params["s"]

    class M:
        eps_fn = staticmethod(counting_eps)
        params = {"s": jnp.asarray(0.1, jnp.float32)}

    for seed in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dq.restore(M(), None, None, 8, "anderson", key=seed, image_shape=SHAPE)
    n_first = len(traces)
    assert n_first >= 1
    # New data of the same shapes: no retracing, so no new trace-time calls.
    M.params = {"s": jnp.asarray(0.2, jnp.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dq.restore(M(), None, None, 8, "anderson", key=9, image_shape=SHAPE)
    assert len(traces) == n_first


def test_guard_falls_back_on_nonfinite_alpha():
    """With λ = 0 and identical history slots the bordered system is singular; the guard keeps
    the iteration finite by taking a plain step instead."""
    lin = lambda X, a: 0.5 * X + a
    X0 = jnp.zeros((1, 3, 4))
    args = jnp.ones((1, 3, 4))
    sol = fixed_point(lin, Anderson(lam=0.0, relative_ridge=False, tol=1e-10, max_steps=60),
                      X0, args)
    assert sol.converged
    np.testing.assert_allclose(np.asarray(sol.value), 2.0, rtol=1e-8)


def test_bad_solver_arguments():
    with pytest.raises(ValueError, match="stop"):
        Anderson(stop="sometimes")
    with pytest.raises(ValueError, match="damping"):
        Picard(damping=0.0)
    with pytest.raises(TypeError, match="solver"):
        fixed_point(lambda x, a: x, "anderson", jnp.zeros((1, 2)), None)
    with pytest.raises(ValueError, match="method"):
        dq.restore(GaussianModel.create(SHAPE), None, None, 5, "newton", image_shape=SHAPE)


def test_restore_reports_each_images_fate():
    """One image of a batch converges at once (all zeros: a fixed point of a linear ε model),
    the other hits the step limit: each image's own result is reported, and the batch summary
    is the worst."""
    class Linear:
        params = {"s": jnp.asarray(0.3, jnp.float32)}

        @staticmethod
        def eps_fn(params, x, t):
            return x * params["s"]

    op = dq.operators.get("inpainting", image_shape=SHAPE, mask="random", keep_ratio=0.5)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2,) + SHAPE), jnp.float32)
    y = op.A(x).at[1].set(0.0)
    x_T = jax.random.normal(jax.random.key(0), (2,) + SHAPE, jnp.float32).at[1].set(0.0)
    res = dq.restore(Linear(), y, op, 6, "picard", x_T=x_T, noise=jnp.zeros((2,) + SHAPE),
                     max_steps=3, on_max_steps="ignore")
    assert res.stats["image_result"] == ["max_steps", "converged"]
    assert res.stats["image_converged"] == [False, True]
    assert res.stats["converged"] is False and res.stats["result"] == "max_steps"
    assert res.stats["depth"] == [3, 1]
    seq = dq.restore(Linear(), y, op, 6, "sequential", x_T=x_T, noise=jnp.zeros((2,) + SHAPE))
    assert seq.stats["image_converged"] == [True, True]


def test_restore_residual_is_the_stopping_measure():
    """res.stats["residual"] is what the solver's tol bounds (per image), so a converged image
    has it ≤ tol and the step-limit message compares like with like."""
    from deqir_jax.restore import DEFAULT_TOL

    model = GaussianModel.create(SHAPE)
    res = dq.restore(model, None, None, 10, "anderson", image_shape=SHAPE, batch=2, key=0)
    assert res.stats["converged"] and len(res.stats["residual"]) == 2
    assert max(res.stats["residual"]) <= DEFAULT_TOL
    # the per-row measure (the default stop), not the relative residual Stats.residual holds
    rows = np.asarray(res.solution.stats.row_residuals).max(axis=1)
    np.testing.assert_allclose(res.stats["residual"], rows, rtol=1e-6)
    seq = dq.restore(model, None, None, 10, "sequential", image_shape=SHAPE)
    assert seq.stats["residual"] is None
    assert seq.stats["order"] is None and seq.stats["linearize"] is None
