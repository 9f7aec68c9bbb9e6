"""Sliding-window Picard iteration over timesteps (ParaDiGMS, Shih et al. 2023).

Only a window of W consecutive rows is evaluated per iteration, so network compute and
activation memory are bound by W instead of T. Rows before the window are frozen: the map is
triangular, so once a prefix has converged it stays converged and is never evaluated again.
The window restarts the affine recurrence from the last frozen row (``u_{s−1} = x_{s−1}``),
slides forward past every leading row whose ParaDiGMS residual
``‖F(X)_r − X_r‖ / (√D σ_r) ≤ tol`` (σ_r the row's noise level), and rows not yet reached are
initialised with the window's last row. The first unfrozen row reads only frozen rows, so it is
exact once evaluated: at least one row is frozen per iteration and the solve ends within T
iterations (W = 1 is the sequential sampler).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..solve.solution import Result, Solution, Stats
from ..solve.solvers import _static_dataclass, residuals
from .deq_map import DEQMap, initial_trajectory
from .problem import Problem


@_static_dataclass
class SlidingWindow:
    """Windowed Picard solver for the DeqIR map (forward only; no custom gradient).

    Attributes:
        window: rows evaluated per iteration (W ≤ T).
        tol: per-row tolerance of the ParaDiGMS rule, relative to the row's noise level.
        max_steps: iteration limit (default 2T is set by :func:`deqir_jax.restore`).
    """

    window: int = 8
    tol: float = 1e-3
    max_steps: int = 1000

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


def windowed_solve(deq_map: DEQMap, solver: SlidingWindow, problem: Problem) -> Solution:
    """Solve the DeqIR fixed point with a sliding window (see module docstring)."""
    T = problem.num_steps
    W = min(solver.window, T)
    coeffs = problem.coeffs.astype(problem.x_T.dtype)
    times = jnp.asarray(coeffs.t, jnp.int32)
    scale = coeffs.sqrt_1ma
    fresh = problem.noise.shape[1] > 1
    rows = jnp.arange(T)
    B = problem.x_T.shape[0]

    def body(st):
        X, s = st["X"], st["s"]
        start = jnp.minimum(s, T - W)
        window = lambda a, axis: jax.lax.dynamic_slice_in_dim(a, start, W, axis)
        Xw = window(X, 1)
        prev = jax.lax.dynamic_index_in_dim(X, jnp.maximum(start - 1, 0), 1, keepdims=False)
        init = jnp.where(start == 0, problem.x_T.astype(X.dtype), prev)
        cw = dataclasses.replace(
            coeffs, **{f: window(getattr(coeffs, f), 0) for f in
                       ("sqrt_a", "sqrt_1ma", "sqrt_a_next", "c1", "c2", "lam")})
        xin = jnp.concatenate([init[:, None], Xw[:, :-1]], axis=1)
        eps = deq_map.evaluate(problem.params, xin, window(times, 0))
        noise = window(problem.noise, 1) if fresh else problem.noise
        Fw = deq_map.combine(eps, problem, coeffs=cw, noise=noise, init=init)
        _, row = residuals(Xw, Fw, window(scale, 0))
        row = jnp.max(row, axis=0)  # (W,) worst image
        idx = start + jnp.arange(W)
        frozen = idx < s
        new = jnp.where(frozen[None, :, None, None, None], Xw, Fw)
        X = jax.lax.dynamic_update_slice_in_dim(X, new, start, 1)
        ahead = (rows >= start + W)[None, :, None, None, None]
        X = jnp.where(ahead, new[:, -1:], X)
        # The first unfrozen row reads only frozen rows: its new value is already exact.
        ok = frozen | (idx == s) | (row <= solver.tol)
        lead = jnp.sum(jnp.cumprod(ok.astype(jnp.int32)))
        finite = jnp.all(jnp.isfinite(new))
        row_res = jax.lax.dynamic_update_slice_in_dim(
            st["row_res"], jnp.broadcast_to(jnp.where(frozen, 0.0, row), (B, W)).astype(
                st["row_res"].dtype), start, 1)
        hist = st["history"].at[st["it"]].set(
            jnp.max(jnp.where(frozen, 0.0, row)).astype(st["history"].dtype))
        return dict(X=X, s=jnp.maximum(s, start + lead), it=st["it"] + 1, finite=finite,
                    row_res=row_res, history=hist)

    def cond(st):
        return (st["s"] < T) & (st["it"] < solver.max_steps) & st["finite"]

    X0 = initial_trajectory(problem)
    st = dict(X=X0, s=jnp.asarray(0), it=jnp.asarray(0, jnp.int32), finite=jnp.asarray(True),
              row_res=jnp.full((B, T), jnp.inf, jnp.float32),
              history=jnp.full((solver.max_steps,), jnp.nan, jnp.float32))
    st = jax.lax.while_loop(cond, body, st)
    result = jnp.where(~st["finite"], Result.NONFINITE,
                       jnp.where(st["s"] >= T, Result.CONVERGED, Result.MAX_STEPS))
    stats = Stats(steps=st["it"], map_evals=st["it"], row_evals=st["it"] * W,
                  residual_history=st["history"], residual=jnp.max(st["row_res"], axis=1),
                  row_residuals=st["row_res"], image_steps=jnp.full((B,), st["it"]),
                  image_result=jnp.full((B,), result, jnp.int32))
    return Solution(value=st["X"], result=result.astype(jnp.int32), stats=stats)
