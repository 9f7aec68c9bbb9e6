"""Fixed-point solvers as frozen dataclasses: Anderson acceleration and (damped) Picard.

Both run as ``init`` + repeated ``step`` over one loop state, driven by ONE
``jax.lax.while_loop`` (or a ``lax.scan`` for unrolled differentiation) in
:mod:`deqir_jax.solve.fixed_point`. The iterate ``X`` has layout ``(B, R, ...)``: B independent
problems (images), R rows (timesteps) each.

Stopping rules:
    ``"relative"`` (official): per problem ``‖F(X) − X‖ / (1e-5 + ‖F(X)‖) ≤ tol`` (Frobenius).
    ``"per_row"`` (ParaDiGMS): every row ``‖F(X)_r − X_r‖² / (D · scale_r²) ≤ tol²``, with
    ``scale_r`` the row's noise level (passed as ``row_scale``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from .solution import Result

STOP_RULES = ("relative", "per_row")
MIXINGS = ("per_row", "per_image", "triangular")


def _static_dataclass(cls):
    """A frozen dataclass registered as a pytree with only static fields (hashable)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=[], meta_fields=names)


def _check(solver) -> None:
    if solver.stop not in STOP_RULES:
        raise ValueError(f"stop must be one of {STOP_RULES}, got {solver.stop!r}")
    if not solver.tol > 0:
        raise ValueError(f"tol must be > 0, got {solver.tol}")
    if int(solver.max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1, got {solver.max_steps}")


def _norm(a, axes):
    return jnp.sqrt(jnp.sum(jnp.square(a), axis=axes))


def residuals(x, fx, row_scale):
    """Per-problem relative residual (B,) and per-row scaled residual (B, R)."""
    d = (fx - x).astype(jnp.float32 if x.dtype == jnp.bfloat16 else x.dtype)
    all_axes = tuple(range(1, x.ndim))
    rel = _norm(d, all_axes) / (1e-5 + _norm(fx.astype(d.dtype), all_axes))
    row_axes = tuple(range(2, x.ndim))
    size = 1
    for s in x.shape[2:]:
        size *= s
    row = _norm(d, row_axes) / jnp.sqrt(jnp.asarray(size, d.dtype))
    if row_scale is not None:
        row = row / jnp.asarray(row_scale, d.dtype)[None, :]
    return rel, row


class _Base:
    """Shared loop bookkeeping: residuals, best iterate, per-problem result codes.

    Every problem (image) of the batch stops on its own: once its stopping measure is at or
    below ``tol`` (or its values are non-finite) its iterate, map value and best iterate are
    frozen while the others continue, and its own evaluation count stops. The loop ends when
    every problem has stopped or at ``max_steps`` evaluations.
    """

    def stop_measure(self, rel, row):
        """The stopping measure of each problem, (B,): what ``tol`` bounds."""
        return rel if self.stop == "relative" else jnp.max(row, axis=1)

    def _bookkeep(self, state, x, fx, row_scale, checked):
        rel, row = residuals(x, fx, row_scale)
        measure = self.stop_measure(rel, row)
        k = state["evals"]
        axes = tuple(range(1, x.ndim))
        finite = jnp.all(jnp.isfinite(fx), axis=axes) & jnp.all(jnp.isfinite(x), axis=axes)
        measure = jnp.where(checked, measure, jnp.inf)
        hist = state["history"].at[k - 1].set(
            jnp.where(checked, jnp.max(measure), jnp.nan).astype(jnp.float32))
        better = (measure < state["best_measure"]) & finite
        result = jnp.where(
            ~finite,
            Result.NONFINITE,
            jnp.where(measure <= self.tol, Result.CONVERGED, Result.MAX_STEPS),
        ).astype(jnp.int32)
        state = dict(state, x=x, fx=fx, history=hist, rel=rel, row=row, result=result)
        if self.return_best:
            pick = lambda new, old: jnp.where(
                better.reshape(better.shape + (1,) * (new.ndim - 1)), new, old)
            state.update(
                best_x=pick(x, state["best_x"]),
                best_fx=pick(fx, state["best_fx"]),
                best_rel=pick(rel, state["best_rel"]),
                best_row=pick(row, state["best_row"]),
                best_measure=pick(measure, state["best_measure"]),
            )
        return state

    def _start(self, fn, X0, args, row_scale):
        fx = fn(X0, args)
        B = X0.shape[0]
        rel, row = residuals(X0, fx, row_scale)
        state = dict(
            evals=jnp.asarray(1, jnp.int32),
            image_evals=jnp.ones((B,), jnp.int32),
            history=jnp.full((self.max_steps,), jnp.nan, jnp.float32),
            best_measure=jnp.full((B,), jnp.inf, rel.dtype),
        )
        if self.return_best:
            state.update(best_x=X0, best_fx=fx, best_rel=rel, best_row=row)
        return self._bookkeep(state, X0, fx, row_scale, self._checked(1))

    def _checked(self, evals):
        return evals > self.warmup

    def _stopped(self, state):
        """(B,) problems that have stopped (converged or non-finite)."""
        return state["result"] != Result.MAX_STEPS

    def _advance(self, fn, state, x_new, args, row_scale, **history):
        """Evaluate the map at ``x_new`` and book it; stopped problems keep their state."""
        stopped = self._stopped(state)
        fx = fn(x_new, args)
        state = dict(state, evals=state["evals"] + 1,
                     image_evals=state["image_evals"] + (~stopped).astype(jnp.int32),
                     **history)
        new = self._bookkeep(state, x_new, fx, row_scale, self._checked(state["evals"]))
        keep = lambda a, b: jnp.where(stopped.reshape(stopped.shape + (1,) * (a.ndim - 1)), a, b)
        per_problem = ("x", "fx", "rel", "row", "result", "best_x", "best_fx", "best_rel",
                       "best_row", "best_measure")
        return dict(new, **{k: keep(state[k], new[k]) for k in per_problem if k in state})

    def done(self, state):
        return jnp.all(self._stopped(state)) | (state["evals"] >= self.max_steps)

    def finish(self, state):
        """(value, result (B,), rel, row) from the final loop state."""
        if self.return_best:
            value = state["best_fx"] if self.return_map_value else state["best_x"]
            # A non-finite stop still reports NONFINITE, with the best finite iterate as value.
            result = jnp.where(
                state["result"] == Result.NONFINITE,
                Result.NONFINITE,
                jnp.where(state["best_measure"] <= self.tol, Result.CONVERGED, state["result"]),
            )
            return value, result, state["best_rel"], state["best_row"]
        value = state["fx"] if self.return_map_value else state["x"]
        return value, state["result"], state["rel"], state["row"]


@_static_dataclass
class Picard(_Base):
    """Damped fixed-point iteration ``X ← (1−ω) X + ω F(X)``.

    For the DeqIR map (nilpotent Jacobian) plain Picard (ω = 1) from any start reaches the exact
    sequential trajectory after T map evaluations. Returns ``F(X)`` of the last (or best) iterate.
    """

    damping: float = 1.0
    tol: float = 1e-5
    max_steps: int = 100
    stop: Literal["relative", "per_row"] = "relative"
    return_best: bool = False
    return_map_value: bool = True
    warmup: int = 0

    def __post_init__(self):
        _check(self)
        if not 0 < self.damping <= 1:
            raise ValueError(f"damping must be in (0, 1], got {self.damping}")

    def init(self, fn, X0, args, row_scale=None):
        return self._start(fn, X0, args, row_scale)

    def step(self, fn, state, args, row_scale=None):
        x = state["x"] + self.damping * (state["fx"] - state["x"])
        return self._advance(fn, state, x, args, row_scale)


@_static_dataclass
class Anderson(_Base):
    """Anderson acceleration (type II, the DEQ variant of Bai et al.) in one while_loop.

    With history ``X_j, F_j = F(X_j)`` and ``G_j = F_j − X_j`` (j over the last ``m``), the
    weights α minimise ``‖Σ α_j G_j‖² + λ‖α‖²`` subject to ``Σ α_j = 1`` via the bordered
    (m+1)×(m+1) system, and ``X ← β Σ α_j F_j + (1−β) Σ α_j X_j``. The first ``warmup``
    evaluations are plain steps (``X_{k+1} = F(X_k)``), as the official two set-up steps.

    Attributes:
        m: history size. lam: ridge λ. beta: mixing β. tol, max_steps (map evaluations), stop.
        mixing: ``"per_row"`` solves α separately for every (problem, row) as the official
            code (rows = timesteps); ``"per_image"`` one α per problem; ``"triangular"``
            (ParaTAA's triangular Anderson, Tang et al. ICML 2024) one α per row that
            minimises the residuals of that row and all rows before it, so row r's update
            reads only rows ≤ r, as the triangular Jacobian of a causal map does.
        return_best: return the lowest-residual iterate instead of the last one.
        return_map_value: return ``F(X)`` of that iterate (one free extra Picard step, still an
            affine combination of map outputs, so ``A x̂ = y`` holds) instead of ``X``.
        guard: fall back to a plain step for rows whose α solve is not finite.
        relative_ridge: scale λ by the mean ``‖G_j‖²`` of each row (scale-invariant); the
            official code uses an absolute λ, which drags converged rows (G ≈ 0) towards a
            uniform average of old iterates.
        causal: the map is causal over rows (row r of F(X) reads only rows < r: the DEQ map
            over timesteps, whose Jacobian is strictly lower triangular). Rows whose preceding
            rows have all settled (per-row residual ≤ tol) take the plain step ``F(X)_r``,
            which is then already right, instead of the mixed value: mixing cannot disturb
            them with old iterates, the settled prefix grows by at least one row per
            evaluation, and the solve ends within R + warmup evaluations like Picard while
            the unsettled rows are still accelerated. (For a map that is not causal this
            only replaces some mixed steps by plain ones.) Without it, improved Anderson
            stalled at ~1e-2 from the sequential result until its 2T limit on the trained
            prior in float32 (``experiments/results/bench_solvers.md`` as of commit
            995edc9); ``tests/test_solve.py`` checks the R + 1 bound.
        settle_tol: the per-row scaled residual at or below which the causal rule counts a
            row as settled; None (default): ``tol``. (With ``stop="relative"`` the stop test
            uses another normalisation, so the two may differ; ``inf`` makes every step a
            plain Picard step, 0 settles only exactly-fixed rows.)
    """

    m: int = 5
    lam: float = 1e-3
    beta: float = 1.0
    tol: float = 1e-4
    max_steps: int = 50
    stop: Literal["relative", "per_row"] = "relative"
    mixing: Literal["per_row", "per_image", "triangular"] = "per_row"
    warmup: int = 2
    return_best: bool = True
    return_map_value: bool = True
    guard: bool = True
    relative_ridge: bool = True
    causal: bool = True
    settle_tol: float | None = None

    def __post_init__(self):
        _check(self)
        if self.settle_tol is not None and not self.settle_tol >= 0:
            raise ValueError(f"settle_tol must be >= 0 or None, got {self.settle_tol}")
        if self.m < 1:
            raise ValueError(f"m must be >= 1, got {self.m}")
        if self.mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {self.mixing!r}")
        if not 0 < self.beta <= 1:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if self.warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {self.warmup}")

    @classmethod
    def faithful(cls, **overrides) -> Anderson:
        """The official DeqIR settings (ALGORITHM.md §4): m 5, λ 1e-3, β 1, relative tol 1e-3,
        15 evaluations, two plain warm-up steps, per-row mixing, returns the last mixed iterate,
        no best tracking and no guard."""
        kw = dict(m=5, lam=1e-3, beta=1.0, tol=1e-3, max_steps=15, stop="relative",
                  mixing="per_row", warmup=2, return_best=False, return_map_value=False,
                  guard=False, relative_ridge=False, causal=False)
        kw.update(overrides)
        return cls(**kw)

    def init(self, fn, X0, args, row_scale=None):
        state = self._start(fn, X0, args, row_scale)
        zeros = jnp.zeros((self.m,) + X0.shape, X0.dtype)
        state["X_hist"] = zeros.at[0].set(X0)
        state["F_hist"] = zeros.at[0].set(state["fx"])
        return state

    def _subscripts(self):
        # History is viewed as (m, B, R, D) without merging B and R, so a row axis sharded over
        # devices stays sharded (no all-gather of the history).
        return ("jbrd,kbrd->brjk", "brj,jbrd->brd") if self.mixing != "per_image" else (
            "jbrd,kbrd->bjk", "bj,jbrd->brd")

    def _weights(self, state):
        """α of shape (B, R, m) or (B, m) for the next iterate; invalid slots get weight 0."""
        k = state["evals"]
        x = state["x"]
        dt = jnp.float32 if x.dtype == jnp.bfloat16 else x.dtype
        G = (state["F_hist"] - state["X_hist"]).reshape((self.m,) + x.shape[:2] + (-1,))
        gram = jnp.einsum(self._subscripts()[0], G.astype(dt), G.astype(dt))
        if self.mixing == "triangular":
            # Row r's weights minimise the residuals of rows 1..r together (ParaTAA): the rows
            # that row r depends on, and never a row after it.
            gram = jnp.cumsum(gram, axis=1)
        valid = (jnp.arange(self.m) < jnp.minimum(k, self.m)).astype(dt)
        vv = valid[:, None] * valid[None, :]
        eye = jnp.eye(self.m, dtype=dt)
        lam = self.lam
        if self.relative_ridge:
            # λ relative to the mean squared residual of the valid slots: scale-invariant, so
            # rows that have already converged (tiny G) are not pulled towards uniform α.
            diag = jnp.diagonal(gram, axis1=-2, axis2=-1)
            mean = jnp.sum(diag * valid, axis=-1) / jnp.maximum(jnp.sum(valid), 1)
            lam = self.lam * jnp.maximum(mean, jnp.finfo(dt).tiny)[..., None, None]
        inner = vv * (gram + lam * eye) + (1 - valid)[:, None] * eye
        lead = gram.shape[:-2]
        K = jnp.zeros(lead + (self.m + 1, self.m + 1), dt)
        K = K.at[..., 1:, 1:].set(inner)
        K = K.at[..., 0, 1:].set(valid)
        K = K.at[..., 1:, 0].set(valid)
        rhs = jnp.zeros(lead + (self.m + 1, 1), dt).at[..., 0, 0].set(1)
        alpha = jnp.linalg.solve(K, rhs)[..., 1:, 0]
        latest = jax.nn.one_hot((k - 1) % self.m, self.m, dtype=dt)
        if self.guard:
            bad = ~jnp.all(jnp.isfinite(alpha), axis=-1, keepdims=True)
            alpha = jnp.where(bad, latest, alpha)
        return jnp.where(k < self.warmup, latest, alpha)

    def step(self, fn, state, args, row_scale=None):
        x = state["x"]
        alpha = self._weights(state)
        shp = x.shape

        def mix(H):
            flat = H.reshape((self.m,) + shp[:2] + (-1,))
            return jnp.einsum(self._subscripts()[1], alpha.astype(flat.dtype), flat).reshape(shp)

        plain = state["evals"] < self.warmup
        beta = jnp.where(plain, 1.0, self.beta).astype(x.dtype)
        x_new = beta * mix(state["F_hist"])
        if self.beta != 1.0:
            x_new = x_new + (1 - beta) * mix(state["X_hist"])
        if self.causal:
            settle = self.tol if self.settle_tol is None else self.settle_tol
            settled = (state["row"] <= settle).astype(jnp.int32)  # (B, R)
            prefix = jnp.cumprod(settled, axis=1)  # rows 0..r all settled
            plain_rows = jnp.concatenate([jnp.ones_like(prefix[:, :1]), prefix[:, :-1]], 1)
            plain_rows = plain_rows.reshape(plain_rows.shape + (1,) * (x.ndim - 2))
            x_new = jnp.where(plain_rows > 0, state["fx"], x_new)
        slot = state["evals"] % self.m
        state = self._advance(fn, state, x_new, args, row_scale)
        return dict(state, X_hist=state["X_hist"].at[slot].set(state["x"]),
                    F_hist=state["F_hist"].at[slot].set(state["fx"]))
