"""Measurement consistency ``||A x_hat - y||`` of restored images."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp


class Consistency(NamedTuple):
    """Per-image residual norms of ``r = A(x_hat) - y`` (a pytree; fine under ``jax.jit``).

    Attributes:
      l2: ``(B,)`` Euclidean norm ``sqrt(sum r^2)`` over all measurement entries of an image.
      rms: ``(B,)`` root mean square ``sqrt(mean r^2)``: ``l2 / sqrt(entries per image)``.
    """

    l2: Any
    rms: Any


def consistency(op, x_hat, y) -> Consistency:
    """Residual of the measurement equation for restored images.

    Args:
      op: an operator with a method ``A(x)`` on NHWC batches (``deqir_jax.operators``).
      x_hat: ``(B, H, W, C)`` restored images in ``[-1, 1]``.
      y: ``(B, ...)`` measurements, the shape of ``op.A(x_hat)``.

    Returns:
      :class:`Consistency` with ``l2`` and ``rms``, each ``(B,)``.
    """
    if not callable(getattr(op, "A", None)):
        raise TypeError(f"consistency: op must have a method A(x), got {type(op).__name__}")
    x_hat = jnp.asarray(x_hat)
    y = jnp.asarray(y)
    if x_hat.ndim != 4:
        raise ValueError(f"consistency: x_hat must be an NHWC batch, got shape {x_hat.shape}")
    ax = jnp.asarray(op.A(x_hat))
    if ax.shape != y.shape:
        raise ValueError(f"consistency: op.A(x_hat) has shape {ax.shape} but y has shape {y.shape}")
    dtype = jnp.result_type(ax.dtype, y.dtype, jnp.float32)
    r = (ax.astype(dtype) - y.astype(dtype)).reshape(y.shape[0], -1)
    sq = jnp.sum(jnp.square(r), axis=1)
    return Consistency(l2=jnp.sqrt(sq), rms=jnp.sqrt(sq / r.shape[1]))
