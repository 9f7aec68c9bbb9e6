"""Blur/resampling kernels and the 1-D matrices built from them (numpy, float64).

Official kernels (DDRM/DDNM/DeqIR ``runners/diffusion.py``):

* Gaussian blur: taps ``exp(-x²/(2σ²))`` for ``x = -(K//2) .. K//2``, normalized to sum 1
  (``deblur_gauss``: σ = 10, K = 5, nearly a box).
* Uniform blur: ``K`` taps of ``1/K`` (``deblur_uni``: K = 9).
* Anisotropic blur: a σ = 1 Gaussian along H and a σ = 20 Gaussian along W, K = 9
  (``deblur_aniso``).
* Bicubic downsampling by ``s``: Keys' cubic ``a = -0.5`` sampled at ``(i - 2s + 0.5)/s``,
  ``i = 0..4s-1`` and normalized; ``4s`` taps with stride ``s``, reflective padding.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "gaussian_kernel_1d",
    "uniform_kernel_1d",
    "official_gaussian_kernel_f32",
    "official_uniform_kernel_f32",
    "cubic",
    "bicubic_kernel_1d",
    "bicubic_matrix",
    "official_conv_matrix",
    "svd_truncated",
]


def gaussian_kernel_1d(sigma: float, size: int) -> np.ndarray:
    """Normalized Gaussian taps ``exp(-x²/(2σ²))``, ``x = -(size//2)..size//2`` (odd sizes)."""
    x = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def uniform_kernel_1d(size: int) -> np.ndarray:
    """``size`` taps of ``1/size``."""
    return np.full((size,), 1.0 / size)


def _sum_f32_sequential(k: np.ndarray) -> np.float32:
    total = np.float32(0.0)
    for v in k:
        total = np.float32(total + v)
    return total


def official_gaussian_kernel_f32(sigma: float, size: int) -> np.ndarray:
    """The Gaussian taps exactly as the official PyTorch code builds them (float32).

    ``exp`` of the float32-rounded exponent, divided by the float32 (left-to-right) sum, as
    ``torch.Tensor([...]) / kernel.sum()`` does for these short kernels. Returned as float64.
    """
    x = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    arg = (-0.5 * (x / sigma) ** 2).astype(np.float32)
    k = np.exp(arg.astype(np.float64)).astype(np.float32)
    return (k / _sum_f32_sequential(k)).astype(np.float32).astype(np.float64)


def official_uniform_kernel_f32(size: int) -> np.ndarray:
    """``torch.Tensor([1/size] * size)``: float32 taps, not renormalized. Returned as float64."""
    return np.full((size,), np.float32(1.0 / size)).astype(np.float64)


def cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter ``a`` (support ``|x| < 2``)."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    inner = (a + 2) * x**3 - (a + 3) * x**2 + 1
    outer = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return np.where(x <= 1, inner, np.where(x < 2, outer, 0.0))


def bicubic_kernel_1d(scale: int) -> np.ndarray:
    """The official ``4 s`` bicubic taps ``cubic((i - floor(2s) + 0.5)/s)``, normalized."""
    i = np.arange(4 * scale, dtype=np.float64)
    k = cubic((i - np.floor(4 * scale / 2) + 0.5) / scale)
    return k / k.sum()


def _reflect(j: np.ndarray, n: int) -> np.ndarray:
    """Half-sample symmetric reflection ``-1 -> 0``, ``n -> n-1`` (repeated if needed)."""
    period = 2 * n
    j = np.mod(j, period)
    return np.where(j >= n, period - 1 - j, j)


def bicubic_matrix(n: int, scale: int, *, faithful: bool) -> np.ndarray:
    """The ``(n/s) x n`` bicubic downsampling matrix with reflective padding.

    Row ``r`` is the kernel centred on the block ``[r s, (r+1) s)``:

    * ``faithful``: the official construction, centre ``i - 1/2`` with ``i = r s + s//2`` and
      the taps of :func:`bicubic_kernel_1d` rounded to float32 (as PyTorch builds them). For odd
      ``s`` this centre is half a pixel left of the block centre.
    * clean: centre ``c_r = r s + (s-1)/2`` (the block centre for every ``s``), weights
      ``cubic((j - c_r)/s)`` normalized per row. Identical to the official matrix for even ``s``.

    Out-of-range taps are reflected (``j < 0 -> -j-1``, ``j >= n -> 2n-1-j``), repeatedly for
    images smaller than the kernel.
    """
    m = n // scale
    if faithful:
        k = bicubic_kernel_1d(scale).astype(np.float32)
        k = (k / k.sum(dtype=np.float32)).astype(np.float64)
        centers = np.arange(m) * scale + scale // 2
        offsets = np.arange(-2 * scale, 2 * scale)
        cols = centers[:, None] + offsets[None, :]
        weights = np.broadcast_to(k[None, :], cols.shape)
    else:
        centers = np.arange(m) * scale + (scale - 1) / 2.0
        first = np.floor(centers - 2 * scale).astype(np.int64)
        cols = first[:, None] + np.arange(4 * scale + 2)[None, :]
        weights = cubic((cols - centers[:, None]) / scale)
        weights = weights / weights.sum(axis=1, keepdims=True)
    mat = np.zeros((m, n))
    rows = np.broadcast_to(np.arange(m)[:, None], cols.shape)
    np.add.at(mat, (rows, _reflect(cols, n)), weights)
    return mat


def official_conv_matrix(kernel: np.ndarray, n: int) -> np.ndarray:
    """The ``n x n`` matrix of the official ``Deblurring`` (DDRM) 1-D convolution.

    ``M[i, j] = k[j - i + K//2]`` for ``i - K//2 <= j < i + K//2`` and ``0 <= j < n``: a
    correlation with zero padding in which, for odd ``K``, the last tap ``k[K-1]`` is never used
    (the loop's upper bound is exclusive). Kept as is in faithful mode.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    half = kernel.shape[0] // 2
    mat = np.zeros((n, n))
    for d in range(-half, half):
        idx = np.arange(max(0, -d), min(n, n - d))
        mat[idx, idx + d] = kernel[d + half]
    return mat


def svd_truncated(mat: np.ndarray, threshold: float, *, relative: bool):
    """SVD ``M = U diag(s) Vᵀ`` with small singular values zeroed.

    Absolute: ``s < threshold`` is zeroed (the official rule); relative: ``s <= threshold·s_max``.

    Returns ``(U, s_t, V)`` with full square ``U`` (``m x m``) and ``V`` (``n x n``) and
    ``s_t`` of length ``min(m, n)``. Zeroed values are removed from the operator itself, so
    ``A = U diag(s_t) Vᵀ`` and ``A⁺ = V diag(s_t⁺) Uᵀ`` satisfy the Penrose equations exactly.
    """
    u, s, vt = np.linalg.svd(mat, full_matrices=True)
    cut = threshold * (s.max() if (relative and s.size) else 1.0)
    s_t = np.where(s > cut, s, 0.0) if relative else np.where(s < cut, 0.0, s)
    return u, s_t, vt.T
