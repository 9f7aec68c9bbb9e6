"""Sequential samplers: the DDNM/DeqIR chain of ALGORITHM.md §2 as one ``lax.scan``.

This is the reference the DEQ fixed point must reproduce: T network calls, one per step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

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
