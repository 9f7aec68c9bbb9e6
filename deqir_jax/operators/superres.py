"""Super-resolution operators: ``sr_averagepooling`` and ``sr_bicubic``.

Both measure a low-resolution image ``y: (B, H/s, W/s, C)``; ``s`` must divide ``H`` and ``W``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .base import LinearOperator, const, operator_dataclass, static_field
from .kernels import bicubic_matrix, svd_truncated

__all__ = ["AveragePoolSR", "SeparableSR", "check_scale", "bicubic_sr"]


def check_scale(scale: object, image_shape: tuple[int, int, int]) -> int:
    """Validate an integer SR factor dividing ``H`` and ``W``."""
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)):
        raise TypeError(f"scale must be a positive int, got {scale!r}")
    if scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    h, w, _ = image_shape
    if h % scale or w % scale:
        raise ValueError(f"scale={scale} must divide the image size {h}x{w} (H and W)")
    return int(scale)


@operator_dataclass
class AveragePoolSR(LinearOperator):
    """``s x s`` block mean: ``(A x)[i, j] = s⁻² Σ_{a,b<s} x[i s + a, j s + b]``.

    ``A Aᵀ = s⁻² I``, hence ``A⁺ = s² Aᵀ`` = nearest-neighbour replication of each
    low-resolution pixel over its block, and ``Aᵀ y = s⁻² · replicate(y)``.

    Faithful and clean coincide: the official SVD ``SuperResolution`` (singular value ``1/s``,
    ``V`` = normalized block indicator) is exactly this map in exact arithmetic; only float32
    rounding differs.
    """

    scale: int = static_field()
    image_shape: tuple[int, int, int] = static_field()
    name: str = static_field(default="sr_averagepooling")
    faithful: bool = static_field(default=False)

    @property
    def measurement_shape(self) -> tuple[int, ...]:
        h, w, c = self.image_shape
        return (h // self.scale, w // self.scale, c)

    def _A(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        s = self.scale
        return x.reshape(b, h // s, s, w // s, s, c).mean(axis=(2, 4))

    def _replicate(self, y: jax.Array) -> jax.Array:
        s = self.scale
        return jnp.repeat(jnp.repeat(y, s, axis=1), s, axis=2)

    def _A_pinv(self, y: jax.Array) -> jax.Array:
        return self._replicate(y)

    def _At(self, y: jax.Array) -> jax.Array:
        return self._replicate(y) / (self.scale * self.scale)


@operator_dataclass
class SeparableSR(LinearOperator):
    """Separable downsampling ``Y = A_h X A_wᵀ`` per channel (``A_h: H/s x H``, ``A_w: W/s x W``).

    With the truncated SVDs ``A_h = U_h S_h V_hᵀ`` (same for ``w``):
    ``A⁺ Y = A_h⁺ Y A_w⁺ᵀ`` with ``A_h⁺ = V_h S_h⁺ U_hᵀ``, and ``Aᵀ Y = A_hᵀ Y A_w``. The stored
    ``a_h``/``a_w`` are the truncated matrices, so ``A A⁺ A = A`` holds exactly.

    ``sr_bicubic`` (see :func:`bicubic_sr`):

    * faithful: the official ``SRConv`` (DDRM): the official ``4 s``-tap bicubic kernel with
      stride ``s`` and reflective padding, 1-D singular values below ``3e-2`` (absolute) zeroed
      in both ``A`` and ``A⁺``. The official code is square-only; non-square images use one
      matrix per axis.
    * clean: the same reflective bicubic matrix, but the kernel is centred on the block centre
      for every ``s`` (identical for even ``s``; the official one is half a pixel off for odd
      ``s``), and singular values ``<= pinv_threshold · s_max`` (default ``1e-3``, relative)
      are zeroed. For bicubic these matrices are well conditioned (``s_min ≈ 0.35-0.7``), so
      neither truncation removes anything and ``A`` is the exact bicubic decimation.
    """

    a_h: np.ndarray
    a_w: np.ndarray
    pinv_h: np.ndarray
    pinv_w: np.ndarray
    scale: int = static_field()
    image_shape: tuple[int, int, int] = static_field()
    name: str = static_field(default="sr_bicubic")
    faithful: bool = static_field(default=False)

    @property
    def measurement_shape(self) -> tuple[int, ...]:
        h, w, c = self.image_shape
        return (h // self.scale, w // self.scale, c)

    @staticmethod
    def _apply(mh: np.ndarray, mw: np.ndarray, x: jax.Array) -> jax.Array:
        dt = x.dtype
        return jnp.einsum("ih,bhwc,jw->bijc", const(mh, dt), x, const(mw, dt))

    def _A(self, x: jax.Array) -> jax.Array:
        return self._apply(self.a_h, self.a_w, x)

    def _A_pinv(self, y: jax.Array) -> jax.Array:
        return self._apply(self.pinv_h, self.pinv_w, y)

    def _At(self, y: jax.Array) -> jax.Array:
        return self._apply(jnp.asarray(self.a_h).T, jnp.asarray(self.a_w).T, y)


def _factor(mat: np.ndarray, threshold: float, relative: bool) -> tuple[np.ndarray, np.ndarray]:
    u, s, v = svd_truncated(mat, threshold, relative=relative)
    k = s.shape[0]
    inv = np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0)
    a = (u[:, :k] * s) @ v[:, :k].T
    pinv = (v[:, :k] * inv) @ u[:, :k].T
    return a, pinv


def bicubic_sr(
    image_shape: tuple[int, int, int],
    scale: int,
    *,
    faithful: bool = False,
    pinv_threshold: float | None = None,
) -> SeparableSR:
    """Build the ``sr_bicubic`` operator (see :class:`SeparableSR` for the two versions).

    Args:
      image_shape: ``(H, W, C)``; ``scale`` must divide ``H`` and ``W``.
      scale: integer downsampling factor.
      faithful: reproduce the official ``SRConv``.
      pinv_threshold: singular-value cut; default ``3e-2`` absolute (faithful) or ``1e-3``
        relative to the largest singular value (clean).
    """
    scale = check_scale(scale, image_shape)
    h, w, _ = image_shape
    relative = not faithful
    thr = (3e-2 if faithful else 1e-3) if pinv_threshold is None else float(pinv_threshold)
    a_h, p_h = _factor(bicubic_matrix(h, scale, faithful=faithful), thr, relative)
    if w == h:
        a_w, p_w = a_h, p_h
    else:
        a_w, p_w = _factor(bicubic_matrix(w, scale, faithful=faithful), thr, relative)
    return SeparableSR(
        a_h=a_h, a_w=a_w, pinv_h=p_h, pinv_w=p_w, scale=scale,
        image_shape=tuple(image_shape), faithful=bool(faithful),
    )
