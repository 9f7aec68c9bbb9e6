"""Sliding-window Picard iteration over rows (ParaDiGMS, Shih et al. 2023), a solver that
:func:`~deqir_jax.solve.fixed_point` accepts like :class:`Anderson` and :class:`Picard`.

Only a window of W consecutive rows is evaluated per iteration, so network compute and
activation memory are bound by W instead of R. Rows before the window are frozen: the map is
causal (row r reads rows < r), so once a prefix has converged it stays converged and is never
evaluated again. The window restarts the map from the last frozen row, slides forward past
every leading row whose ParaDiGMS residual ``‖F(X)_r − X_r‖ / (√D σ_r) ≤ tol`` (σ_r the
``row_scale``), and rows not yet reached are initialised with the window's last row. The first
unfrozen row reads only frozen rows, so it is exact once evaluated: at least one row is frozen
per iteration and the solve ends within R iterations (W = 1 is the sequential sampler).

The map must provide ``window(X, args, start, size)``: its rows ``start .. start+size−1``
evaluated from the current ``X`` (row ``start − 1`` as the state before the window), as
:class:`~deqir_jax.diffusion.DEQMap` does. Gradients come from ``fixed_point``'s adjoints
(:class:`Implicit`, :class:`RowScan`, :class:`Phantom`), which only need the equilibrium.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .solution import Result, Solution, Stats
from .solvers import _static_dataclass, residuals


@_static_dataclass
class SlidingWindow:
    """Windowed Picard solver for a causal row map.

    Attributes:
        window: rows evaluated per iteration (W ≤ R).
        tol: per-row tolerance of the ParaDiGMS rule, relative to the row's ``row_scale``.
        max_steps: iteration limit.
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

    def stop_measure(self, rel, row):
        """The stopping measure of each problem, (B,): its largest per-row residual."""
        return jnp.max(row, axis=1)

    def solve(self, fn, X0, args, row_scale=None) -> Solution:
        """Solve ``X = fn(X, args)`` from ``X0`` (B, R, ...) (see the module docstring)."""
        if not hasattr(fn, "window"):
            raise TypeError(f"SlidingWindow needs a causal row map with a window(X, args, "
                            f"start, size) method (as DEQMap has); {type(fn).__name__} has not")
        B, R = X0.shape[:2]
        W = min(self.window, R)
        scale = jnp.ones((R,), jnp.float32) if row_scale is None else jnp.asarray(row_scale)
        rows = jnp.arange(R)
        expand = lambda m: m.reshape(m.shape + (1,) * (X0.ndim - m.ndim))

        def body(st):
            X, s = st["X"], st["s"]
            start = jnp.minimum(s, R - W)
            Xw = jax.lax.dynamic_slice_in_dim(X, start, W, 1)
            Fw = fn.window(X, args, start, W)
            _, row = residuals(Xw, Fw, jax.lax.dynamic_slice_in_dim(scale, start, W))
            row = jnp.max(row, axis=0)  # (W,) worst image
            idx = start + jnp.arange(W)
            frozen = idx < s
            new = jnp.where(expand(frozen[None, :]), Xw, Fw)
            X = jax.lax.dynamic_update_slice_in_dim(X, new, start, 1)
            X = jnp.where(expand((rows >= start + W)[None, :]), new[:, -1:], X)
            # The first unfrozen row reads only frozen rows: its new value is already exact.
            ok = frozen | (idx == s) | (row <= self.tol)
            lead = jnp.sum(jnp.cumprod(ok.astype(jnp.int32)))
            shown = jnp.where(frozen, 0.0, row)
            row_res = jax.lax.dynamic_update_slice_in_dim(
                st["row_res"], jnp.broadcast_to(shown, (B, W)).astype(jnp.float32), start, 1)
            hist = st["history"].at[st["it"]].set(jnp.max(shown).astype(jnp.float32))
            return dict(X=X, s=jnp.maximum(s, start + lead), it=st["it"] + 1,
                        finite=jnp.all(jnp.isfinite(new)), row_res=row_res, history=hist)

        def cond(st):
            return (st["s"] < R) & (st["it"] < self.max_steps) & st["finite"]

        st = dict(X=X0, s=jnp.asarray(0), it=jnp.asarray(0, jnp.int32),
                  finite=jnp.asarray(True), row_res=jnp.full((B, R), jnp.inf, jnp.float32),
                  history=jnp.full((self.max_steps,), jnp.nan, jnp.float32))
        st = jax.lax.while_loop(cond, body, st)
        result = jnp.where(~st["finite"], Result.NONFINITE,
                           jnp.where(st["s"] >= R, Result.CONVERGED, Result.MAX_STEPS))
        stats = Stats(steps=st["it"], map_evals=st["it"], row_evals=st["it"] * W,
                      residual_history=st["history"], residual=jnp.max(st["row_res"], axis=1),
                      row_residuals=st["row_res"], image_steps=jnp.full((B,), st["it"]),
                      image_result=jnp.full((B,), result, jnp.int32))
        return Solution(value=st["X"], result=result.astype(jnp.int32), stats=stats)
