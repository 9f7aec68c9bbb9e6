"""Sequential samplers: the DDNM/DeqIR chain of ALGORITHM.md §2 as one ``lax.scan``.

This is the reference the DEQ fixed point must reproduce: T network calls, one per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .problem import Problem

EpsFn = Callable[[object, jax.Array, jax.Array], jax.Array]


def ddnm_step(problem: Problem, coeffs_i, x, eps, apy, z):
    """One restoration step x_{i-1} → x_i (ALGORITHM.md §2; DDNM+ when λ_i < 1).

    ``x0 = (x − √(1−a) ε)/√a``; ``x̂0 = x0 − λ (P x0 − A⁺y)``;
    ``x_i = √a' x̂0 + c1 z + c2 ε``. ``coeffs_i`` is a StepCoefficients row (scalars).
    """
    c = coeffs_i
    x0 = (x - c.sqrt_1ma * eps) / c.sqrt_a
    x0_hat = x0 - c.lam * (problem.project_range(x0) - apy)
    return c.sqrt_a_next * x0_hat + c.c1 * z + c.c2 * eps


def chain_step(eps_fn: EpsFn, problem: Problem, i, x, apy=None):
    """Step i (0-based, may be traced) of the chain from ``x`` = x_{i}: one network call at
    τ_{i+1} and one :func:`ddnm_step`, (B, H, W, C). The sequential sampler's loop body; the
    RowScan adjoint differentiates it row by row."""
    coeffs = problem.coeffs.astype(x.dtype)
    c = jax.tree_util.tree_map(lambda a: a[i], coeffs)
    t = jnp.asarray(coeffs.t, jnp.int32)[i]
    eps = eps_fn(problem.params, x, jnp.full((x.shape[0],), t, jnp.int32)).astype(x.dtype)
    apy = problem.apy() if apy is None else apy
    return ddnm_step(problem, c, x, eps, apy, problem.noise_at(i))


def sequential_sample(eps_fn: EpsFn, problem: Problem, *, return_trajectory: bool = False):
    """Run the T steps one after another with ``lax.scan``.

    Args:
        eps_fn: ``eps_fn(params, x, t) -> ε`` on (N, H, W, C) images, t of shape (N,), returning
            only the ε channels (the same count as x).
        problem: the chain's arguments (x_T, y, noise, coefficients, operator, params).
        return_trajectory: also return all T states, (B, T, H, W, C).

    Returns:
        The restored images x_T-th row, (B, H, W, C), and the trajectory when asked.
    """
    apy = problem.apy()

    def body(x, i):
        x_next = chain_step(eps_fn, problem, i, x, apy)
        return x_next, (x_next if return_trajectory else None)

    x, traj = jax.lax.scan(body, problem.x_T, jnp.arange(problem.num_steps))
    if return_trajectory:
        return x, jnp.moveaxis(traj, 0, 1)
    return x


def coarse_segments(T: int, steps: int):
    """First and last fine row (0-based) of each of the ``steps`` coarse steps: the coarse pass
    steps from the time of row ``starts[j]`` to the time after row ``ends[j]``."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise ValueError(f"coarse steps must be an integer in [1, T={T}], got {steps!r}")
    starts = np.floor(np.arange(steps) * T / steps).astype(int)
    ends = np.append(starts[1:] - 1, T - 1)
    return starts, ends


def coarse_trajectory(eps_fn: EpsFn, problem: Problem, steps: int):
    """A cheap start for the parallel solver (parareal in time): the sequential sampler on
    ``steps`` of the T times, spread onto all T rows.

    Coarse step j runs from the time of fine row ``starts[j]`` straight to the time after fine
    row ``ends[j]`` (a DDIM jump with that row's coefficients and noise); every fine row r of the
    segment gets ``√a'_r x̂0_j + c1_r z_r + c2_r ε_j`` from the segment's estimate ``x̂0_j`` and
    ``ε_j``, which at ``r = ends[j]`` is the coarse state itself. With ``steps = T`` this is
    exactly the sequential trajectory. Costs ``steps`` sequential network calls.

    Returns:
        (B, T, H, W, C) trajectory.
    """
    T = problem.num_steps
    starts, ends = coarse_segments(T, steps)
    dtype = problem.x_T.dtype
    c = problem.coeffs.astype(dtype)
    apy = problem.apy()
    batch = problem.x_T.shape[0]
    seg_of = np.repeat(np.arange(len(starts)), ends - starts + 1)  # fine row -> segment

    def jump(rows, segs):
        """Coefficients of a DDIM jump from the start of segment ``segs`` to the time after
        fine row ``rows`` (λ of the segment's end, as its coarse step)."""
        take = lambda a, idx: jnp.asarray(a)[idx]
        return dataclasses.replace(
            c, sqrt_a=take(c.sqrt_a, starts[segs]), sqrt_1ma=take(c.sqrt_1ma, starts[segs]),
            lam=take(c.lam, ends[segs]), sqrt_a_next=take(c.sqrt_a_next, rows),
            c1=take(c.c1, rows), c2=take(c.c2, rows))

    def body(x, step):
        coeff, t, z = step
        eps = eps_fn(problem.params, x, jnp.full((batch,), t, jnp.int32)).astype(dtype)
        return ddnm_step(problem, coeff, x, eps, apy, z), (x, eps)

    segs = np.arange(len(starts))
    noise_end = jnp.stack([problem.noise_at(int(e)) for e in ends], axis=0)
    times = jnp.asarray(np.asarray(c.t)[starts], jnp.int32)
    _, (xs, epss) = jax.lax.scan(body, problem.x_T, (jump(ends, segs), times, noise_end))
    # Every fine row: the jump of its segment's coarse step, from the same state and ε.
    col = lambda a: jnp.reshape(a, (1, -1, 1, 1, 1))
    fine = jax.tree_util.tree_map(col, jump(np.arange(T), seg_of))
    noise = problem.noise if problem.noise.shape[1] > 1 else problem.noise[:, :1]
    move = lambda a: jnp.moveaxis(a[seg_of], 0, 1)  # (B, T, H, W, C)
    return ddnm_step(problem, fine, move(xs), move(epss), apy[:, None], noise)
