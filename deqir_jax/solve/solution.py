"""What a fixed-point solve returns: the value, a result code and statistics (data, not errors)."""

from __future__ import annotations

import dataclasses
import enum

import jax


class Result(enum.IntEnum):
    """Result codes of :func:`~deqir_jax.solve.fixed_point` (an int32 scalar inside jit)."""

    CONVERGED = 0
    MAX_STEPS = 1
    NONFINITE = 2

    def message(self) -> str:
        return {
            Result.CONVERGED: "converged",
            Result.MAX_STEPS: "did not converge within the step limit (max_steps)",
            Result.NONFINITE: "stopped on non-finite values (NaN/Inf) in the map or the iterate",
        }[self]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Stats:
    """Solver statistics (arrays; batch axis B first where per-problem).

    Attributes:
        steps: iterations of the solver loop (map evaluations), int32 scalar.
        map_evals: evaluations of the map F, int32 scalar (equals ``steps``).
        row_evals: network rows evaluated per problem (NFE per image), int32 scalar.
        residual_history: (max_steps,) the stopping residual after each evaluation, NaN after
            the last one.
        residual: (B,) final relative residual ``‖F(X) − X‖/(1e-5 + ‖F(X)‖)`` per problem
            (:class:`SlidingWindow`: its largest per-row residual); the solver's
            ``stop_measure(residual, row_residuals)`` is what its ``tol`` bounds.
        row_residuals: (B, R) final per-row residual ``‖F(X)_r − X_r‖/(√D · scale_r)``.
        image_steps: (B,) map evaluations each problem took before it stopped (problems stop
            on their own; a stopped one is frozen while the others continue).
        image_result: (B,) int32 :class:`Result` code of each problem (``Solution.result``
            is the worst of them).
    """

    steps: jax.Array
    map_evals: jax.Array
    row_evals: jax.Array
    residual_history: jax.Array
    residual: jax.Array
    row_residuals: jax.Array
    image_steps: jax.Array
    image_result: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Solution:
    """``value`` (same shape as X0), ``result`` (int32 :class:`Result` code, the worst over
    the problems of the batch; per problem in ``stats.image_result``), ``stats``."""

    value: jax.Array
    result: jax.Array
    stats: Stats

    @property
    def converged(self) -> bool:
        return int(self.result) == Result.CONVERGED

    def message(self) -> str:
        return Result(int(self.result)).message()
