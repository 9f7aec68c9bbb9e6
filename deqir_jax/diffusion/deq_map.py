"""The joint fixed-point map of DeqIR (ALGORITHM.md §3).

For the stacked trajectory ``X = [x_1; …; x_T]`` (shape (B, T, H, W, C)), one evaluation
``X ← F(X; problem)`` is

1. one batched network call on all B·T rows: inputs ``[x_T, x_1, …, x_{T−1}]`` at times
   ``[τ_1, …, τ_T]`` (optionally in chunks with ``jax.lax.map``),
2. the affine prefix scan over timesteps (the paper's cumulative sum), separately in the null
   space ``Q`` and the range space ``P`` of A:
   ``Q x_i = d_i Q x_{i−1} + e_i Q ε_i + c1_i Q z_i``,
   ``P x_i = d_i(1−λ_i) P x_{i−1} + e'_i P ε_i + c1_i P z_i + λ_i √a'_i A⁺y``,
3. ``x_i = Q x_i + P x_i``.

Row i depends only on rows < i, so the Jacobian is strictly block lower-triangular and the unique
fixed point is the sequential trajectory of :func:`~deqir_jax.diffusion.sequential_sample`. The
coefficients come from the same :class:`StepCoefficients` as the sequential step.

With ``linearize=s²`` (:class:`DEQMap`) the scan also carries the slope ``g_i`` of a Gaussian
model of ε (:func:`gaussian_eps_slope`): the decays become ``d_i + e_i g_i`` (and
``d_i(1−λ_i) + e'_i g_i``) and ε becomes ``ε_i − g_i x_{i−1}``, the same recurrence written
around a better linear guess of how ε moves with its input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .problem import Problem
from .samplers import chain_step
from .scan import affine_scan, shard_shift, sharded_affine_scan


def check_order(order) -> None:
    """ValueError unless ``order`` is None (full order) or a positive integer."""
    if order is not None and (isinstance(order, bool) or not isinstance(order, (int, np.integer))
                              or order < 1):
        raise ValueError(f"order must be a positive integer or None (full order), got {order!r}")


def check_linearize(linearize) -> None:
    """ValueError unless ``linearize`` is None, a finite positive number, or a tuple of two
    (the null- and the range-space variance)."""
    if linearize is None:
        return
    values = linearize if isinstance(linearize, tuple) and len(linearize) == 2 else (linearize,)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not (
                np.isfinite(v) and v > 0):
            raise ValueError(
                "linearize must be None (the official map), the variance s² > 0 of the Gaussian "
                "whose ε slope the map solves exactly, or a tuple (s²_null, s²_range) of two, "
                f"got {linearize!r}")


def parse_linearize(text: str, sep: str = ","):
    """A ``linearize`` value from text: one variance (``"0.1"``) or a null-space/range pair
    separated by ``sep`` (``"0.1,1"``), checked as :class:`DEQMap` checks it (ValueError)."""
    parts = tuple(float(v) for v in text.split(sep))
    value = parts[0] if len(parts) == 1 else parts
    check_linearize(value)
    return value


def linearize_variances(linearize) -> tuple[float, float]:
    """``(s²_null, s²_range)`` of a ``linearize`` value that is not None."""
    if isinstance(linearize, tuple):
        return float(linearize[0]), float(linearize[1])
    return float(linearize), float(linearize)


def describe_linearize(linearize) -> str:
    """A short human description: ``official`` or the variance(s) of the linearized map."""
    if linearize is None:
        return "official"
    null, range_ = linearize_variances(linearize)
    if null == range_:
        return f"linearized (Gaussian ε slope, s² = {null:g})"
    return f"linearized (Gaussian ε slope, s² = {null:g} null space, {range_:g} range space)"


def gaussian_eps_slope(coeffs, variance):
    """``g_i = √(1−a_i)/(a_i s² + 1 − a_i)``: the slope dε/dx at row i's input time of the
    exact ε of white Gaussian data with per-pixel variance ``s²`` (for data N(μ, s² I),
    ``ε(x) = √(1−a)(x − √a μ)/(a s² + 1 − a)``), shape (T,) like the coefficients."""
    a, one_minus_a = coeffs.sqrt_a**2, coeffs.sqrt_1ma**2
    return coeffs.sqrt_1ma / (a * variance + one_minus_a)


@dataclasses.dataclass(frozen=True)
class DEQMap:
    """``F(X, problem)`` for the DeqIR fixed point (hashable; usable as a static jit argument).

    Attributes:
        eps_fn: ``eps_fn(params, x, t) -> ε`` on (N, H, W, C) inputs, ε channels only.
        chunk_size: evaluate the network on at most this many rows at a time
            (``jax.lax.map`` with ``batch_size``), to bound activation memory; None = all rows.
        axis_name: set when the map runs inside ``jax.shard_map`` with the timestep axis split
            over this mesh axis (see :mod:`deqir_jax.parallel`): X, the coefficients and fresh
            noises are then the local block of rows, the row shift uses one ``ppermute`` and
            the prefix scan carries across shards in log2(devices) ``ppermute`` rounds.
        order: the order k of the nonlinear system (ParaTAA, Tang et al. 2024). None (the
            official DeqIR map): row i is written in terms of x_T and all ε_1..ε_i (the
            closed form of §3, a prefix scan). k: row i is k DDNM steps from the current
            value of row i−k, with the ε of the current rows i−k..i−1 (k = 1: one step from
            the network input of row i itself, so a trajectory whose rows already agree stays
            put; k ≥ T is the full-order map). Every order has the same unique fixed point,
            the sequential trajectory; they differ in how errors in the iterate propagate.
        linearize: None (the official map): inside the prefix scan ε is a given input, so an
            error in row i−1 that the network would remove from x̂0 (ε moves with it) reaches
            every later row through ε instead, with a gain near 1 when the ε term is not
            cancelled by the sampler's own ε weight (DDNM's η = 1: ``etw = 1``). A variance
            s² > 0: ε is split into the slope g_i of the ε of white Gaussian data with
            variance s² (:func:`gaussian_eps_slope`) and the rest, ``ε = g_i x + r``; the
            slope enters the scan's decay (``D_i + E_i g_i``), so that part of the chain is
            solved exactly in every evaluation, and only ``r`` is held fixed. A tuple
            ``(s²_null, s²_range)``: Gaussian data with one variance in the null space of A
            and another in its range (the slope ``g_null Q + g_range P``, still solved by the
            two scans, which run separately in the two spaces anyway). The fixed point and
            the row structure are unchanged (order 1 is the same map either way); how errors
            travel is not (``experiments/results/bench_depth*.md``).
    """

    eps_fn: Callable
    chunk_size: int | None = None
    axis_name: str | None = None
    order: int | None = None
    linearize: float | None = None

    def __post_init__(self):
        check_order(self.order)
        check_linearize(self.linearize)

    def _shift(self, X, first):
        """``[first, X_1, …, X_{R−1}]``: every row moved one down, ``first`` in front."""
        if self.axis_name is not None:
            first = shard_shift(X[:, -1], first, self.axis_name)
        return jnp.concatenate([first[:, None], X[:, :-1]], axis=1)

    def network_inputs(self, X, problem: Problem):
        """The shifted stack ``[x_T, x_1, …, x_{T−1}]`` fed to the network, (B, T, H, W, C)."""
        return self._shift(X, problem.x_T.astype(X.dtype))

    def times(self, rows: int, problem: Problem):
        """The network times of the (local) rows, int32 (rows,)."""
        t = jnp.asarray(problem.coeffs.t, jnp.int32)
        if self.axis_name is None:
            return t
        start = jax.lax.axis_index(self.axis_name) * rows
        return jax.lax.dynamic_slice_in_dim(t, start, rows)

    def scan(self, decay, v, init):
        """The affine prefix scan over (local) rows, carried across shards when sharded."""
        if self.axis_name is None:
            return affine_scan(decay, v, init)
        return sharded_affine_scan(decay, v, init, self.axis_name)

    def evaluate(self, params, xin, t):
        """The network on (B, R, H, W, C) inputs at times t (R,): one batched call of B·R rows
        (or chunks of ``chunk_size`` rows)."""
        B, T = xin.shape[:2]
        flat = xin.reshape((B * T,) + xin.shape[2:])
        t = jnp.tile(t, B)
        if self.chunk_size is None or self.chunk_size >= B * T:
            eps = self.eps_fn(params, flat, t)
        else:
            eps = jax.lax.map(
                lambda a: self.eps_fn(params, a[0][None], a[1][None])[0],
                (flat, t),
                batch_size=self.chunk_size,
            )
        return eps.astype(xin.dtype).reshape(xin.shape)

    def combine(self, eps, problem: Problem, coeffs=None, noise=None, init=None, base=None):
        """Steps 2-3: the trajectory implied by the per-row ε (B, T, H, W, C).

        ``coeffs``, ``noise`` and ``init`` (the state before the first row, x_T by default)
        default to the problem's; a sliding window passes its own rows and starting state.
        ``base`` (the network inputs, shifted rows) is required by a finite ``order`` and by
        ``linearize``.
        """
        dtype = eps.dtype
        c = (problem.coeffs if coeffs is None else coeffs).astype(dtype)
        shape = (1, -1, 1, 1, 1)
        col = lambda a: jnp.reshape(a, shape)
        decay_null, decay_range = c.decay_null, c.decay_range
        if self.linearize is not None:  # ε = g x + r: the slope joins the decay, r stays
            s_null, s_range = linearize_variances(self.linearize)
            g_null, g_range = gaussian_eps_slope(c, s_null), gaussian_eps_slope(c, s_range)
            b = base.astype(dtype)
            # g x = g_null Q x + g_range P x (P, Q the complementary orthogonal projections).
            eps = eps - col(g_null) * b
            if s_range != s_null:  # one variance: P x needs no extra projection
                eps = eps - col(g_range - g_null) * problem.project_range(b)
            decay_null = decay_null + c.eps_null * g_null
            decay_range = decay_range + c.eps_range * g_range
        x_T = (problem.x_T if init is None else init).astype(dtype)
        noise = (problem.noise if noise is None else noise).astype(dtype)
        p_eps = problem.project_range(eps)
        p_noise = problem.project_range(noise)
        p_xT = problem.project_range(x_T)
        v_null = col(c.eps_null) * (eps - p_eps) + col(c.c1) * (noise - p_noise)
        v_range = (
            col(c.eps_range) * p_eps
            + col(c.c1) * p_noise
            + col(c.apy_weight) * problem.apy()[:, None].astype(dtype)
        )
        rows = eps.shape[1]
        if self.order is None or (self.order >= rows and self.axis_name is None):
            u_null = self.scan(decay_null, v_null, x_T - p_xT)
            u_range = self.scan(decay_range, v_range, p_xT)
            return u_null + u_range
        # Order k: k applications of the one-step recurrence, starting from the current rows
        # (the network inputs); row 1 always starts from x_T itself.
        p_base = problem.project_range(base.astype(dtype))
        u_null, u_range = base.astype(dtype) - p_base, p_base
        for k in range(int(self.order)):
            u_null = col(decay_null) * u_null + v_null
            u_range = col(decay_range) * u_range + v_range
            if k < self.order - 1:
                u_null = self._shift(u_null, x_T - p_xT)
                u_range = self._shift(u_range, p_xT)
        return u_null + u_range

    def window(self, X, problem: Problem, start, size: int):
        """Rows ``start .. start+size−1`` of ``F(X)`` (B, size, H, W, C), evaluated from the
        current rows with row ``start − 1`` (x_T for ``start = 0``) as the state before the
        window: one batched call of B·size rows (the sliding-window solver,
        :class:`~deqir_jax.solve.SlidingWindow`). ``start`` may be traced."""
        win = lambda a, axis: jax.lax.dynamic_slice_in_dim(a, start, size, axis)
        c = problem.coeffs.astype(X.dtype)
        prev = jax.lax.dynamic_index_in_dim(X, jnp.maximum(start - 1, 0), 1, keepdims=False)
        init = jnp.where(start == 0, problem.x_T.astype(X.dtype), prev)
        xin = jnp.concatenate([init[:, None], win(X, 1)[:, :-1]], axis=1)
        cw = dataclasses.replace(c, **{f: win(getattr(c, f), 0) for f in (
            "sqrt_a", "sqrt_1ma", "sqrt_a_next", "c1", "c2", "lam")})
        eps = self.evaluate(problem.params, xin, win(jnp.asarray(c.t, jnp.int32), 0))
        noise = win(problem.noise, 1) if problem.noise.shape[1] > 1 else problem.noise
        return self.combine(eps, problem, coeffs=cw, noise=noise, init=init, base=xin)

    # The row structure used by the RowScan adjoint (deqir_jax.solve.RowScan).
    def row_inputs(self, X, problem: Problem):
        """Each row's predecessor, ``[x_T, x_1, …, x_{T−1}]`` (the network inputs)."""
        return self.network_inputs(X, problem)

    def row_step(self, i, x_prev, problem: Problem):
        """Row ``i`` (0-based, traced) as one sequential step from ``x_prev`` (B, H, W, C)."""
        return chain_step(self.eps_fn, problem, i, x_prev)

    def add_input_cotangent(self, g_problem: Problem, g_x0):
        """The cotangent of the chain's start (x_T) added into the problem's cotangent."""
        return dataclasses.replace(g_problem, x_T=g_problem.x_T + g_x0.astype(
            g_problem.x_T.dtype))

    def __call__(self, X, problem: Problem):
        xin = self.network_inputs(X, problem)
        eps = self.evaluate(problem.params, xin, self.times(xin.shape[1], problem))
        return self.combine(eps, problem, base=xin)


def initial_trajectory(problem: Problem, T: int | None = None, dtype=None):
    """The official start: every row set to x_T, (B, T, H, W, C)."""
    T = problem.num_steps if T is None else T
    x_T = problem.x_T if dtype is None else problem.x_T.astype(dtype)
    return jnp.broadcast_to(x_T[:, None], (x_T.shape[0], T) + x_T.shape[1:])
