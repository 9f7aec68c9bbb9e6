"""Prefix scan of the affine recurrence ``u_i = d_i u_{i-1} + v_i`` along the timestep axis.

This is the only coupling between timesteps in the DEQ map (ALGORITHM.md §3: "a cumulative sum
over the timestep axis"): in the null space ``d_i = √a'_i/√a_i`` and the recurrence telescopes
to the paper's weighted cumulative sum; in the range space ``d_i = 0`` for the official step.
Written as an associative scan it is exact for any ``d`` (also DDNM+'s ``(1−λ_i)`` factors) and
has O(log T) depth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _combine(earlier, later):
    d1, v1 = earlier
    d2, v2 = later
    return d1 * d2, d2 * v1 + v2


def affine_scan(decay, v, init, axis: int = 1):
    """All ``u_i`` of ``u_i = decay_i · u_{i-1} + v_i`` (i = 1..T) with ``u_0 = init``.

    Args:
        decay: (T,) scalars.
        v: (B, T, ...) terms; the recurrence runs along ``axis`` (the timestep axis).
        init: (B, ...) the state before the first step.

    Returns:
        (B, T, ...) array of u_1..u_T.
    """
    shape = [1] * v.ndim
    shape[axis] = v.shape[axis]
    d = jnp.reshape(decay, shape).astype(v.dtype)
    first = jax.lax.index_in_dim(v, 0, axis, keepdims=False)
    first = first + jax.lax.index_in_dim(d, 0, axis, keepdims=False) * init
    v = jax.lax.dynamic_update_index_in_dim(v, first, 0, axis)
    _, u = jax.lax.associative_scan(_combine, (d, v), axis=axis)
    return u
