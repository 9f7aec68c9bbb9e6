"""Deblurring operators: ``deblur_gauss``, ``deblur_uni``, ``deblur_aniso`` and user kernels.

The measurement is the blurred image ``y: (B, H, W, C)``.

Clean (default), :class:`FFTDeblur`: circular 2-D convolution with any kernel, diagonal in the
DFT basis. Faithful, :class:`SVDDeblur`: the official separable SVD ``Deblurring`` /
``Deblurring2D`` of DDRM/DDNM/DeqIR with all its quirks (listed on the class).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._torch_sort import torch_sort_descending_indices
from .base import LinearOperator, const, operator_dataclass, static_field
from .kernels import official_conv_matrix, svd_truncated

__all__ = ["FFTDeblur", "SVDDeblur", "fft_deblur", "svd_deblur"]


@operator_dataclass
class FFTDeblur(LinearOperator):
    """Circular convolution ``A x = k ⊛ x`` (per channel), diagonalized by the 2-D DFT.

    With ``λ = DFT(k)`` (kernel centre ``(K_h//2, K_w//2)`` moved to the origin, so a symmetric
    kernel does not shift the image) and ``τ = pinv_threshold · max|λ|``:

    ``λ̃ = λ · 1[|λ| > τ]``,  ``A x = IDFT(λ̃ · DFT x)``,  ``A⁺ y = IDFT(λ̃⁺ · DFT y)`` with
    ``λ̃⁺ = 1/λ̃`` (0 where ``λ̃ = 0``),  ``Aᵀ y = IDFT(conj(λ̃) · DFT y)``.

    The near-null frequencies are removed from ``A`` itself, so ``A A⁺ A = A`` and
    ``A⁺ A A⁺ = A⁺`` hold exactly and ``A⁺`` is the true Moore-Penrose inverse of ``A``; ``A``
    differs from the untruncated blur by at most ``τ`` (operator norm). Default ``τ`` = ``1e-3``
    relative (the official truncation keeps 2-D singular values down to ``(3e-2)² ≈ 1e-3``).
    ``pinv_threshold=0`` keeps every nonzero frequency (exact blur, possibly huge ``A⁺``).

    Differences from the official operator: periodic instead of zero boundary, all kernel taps
    used, any 2-D kernel, any ``H x W``, and the singular values are matched to their
    singular vectors (see :class:`SVDDeblur`).
    """

    lam_re: np.ndarray
    lam_im: np.ndarray
    image_shape: tuple[int, int, int] = static_field()
    name: str = static_field(default="deblur")
    faithful: bool = static_field(default=False)

    def _filter(self, x: jax.Array, conj: bool, inverse: bool) -> jax.Array:
        dt = x.dtype
        re, im = const(self.lam_re, dt), const(self.lam_im, dt)
        if conj:
            im = -im
        if inverse:
            mag2 = re * re + im * im
            safe = jnp.where(mag2 > 0, mag2, 1)
            re, im = jnp.where(mag2 > 0, re / safe, 0), jnp.where(mag2 > 0, -im / safe, 0)
        lam = jax.lax.complex(re, im)[None, :, :, None]
        h, w = x.shape[1], x.shape[2]
        spec = jnp.fft.rfft2(x, axes=(1, 2))
        return jnp.fft.irfft2(spec * lam, s=(h, w), axes=(1, 2)).astype(dt)

    def _A(self, x: jax.Array) -> jax.Array:
        return self._filter(x, conj=False, inverse=False)

    def _A_pinv(self, y: jax.Array) -> jax.Array:
        return self._filter(y, conj=False, inverse=True)

    def _At(self, y: jax.Array) -> jax.Array:
        return self._filter(y, conj=True, inverse=False)


def fft_deblur(
    image_shape: tuple[int, int, int],
    kernel: np.ndarray,
    *,
    name: str = "deblur",
    pinv_threshold: float | None = None,
) -> FFTDeblur:
    """Build the clean circular-convolution deblurring operator for a 2-D ``kernel``.

    ``kernel`` (``K_h x K_w``, ``K_h <= H``, ``K_w <= W``) is used as given (not normalized);
    it acts as a true convolution ``y[n] = Σ_m k[m + centre] x[n - m]`` (indices mod ``H, W``).
    """
    h, w, _ = image_shape
    kernel = np.asarray(kernel, dtype=np.float64)
    kh, kw = kernel.shape
    if kh > h or kw > w:
        raise ValueError(f"kernel of shape {kernel.shape} is larger than the image {h}x{w}")
    padded = np.zeros((h, w))
    padded[:kh, :kw] = kernel
    padded = np.roll(padded, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    lam = np.fft.rfft2(padded)
    thr = 1e-3 if pinv_threshold is None else float(pinv_threshold)
    mag = np.abs(lam)
    lam = np.where(mag > thr * mag.max(), lam, 0.0)
    return FFTDeblur(
        lam_re=np.ascontiguousarray(lam.real), lam_im=np.ascontiguousarray(lam.imag),
        image_shape=tuple(image_shape), name=name, faithful=False,
    )


@operator_dataclass
class SVDDeblur(LinearOperator):
    """The official separable SVD deblurring (DDRM ``Deblurring``/``Deblurring2D``), faithful.

    Per channel ``c``, with ``M_h = U_h S_h V_hᵀ`` (``H x H``) and ``M_w = U_w S_w V_wᵀ``::

        A_c X  = U_h (Σ_c ⊙ (V_hᵀ X V_w)) U_wᵀ
        A⁺_c Y = V_h (Σ_c⁺ ⊙ (U_hᵀ Y U_w)) V_wᵀ
        Aᵀ_c Y = V_h (Σ_c ⊙ (U_hᵀ Y U_w)) V_wᵀ

    Quirks of the official code reproduced here:

    1. ``M[i, j] = k[j - i + K//2]`` for ``j - i ∈ [-K//2, K//2)``, zero padding: the last tap
       of an odd kernel is dropped (:func:`~deqir_jax.operators.kernels.official_conv_matrix`).
    2. 1-D singular values below ``3e-2`` are zeroed (in ``A`` as well as in ``A⁺``).
    3. The 2-D singular values ``s_h[i] s_w[j]`` are sorted descending (``torch.sort``, ties in
       PyTorch's order, see :mod:`~deqir_jax.operators._torch_sort`) into ``Ss`` with
       permutation ``perm``; the coefficients are laid out pixel-major ``(k, c) -> k C + c``
       but the singular values are tiled channel-major (``repeat(1, 3)``), so coefficient
       ``perm[k]`` of channel ``c`` is scaled by ``Ss[(C k + c) mod HW]`` instead of
       ``Ss[k]``: ``Σ_c[perm[k]] = Ss[(C k + c) mod HW]``. The map is still of the form
       ``U Σ Vᵀ`` so the Penrose identities hold, but it is not the blur ``M_h X M_wᵀ``.

    The official code is square-only and hard-codes ``C = 3``; here ``H != W`` uses one 1-D
    matrix per axis and the tiling uses ``C``. Official kernels are built in float32 as PyTorch
    does; the SVD is computed in float64 (singular values rounded to float32 for the sort).
    """

    u_h: np.ndarray
    v_h: np.ndarray
    u_w: np.ndarray
    v_w: np.ndarray
    sigma: np.ndarray
    image_shape: tuple[int, int, int] = static_field()
    name: str = static_field(default="deblur_gauss")
    faithful: bool = static_field(default=True)

    def _sandwich(self, left: np.ndarray, right: np.ndarray, x: jax.Array) -> jax.Array:
        dt = x.dtype
        return jnp.einsum("hi,bhwc,wj->bijc", const(left, dt), x, const(right, dt))

    def _A(self, x: jax.Array) -> jax.Array:
        coef = self._sandwich(self.v_h, self.v_w, x) * const(self.sigma, x.dtype)
        return self._sandwich(jnp.asarray(self.u_h).T, jnp.asarray(self.u_w).T, coef)

    def _sigma_pinv(self, dt) -> jax.Array:
        s = const(self.sigma, dt)
        return jnp.where(s != 0, 1 / jnp.where(s != 0, s, 1), 0)

    def _A_pinv(self, y: jax.Array) -> jax.Array:
        coef = self._sandwich(self.u_h, self.u_w, y) * self._sigma_pinv(y.dtype)
        return self._sandwich(jnp.asarray(self.v_h).T, jnp.asarray(self.v_w).T, coef)

    def _At(self, y: jax.Array) -> jax.Array:
        coef = self._sandwich(self.u_h, self.u_w, y) * const(self.sigma, y.dtype)
        return self._sandwich(jnp.asarray(self.v_h).T, jnp.asarray(self.v_w).T, coef)


def svd_deblur(
    image_shape: tuple[int, int, int],
    kernel_h: np.ndarray,
    kernel_w: np.ndarray,
    *,
    name: str,
    threshold: float = 3e-2,
    perm: np.ndarray | None = None,
) -> SVDDeblur:
    """Build the faithful :class:`SVDDeblur` from 1-D kernels along H (rows) and W (columns).

    ``perm`` (optional): the official sort permutation ``A_funcs._perm`` exported from PyTorch.
    Exact ties are reproduced without it, but products that differ by one float32 ulp are
    ordered by the float32 singular values, which differ between LAPACK builds (MKL, OpenBLAS,
    cuSOLVER); at 128x128 and above about 0.1-0.6 % of the entries can be ordered differently,
    changing which singular value scales those coefficients (``A`` by up to ~1e-2 for
    ``deblur_aniso`` at 256x256, the zero pattern of ``P`` rarely). Pass ``perm`` to match a
    given PyTorch run bit for bit.
    """
    h, w, c = image_shape
    u_h, s_h, v_h = svd_truncated(official_conv_matrix(kernel_h, h), threshold, relative=False)
    if w == h and np.array_equal(kernel_h, kernel_w):
        u_w, s_w, v_w = u_h, s_h, v_h
    else:
        u_w, s_w, v_w = svd_truncated(official_conv_matrix(kernel_w, w), threshold, relative=False)
    keys = s_h.astype(np.float32)[:, None] * s_w.astype(np.float32)[None, :]
    if perm is None:
        perm = torch_sort_descending_indices(keys.reshape(-1))
    else:
        perm = np.asarray(perm)
        if (
            perm.shape != (h * w,)
            or not np.issubdtype(perm.dtype, np.integer)
            or not np.array_equal(np.sort(perm), np.arange(h * w))
        ):
            raise ValueError(f"perm must be a permutation of range({h * w}) (H*W), got shape "
                             f"{perm.shape} dtype {perm.dtype}")
    ss = np.outer(s_h, s_w).reshape(-1)[perm]
    k = np.arange(h * w)
    sigma = np.empty((h * w, c))
    for ch in range(c):
        sigma[perm, ch] = ss[(c * k + ch) % (h * w)]
    return SVDDeblur(
        u_h=u_h, v_h=v_h, u_w=u_w, v_w=v_w, sigma=sigma.reshape(h, w, c),
        image_shape=tuple(image_shape), name=name, faithful=True,
    )
