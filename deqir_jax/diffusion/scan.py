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


def shard_shift(last_row, first, axis_name: str):
    """Inside ``shard_map``: each shard receives the previous shard's last row; shard 0 gets
    ``first``. One ``ppermute`` of a single row per shard."""
    n = jax.lax.axis_size(axis_name)
    prev = jax.lax.ppermute(last_row, axis_name, perm=[(i, i + 1) for i in range(n - 1)])
    return jnp.where(jax.lax.axis_index(axis_name) == 0, first, prev)


def sharded_affine_scan(decay, v, init, axis_name: str, axis: int = 1):
    """:func:`affine_scan` with the rows split over the mesh axis ``axis_name`` (inside
    ``shard_map``; ``decay`` and ``v`` are the local blocks, ``init`` is replicated).

    Each shard scans its block from zero, then the shard aggregates ``(Π d, u_last)`` are
    combined by a Hillis-Steele scan over shards (log2(n) ``ppermute`` rounds of one image) to
    give each shard its incoming carry. No shard ever holds another shard's rows.
    """
    u = affine_scan(decay, v, jnp.zeros_like(init), axis=axis)
    n = jax.lax.axis_size(axis_name)
    idx = jax.lax.axis_index(axis_name)
    prod = jnp.prod(decay).astype(v.dtype)
    last = jax.lax.index_in_dim(u, -1, axis, keepdims=False)
    agg_d, agg_u = prod, last
    shift = 1
    while shift < n:
        perm = [(i, i + shift) for i in range(n - shift)]
        rd = jax.lax.ppermute(agg_d, axis_name, perm)
        ru = jax.lax.ppermute(agg_u, axis_name, perm)
        has = idx >= shift
        agg_d, agg_u = jnp.where(has, rd * agg_d, agg_d), jnp.where(has, agg_d * ru + agg_u, agg_u)
        shift *= 2
    # Exclusive prefix: the aggregate of shards 0..idx-1 (identity on shard 0).
    perm = [(i, i + 1) for i in range(n - 1)]
    ex_d = jnp.where(idx == 0, 1.0, jax.lax.ppermute(agg_d, axis_name, perm)).astype(v.dtype)
    ex_u = jnp.where(idx == 0, 0.0, jax.lax.ppermute(agg_u, axis_name, perm)).astype(v.dtype)
    carry = ex_d * init + ex_u
    shape = [1] * v.ndim
    shape[axis] = v.shape[axis]
    cum = jnp.reshape(jnp.cumprod(decay), shape).astype(v.dtype)
    return u + cum * jnp.expand_dims(carry, axis)
