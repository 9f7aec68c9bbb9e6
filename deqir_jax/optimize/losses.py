"""Losses of the restored image for initialization optimization (per image, shape (B,)).

``oracle_l2`` needs the ground truth: it is the oracle used in the DeqIR paper for studies, not
something available at test time. ``reference_l2`` / ``reference_lpips`` steer the result
towards a reference image; ``consistency`` measures ``‖A x̂ − y‖²`` (useful for noisy y).
Any callable ``f(image) -> (B,)`` or scalar is accepted too.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

LOSSES = ("oracle_l2", "reference_l2", "reference_lpips", "consistency")


def _mse(a, b):
    return jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))


def make_loss(
    loss: str | Callable, *, target=None, reference=None, op=None, y=None, lpips_net="alex"
) -> Callable:
    """A function ``image (B,H,W,C) -> (B,)`` for a named loss or a user callable."""
    if callable(loss):
        def user(img):
            value = jnp.asarray(loss(img))
            return jnp.broadcast_to(value, img.shape[:1]) / (1 if value.ndim else img.shape[0])
        return user
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
    if loss == "oracle_l2":
        if target is None:
            raise ValueError("loss='oracle_l2' needs target= (the ground-truth image)")
        target = jnp.asarray(target)
        return lambda img: _mse(img, target.astype(img.dtype))
    if loss in ("reference_l2", "reference_lpips"):
        if reference is None:
            raise ValueError(f"loss={loss!r} needs reference= (the image to steer towards)")
        reference = jnp.asarray(reference)
        if loss == "reference_l2":
            return lambda img: _mse(img, reference.astype(img.dtype))
        from ..metrics import load_lpips_params, lpips_apply

        params = load_lpips_params(lpips_net)
        return lambda img: lpips_apply(params, img, reference.astype(img.dtype), lpips_net)
    if op is None or y is None:
        raise ValueError("loss='consistency' needs the operator and y")
    return lambda img: _mse(op.A(img), jnp.asarray(y).astype(img.dtype))
