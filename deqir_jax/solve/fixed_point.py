"""``fixed_point(fn, solver, X0, args, adjoint=...)``: the one entry point, and its gradients.

The forward solve is one ``jax.lax.while_loop`` (compiled once per shape). Gradients with respect
to ``args`` (never ``X0``) follow the ``adjoint`` strategy (ALGORITHM.md §5):

* :class:`Implicit` (default): a ``jax.custom_vjp`` whose backward pass solves the adjoint fixed
  point ``u = g + (∂F/∂X)ᵀ u`` at the equilibrium X* with its own solver (one VJP of the batched
  map per iteration), then returns ``uᵀ ∂F/∂args``. Exact at a fixed point.
* :class:`Phantom` (the official DeqIR choice): k damped steps ``X ← (1−τ) X + τ F(X)`` from the
  (non-differentiated) solution, differentiated through. The returned value includes them.
* :class:`Unrolled`: the solver run for exactly ``max_steps`` iterations in a ``lax.scan``
  (iterates frozen once converged) and differentiated by ordinary reverse mode, for reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from .solution import Result, Solution, Stats
from .solvers import Anderson, Picard, _static_dataclass


@_static_dataclass
class Implicit:
    """Implicit-function-theorem gradients. ``solver`` solves the adjoint system (default: plain
    Picard, which is exact after T steps for the nilpotent DeqIR Jacobian). When the adjoint
    solve does not converge the gradient is NaN (``nan_on_failure``) so it cannot pass unseen."""

    solver: Anderson | Picard | None = None
    nan_on_failure: bool = True


@_static_dataclass
class Phantom:
    """Phantom gradient: ``k`` damped steps with factor ``tau`` (official: τ 0.1, k 1)."""

    tau: float = 0.1
    k: int = 1


@_static_dataclass
class Unrolled:
    """Differentiate through all ``solver.max_steps`` iterations (memory grows with the count)."""


def _drive_while(fn, solver, X0, args, row_scale):
    state = solver.init(fn, X0, args, row_scale)
    state = jax.lax.while_loop(
        lambda s: ~solver.done(s), lambda s: solver.step(fn, s, args, row_scale), state
    )
    return state


def _drive_scan(fn, solver, X0, args, row_scale):
    state = solver.init(fn, X0, args, row_scale)

    def body(s, _):
        new = solver.step(fn, s, args, row_scale)
        done = solver.done(s)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), s, new), None

    state, _ = jax.lax.scan(body, state, None, length=solver.max_steps - 1)
    return state


def _solution(solver, state, X0):
    value, result, rel, row = solver.finish(state)
    rows = X0.shape[1] if X0.ndim > 1 else 1
    stats = Stats(
        steps=state["evals"],
        map_evals=state["evals"],
        row_evals=state["evals"] * rows,
        residual_history=state["history"],
        residual=rel,
        row_residuals=row,
    )
    return Solution(value=value, result=result.astype(jnp.int32), stats=stats)


def _forward(fn, solver, X0, args, row_scale):
    return _solution(solver, _drive_while(fn, solver, X0, args, row_scale), X0)


def _default_adjoint_solver(X0):
    rows = X0.shape[1] if X0.ndim > 1 else 1
    return Picard(tol=1e-6, max_steps=rows + 2, stop="relative")


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _implicit_solve(fn, solver, adjoint, X0, args, row_scale):
    return _forward(fn, solver, X0, args, row_scale)


def _implicit_fwd(fn, solver, adjoint, X0, args, row_scale):
    sol = _forward(fn, solver, X0, args, row_scale)
    return sol, (sol.value, args, X0, row_scale)


def _implicit_bwd(fn, solver, adjoint, res, cot):
    x_star, args, X0, row_scale = res
    g = cot.value
    _, vjp_x = jax.vjp(lambda x: fn(x, args), x_star)
    adj_solver = adjoint.solver or _default_adjoint_solver(X0)
    adj = _forward(lambda u, gg: gg + vjp_x(u)[0], adj_solver, g, g, None)
    u = adj.value
    if adjoint.nan_on_failure:
        u = jnp.where(adj.result == Result.CONVERGED, u, jnp.nan)
    _, vjp_args = jax.vjp(lambda a: fn(x_star, a), args)
    (g_args,) = vjp_args(u)
    zero_rs = None if row_scale is None else jnp.zeros_like(row_scale)
    return jnp.zeros_like(X0), g_args, zero_rs


_implicit_solve.defvjp(_implicit_fwd, _implicit_bwd)


def fixed_point(
    fn: Callable,
    solver: Anderson | Picard,
    X0: jax.Array,
    args,
    *,
    adjoint: Implicit | Phantom | Unrolled | None = None,
    row_scale: jax.Array | None = None,
) -> Solution:
    """Solve ``X = fn(X, args)`` from ``X0``.

    Args:
        fn: the map, a pure function ``fn(X, args) -> X`` (nothing closed over that needs a
            gradient); hashable (a module-level function or a frozen dataclass).
        solver: :class:`Anderson` or :class:`Picard` (static hyperparameters).
        X0: (B, R, ...) start; B problems of R rows.
        args: pytree of everything the map reads; gradients flow to it.
        adjoint: gradient strategy, default :class:`Implicit`.
        row_scale: (R,) per-row scales for ``stop="per_row"`` (e.g. the noise level of each
            timestep); None means 1.

    Returns:
        :class:`Solution` with ``value``, ``result`` (:class:`Result` code) and ``stats``.
    """
    if not isinstance(solver, (Anderson, Picard)):
        raise TypeError(f"solver must be Anderson(...) or Picard(...), got {type(solver).__name__}")
    adjoint = Implicit() if adjoint is None else adjoint
    if isinstance(adjoint, Implicit):
        return _implicit_solve(fn, solver, adjoint, X0, args, row_scale)
    if isinstance(adjoint, Unrolled):
        return _solution(solver, _drive_scan(fn, solver, X0, args, row_scale), X0)
    if isinstance(adjoint, Phantom):
        sol = jax.lax.stop_gradient(_forward(fn, solver, X0, args, row_scale))
        x = sol.value
        for _ in range(adjoint.k):
            x = (1 - adjoint.tau) * x + adjoint.tau * fn(x, args)
        return dataclasses.replace(sol, value=x)
    raise TypeError(f"adjoint must be Implicit(), Phantom() or Unrolled(), got {adjoint!r}")
