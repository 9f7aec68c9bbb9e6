"""Losses of the restored image for initialization optimization (per image, shape (B,)).

``oracle_l2`` needs the ground truth: it is the oracle used in the DeqIR paper for studies, not
something available at test time. ``reference_l2`` / ``reference_lpips`` steer the result
towards a reference image; ``consistency`` measures ``‖A x̂ − y‖²`` (useful for noisy y).
Any callable ``f(image) -> (B,)`` or scalar is accepted too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

LOSSES = ("oracle_l2", "reference_l2", "reference_lpips", "consistency")


def _mse(a, b):
    return jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss ``image (B,H,W,C) -> (B,)`` as a pytree: the arrays it compares against are
    leaves (``data``), the function is static, so a jitted optimisation step built around it
    compiles once for all targets of the same shapes."""

    fn: Callable = dataclasses.field(metadata=dict(static=True))
    data: Any = None

    def __call__(self, img):
        return self.fn(img, self.data)


def _mse_to(img, ref):
    return _mse(img, ref.astype(img.dtype))


def _consistency(img, data):
    op, y = data
    return _mse(op.A(img), y.astype(img.dtype))


@functools.lru_cache(maxsize=8)
def _lpips_to(net: str):
    from ..metrics import lpips_apply

    def lpips(img, data):
        params, ref = data
        return lpips_apply(params, img, ref.astype(img.dtype), net)

    return lpips


@functools.lru_cache(maxsize=32)
def _user(loss: Callable):
    def user(img, _):
        value = jnp.asarray(loss(img))
        return jnp.broadcast_to(value, img.shape[:1]) / (1 if value.ndim else img.shape[0])

    return user


def make_loss(
    loss: str | Callable, *, target=None, reference=None, op=None, y=None, lpips_net="alex"
) -> Loss:
    """The :class:`Loss` ``image (B,H,W,C) -> (B,)`` for a named loss or a user callable."""
    if callable(loss):
        return Loss(_user(loss))
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} or a callable, got {loss!r}")
    if loss == "oracle_l2":
        if target is None:
            raise ValueError("loss='oracle_l2' needs target= (the ground-truth image)")
        return Loss(_mse_to, jnp.asarray(target))
    if loss in ("reference_l2", "reference_lpips"):
        if reference is None:
            raise ValueError(f"loss={loss!r} needs reference= (the image to steer towards)")
        reference = jnp.asarray(reference)
        if loss == "reference_l2":
            return Loss(_mse_to, reference)
        from ..metrics import load_lpips_params

        return Loss(_lpips_to(lpips_net), (load_lpips_params(lpips_net), reference))
    if op is None or y is None:
        raise ValueError("loss='consistency' needs the operator and y")
    return Loss(_consistency, (op, jnp.asarray(y)))
