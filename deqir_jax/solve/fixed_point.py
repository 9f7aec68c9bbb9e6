"""``fixed_point(fn, solver, X0, args, adjoint=...)``: the one entry point, and its gradients.

The forward solve is one ``jax.lax.while_loop`` (compiled once per shape). Gradients with respect
to ``args`` (never ``X0``) follow the ``adjoint`` strategy (ALGORITHM.md §5):

* :class:`Implicit` (default): a ``jax.custom_vjp`` whose backward pass solves the adjoint fixed
  point ``u = g + (∂F/∂X)ᵀ u`` at the equilibrium X* with its own solver (one VJP of the batched
  map per iteration), then returns ``uᵀ ∂F/∂args``. Exact at a fixed point.
* :class:`RowScan`: for a causal row map (the DEQ map), back-substitution over rows at the
  equilibrium, T single-row VJPs: exact, and the cost of one reverse pass of the sequential
  sampler.
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
import numpy as np

from .solution import Result, Solution, Stats
from .solvers import Anderson, Picard, _static_dataclass
from .window import SlidingWindow


@_static_dataclass
class Implicit:
    """Implicit-function-theorem gradients. ``solver`` solves the adjoint system in parallel
    rounds, one VJP of the whole map each (default: triangular Anderson with relative tol 1e-6
    and R + 2 evaluations, exact for the nilpotent DeqIR Jacobian; the system is solved with its
    rows reversed, so it is causal like the forward map). When the adjoint solve does not
    converge the gradient is NaN (``nan_on_failure``) so it cannot pass unseen."""

    solver: Anderson | Picard | None = None
    nan_on_failure: bool = True


@_static_dataclass
class RowScan:
    """The exact backward pass of a causal row map at its equilibrium, as a reverse scan over
    rows: at the fixed point every row is one step of the sequential chain from the row before
    it, so the adjoint system (strictly upper triangular) is solved by back-substitution, one
    single-row VJP per row (T in all), like reverse mode through the sequential sampler but
    without storing its activations (the trajectory is the equilibrium). What a CPU wants;
    :class:`Implicit` solves the same system with whole-map VJPs in parallel rounds.

    The map must provide ``row_step(i, x_prev, args)`` (row i from the row before it, i
    0-based), ``row_inputs(X, args)`` (each row's predecessor, ``[x_0, X_1, …, X_{R−1}]``) and
    ``add_input_cotangent(g_args, g_x0)`` (the cotangent of the chain's start ``x_0`` added
    into the args' cotangent), as :class:`~deqir_jax.diffusion.DEQMap` does.
    """


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
        image_steps=state["image_evals"],
        image_result=result.astype(jnp.int32),
    )
    return Solution(value=value, result=jnp.max(result).astype(jnp.int32), stats=stats)


def _forward(fn, solver, X0, args, row_scale):
    if isinstance(solver, SlidingWindow):
        return solver.solve(fn, X0, args, row_scale)
    return _solution(solver, _drive_while(fn, solver, X0, args, row_scale), X0)


def _default_adjoint_solver(X0):
    """Triangular Anderson on the row-reversed adjoint system (causal, like the forward map):
    accelerated, and exact within R + 2 evaluations by the settled-prefix rule."""
    rows = X0.shape[1] if X0.ndim > 1 else 1
    return Anderson(tol=1e-6, max_steps=rows + 2, stop="relative", mixing="triangular",
                    settle_tol=0.0)


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
    # For a causal map (row r reads rows < r) the adjoint system is anti-causal; solved with
    # its rows reversed it is causal again, so a causal solver's rules (the settled prefix,
    # triangular mixing) apply to it as they do forward.
    flip = lambda a: jnp.flip(a, axis=1) if a.ndim > 1 else a
    adj = _forward(lambda v, gg: gg + flip(vjp_x(flip(v))[0]), adj_solver, flip(g), flip(g),
                   None)
    u = flip(adj.value)
    if adjoint.nan_on_failure:
        u = jnp.where(adj.result == Result.CONVERGED, u, jnp.nan)
    _, vjp_args = jax.vjp(lambda a: fn(x_star, a), args)
    (g_args,) = vjp_args(u)
    zero_rs = None if row_scale is None else jnp.zeros_like(row_scale)
    return jnp.zeros_like(X0), g_args, zero_rs


_implicit_solve.defvjp(_implicit_fwd, _implicit_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _rowscan_solve(fn, solver, X0, args, row_scale):
    return _forward(fn, solver, X0, args, row_scale)


def _rowscan_fwd(fn, solver, X0, args, row_scale):
    return _implicit_fwd(fn, solver, None, X0, args, row_scale)


def _rowscan_bwd(fn, solver, res, cot):
    x_star, args, X0, row_scale = res
    g = cot.value
    prev = jax.lax.stop_gradient(fn.row_inputs(x_star, args))
    # Differentiate the floating leaves of args only (integer leaves get float0 cotangents).
    leaves, tree = jax.tree_util.tree_flatten(args)
    inexact = [jnp.issubdtype(jnp.result_type(a), jnp.inexact) for a in leaves]
    floats = [a for a, f in zip(leaves, inexact, strict=True) if f]

    def merge(fl):
        it = iter(fl)
        return jax.tree_util.tree_unflatten(
            tree, [next(it) if f else a for a, f in zip(leaves, inexact, strict=True)])

    def body(carry, i):
        lam, acc = carry
        x_prev = jax.lax.dynamic_index_in_dim(prev, i, axis=1, keepdims=False)
        _, vjp = jax.vjp(lambda x, fl: fn.row_step(i, x, merge(fl)), x_prev, floats)
        cot_i = jax.lax.dynamic_index_in_dim(g, i, axis=1, keepdims=False) + lam
        g_x, g_fl = vjp(cot_i.astype(x_prev.dtype))
        return (g_x, [a + b for a, b in zip(acc, g_fl, strict=True)]), None

    rows = x_star.shape[1]
    lam0 = jnp.zeros_like(prev[:, 0])
    acc0 = [jnp.zeros_like(a) for a in floats]
    (lam, g_fl), _ = jax.lax.scan(body, (lam0, acc0), jnp.arange(rows - 1, -1, -1))
    it = iter(g_fl)
    g_args = jax.tree_util.tree_unflatten(tree, [
        next(it) if f else np.zeros(jnp.shape(a), jax.dtypes.float0)
        for a, f in zip(leaves, inexact, strict=True)])
    g_args = fn.add_input_cotangent(g_args, lam)
    zero_rs = None if row_scale is None else jnp.zeros_like(row_scale)
    return jnp.zeros_like(X0), g_args, zero_rs


_rowscan_solve.defvjp(_rowscan_fwd, _rowscan_bwd)


def fixed_point(
    fn: Callable,
    solver: Anderson | Picard | SlidingWindow,
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
        solver: :class:`Anderson`, :class:`Picard` or, for a causal row map with a
            ``window`` method (the DEQ map), :class:`SlidingWindow` (static hyperparameters).
        X0: (B, R, ...) start; B problems of R rows.
        args: pytree of everything the map reads; gradients flow to it.
        adjoint: gradient strategy, default :class:`Implicit`; :class:`RowScan` for maps
            that provide the row structure (the DEQ map).
        row_scale: (R,) per-row scales for ``stop="per_row"`` (e.g. the noise level of each
            timestep); None means 1.

    Returns:
        :class:`Solution` with ``value``, ``result`` (:class:`Result` code) and ``stats``.
    """
    if not isinstance(solver, (Anderson, Picard, SlidingWindow)):
        raise TypeError(f"solver must be Anderson(...), Picard(...) or SlidingWindow(...), got "
                        f"{type(solver).__name__}")
    adjoint = Implicit() if adjoint is None else adjoint
    if isinstance(adjoint, RowScan):
        missing = [a for a in ("row_step", "row_inputs", "add_input_cotangent")
                   if not hasattr(fn, a)]
        if missing:
            raise TypeError(f"adjoint=RowScan() needs a causal row map with {missing} (as "
                            f"DEQMap has); {type(fn).__name__} has not")
        return _rowscan_solve(fn, solver, X0, args, row_scale)
    if isinstance(adjoint, Implicit):
        return _implicit_solve(fn, solver, adjoint, X0, args, row_scale)
    if isinstance(adjoint, Unrolled):
        if isinstance(solver, SlidingWindow):
            raise TypeError("adjoint=Unrolled() unrolls Anderson or Picard steps; the sliding "
                            "window's gradients come from Implicit(), RowScan() or Phantom()")
        return _solution(solver, _drive_scan(fn, solver, X0, args, row_scale), X0)
    if isinstance(adjoint, Phantom):
        sol = jax.lax.stop_gradient(_forward(fn, solver, X0, args, row_scale))
        x = sol.value
        for _ in range(adjoint.k):
            x = (1 - adjoint.tau) * x + adjoint.tau * fn(x, args)
        return dataclasses.replace(sol, value=x)
    raise TypeError(
        f"adjoint must be Implicit(), RowScan(), Phantom() or Unrolled(), got {adjoint!r}")
