"""Sequential samplers: the DDNM/DeqIR chain of ALGORITHM.md §2 as one ``lax.scan``.

This is the reference the DEQ fixed point must reproduce: T network calls, one per step.
"""

from __future__ import annotations

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
    batch = problem.x_T.shape[0]
    coeffs = problem.coeffs.astype(problem.x_T.dtype)

    def body(x, step):
        i, t, c = step
        eps = eps_fn(problem.params, x, jnp.full((batch,), t, jnp.int32)).astype(x.dtype)
        x_next = ddnm_step(problem, c, x, eps, apy, problem.noise_at(i))
        return x_next, (x_next if return_trajectory else None)

    steps = (jnp.arange(problem.num_steps), jnp.asarray(coeffs.t, jnp.int32), coeffs)
    x, traj = jax.lax.scan(body, problem.x_T, steps)
    if return_trajectory:
        return x, jnp.moveaxis(traj, 0, 1)
    return x


def coarse_segments(T: int, steps: int):
    """First and last fine row (0-based) of each of the ``steps`` coarse steps: the coarse pass
    steps from the time of row ``starts[j]`` to the time after row ``ends[j]``."""
    if not 1 <= int(steps) <= T:
        raise ValueError(f"coarse steps must be in [1, T={T}], got {steps}")
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
    seg = jax.tree_util.tree_map(lambda a: a[starts], (c.sqrt_a, c.sqrt_1ma))
    end = jax.tree_util.tree_map(lambda a: a[ends], (c.sqrt_a_next, c.lam))
    times = jnp.asarray(np.asarray(c.t)[starts], jnp.int32)

    def body(x, step):
        (sqrt_a, sqrt_1ma), (sqrt_a_next, lam), t, j_end = step
        eps = eps_fn(problem.params, x, jnp.full((batch,), t, jnp.int32)).astype(dtype)
        x0 = (x - sqrt_1ma * eps) / sqrt_a
        x0_hat = x0 - lam * (problem.project_range(x0) - apy)
        i = j_end
        x_next = sqrt_a_next * x0_hat + c.c1[i] * problem.noise_at(i) + c.c2[i] * eps
        return x_next, (x0_hat, eps)

    _, (x0s, epss) = jax.lax.scan(body, problem.x_T, (seg, end, times, jnp.asarray(ends)))
    # Spread: fine row r belongs to segment seg_of[r].
    seg_of = np.repeat(np.arange(len(starts)), ends - starts + 1)
    x0r = jnp.moveaxis(x0s[seg_of], 0, 1)  # (B, T, H, W, C)
    er = jnp.moveaxis(epss[seg_of], 0, 1)
    col = lambda a: jnp.reshape(a, (1, -1, 1, 1, 1))
    noise = problem.noise if problem.noise.shape[1] > 1 else problem.noise[:, :1]
    return col(c.sqrt_a_next) * x0r + col(c.c1) * noise + col(c.c2) * er
