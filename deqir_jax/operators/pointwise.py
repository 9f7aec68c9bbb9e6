"""Pixel-wise operators: denoising (identity), inpainting (mask) and colorization (grey).

Faithful and clean versions coincide for ``denoising`` and ``inpainting``; ``colorization``
differs only in the weights (official ``0.3333, 0.3334, 0.3333``; clean ``1/C`` each).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .base import LinearOperator, const, operator_dataclass, static_field

__all__ = ["Denoising", "Inpainting", "Colorization", "OFFICIAL_GRAY_WEIGHTS"]

#: Weights of the official ``Colorization`` (DDRM/DDNM ``svd_operators.py``).
OFFICIAL_GRAY_WEIGHTS = (0.3333, 0.3334, 0.3333)


@operator_dataclass
class Denoising(LinearOperator):
    """``A = A⁺ = Aᵀ = I``: the measurement is the (noisy) image itself. ``P = I``, ``Q = 0``."""

    image_shape: tuple[int, int, int] = static_field()
    name: str = static_field(default="denoising")
    faithful: bool = static_field(default=False)

    def _A(self, x: jax.Array) -> jax.Array:
        return x

    def _A_pinv(self, y: jax.Array) -> jax.Array:
        return y

    def _At(self, y: jax.Array) -> jax.Array:
        return y


@operator_dataclass
class Inpainting(LinearOperator):
    """Masking ``A x = m ⊙ x`` with ``m ∈ {0, 1}^{H x W x C}`` (1 = observed).

    The measurement is the masked image ``(B, H, W, C)`` with zeros at missing pixels, so it
    can be saved as a picture. ``A`` is an orthogonal projector: ``A⁺ = Aᵀ = A`` and
    ``P = A``. The official ``Inpainting`` returns only the observed entries as a flat vector;
    ``A⁺ y`` and ``P`` are identical, the official mask being the same for all channels.
    """

    mask: np.ndarray
    image_shape: tuple[int, int, int] = static_field()
    name: str = static_field(default="inpainting")
    faithful: bool = static_field(default=False)

    def _A(self, x: jax.Array) -> jax.Array:
        return x * const(self.mask, x.dtype)

    def _A_pinv(self, y: jax.Array) -> jax.Array:
        return y * const(self.mask, y.dtype)

    _At = _A_pinv


@operator_dataclass
class Colorization(LinearOperator):
    """Grey-scale measurement ``y = Σ_c w_c x_c``, ``y: (B, H, W, 1)``.

    ``A⁺ y = y w / ‖w‖²`` and ``Aᵀ y = y w``, so ``P x = w (wᵀ x) / ‖w‖²`` per pixel.

    * clean: ``w_c = 1/C`` (the mean of the channels; ``A⁺`` replicates the grey value).
    * faithful: ``w = (0.3333, 0.3334, 0.3333)`` as in the official ``Colorization``
      (whose SVD form ``U s Vᵀ`` is exactly this row vector); ``C = 3`` only.
    """

    weights: np.ndarray
    image_shape: tuple[int, int, int] = static_field()
    name: str = static_field(default="colorization")
    faithful: bool = static_field(default=False)

    @property
    def measurement_shape(self) -> tuple[int, ...]:
        h, w, _ = self.image_shape
        return (h, w, 1)

    def _A(self, x: jax.Array) -> jax.Array:
        w = const(self.weights, x.dtype)
        return jnp.einsum("bhwc,c->bhw", x, w)[..., None]

    def _A_pinv(self, y: jax.Array) -> jax.Array:
        w = const(self.weights, y.dtype)
        return y * (w / jnp.sum(w * w))

    def _At(self, y: jax.Array) -> jax.Array:
        return y * const(self.weights, y.dtype)
