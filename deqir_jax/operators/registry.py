"""``get(name, image_shape, ...)``: build an operator from its task name (= CLI ``--task``).

All validation happens here, eagerly, before any tracing. Randomness (random masks, the CS
permutation) is drawn once at construction from ``key`` (``None`` means seed 0).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from .base import LinearOperator, validate_image_shape
from .cs import walsh_hadamard_cs
from .deblur import fft_deblur, svd_deblur
from .kernels import (
    gaussian_kernel_1d,
    official_gaussian_kernel_f32,
    official_uniform_kernel_f32,
    uniform_kernel_1d,
)
from .masks import resolve_mask
from .pointwise import OFFICIAL_GRAY_WEIGHTS, Colorization, Denoising, Inpainting
from .superres import AveragePoolSR, bicubic_sr, check_scale

__all__ = ["get", "TASKS", "ALIASES", "canonical_name"]

#: Official task names (DDNM/DeqIR ``--deg``), in a stable order.
TASKS = (
    "sr_averagepooling",
    "sr_bicubic",
    "deblur_gauss",
    "deblur_uni",
    "deblur_aniso",
    "inpainting",
    "colorization",
    "cs_walshhadamard",
    "denoising",
)

#: Short and alternative names -> official names. ``"deblur"`` means a user ``kernel=``
#: when one is given and ``deblur_gauss`` otherwise.
ALIASES = {
    "sr": "sr_bicubic",
    "bicubic": "sr_bicubic",
    "sr_bic": "sr_bicubic",
    "sr_avg": "sr_averagepooling",
    "sr_pool": "sr_averagepooling",
    "sr_average": "sr_averagepooling",
    "avgpool": "sr_averagepooling",
    "deblur": "deblur",
    "deblur_gaussian": "deblur_gauss",
    "gauss": "deblur_gauss",
    "deblur_uniform": "deblur_uni",
    "deblur_anisotropic": "deblur_aniso",
    "inpaint": "inpainting",
    "color": "colorization",
    "colorize": "colorization",
    "gray": "colorization",
    "grey": "colorization",
    "cs": "cs_walshhadamard",
    "cs_wh": "cs_walshhadamard",
    "compressed_sensing": "cs_walshhadamard",
    "walsh_hadamard": "cs_walshhadamard",
    "denoise": "denoising",
    "identity": "denoising",
}


def canonical_name(name: str) -> str:
    """Official task name for ``name`` (case/hyphen-insensitive) or ``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"task name must be a str, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    if key in TASKS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    raise ValueError(
        f"unknown task {name!r}; valid names: {', '.join(TASKS)} "
        f"(aliases: {', '.join(sorted(ALIASES))})"
    )


# --------------------------------------------------------------------------------------
# validation helpers


def _float_param(value: Any, name: str, *, positive: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or (positive and v <= 0) or (not positive and v < 0):
        raise ValueError(f"{name} must be a finite {'positive' if positive else 'non-negative'}"
                         f" number, got {value!r}")
    return v


def _int_param(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _threshold(value: Any) -> float | None:
    return None if value is None else _float_param(value, "pinv_threshold", positive=False)


def _kernel_array(kernel: Any, image_shape: tuple[int, int, int], ndims: tuple[int, ...]):
    try:
        k = np.asarray(kernel, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"kernel must be a numeric array, got {type(kernel)}") from None
    if k.ndim not in ndims or k.size == 0:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"kernel must be a non-empty {want} array, got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise ValueError("kernel contains non-finite values")
    h, w, _ = image_shape
    kh, kw = (k.shape[0], k.shape[0]) if k.ndim == 1 else k.shape
    if kh > h or kw > w:
        raise ValueError(f"kernel of shape {k.shape} is larger than the image {h}x{w}")
    if not np.any(k):
        raise ValueError("kernel is all zeros")
    return k


# --------------------------------------------------------------------------------------
# builders: one per official task; signature = accepted parameters


def _sr_averagepooling(shape, *, faithful, key, scale=4):
    return AveragePoolSR(scale=check_scale(scale, shape), image_shape=shape, faithful=faithful)


def _sr_bicubic(shape, *, faithful, key, scale=4, pinv_threshold=None):
    return bicubic_sr(shape, scale, faithful=faithful, pinv_threshold=_threshold(pinv_threshold))


def _deblur_from_1d(shape, k_h, k_w, name, faithful, pinv_threshold, perm):
    """``k_h``/``k_w``: pairs (clean float64 kernel, official float32-built kernel)."""
    if faithful:
        thr = 3e-2 if pinv_threshold is None else _threshold(pinv_threshold)
        return svd_deblur(shape, k_h[1], k_w[1], name=name, threshold=thr, perm=perm)
    k_h, k_w = k_h[0], k_w[0]
    if perm is not None:
        raise ValueError(f"perm is only used by the faithful {name} (faithful=True)")
    return fft_deblur(shape, np.outer(k_h, k_w), name=name,
                      pinv_threshold=_threshold(pinv_threshold))


def _deblur_gauss(shape, *, faithful, key, sigma=10.0, kernel_size=5, pinv_threshold=None,
                  perm=None):
    sigma, size = _float_param(sigma, "sigma"), _odd(kernel_size)
    k = (gaussian_kernel_1d(sigma, size), official_gaussian_kernel_f32(sigma, size))
    return _deblur_from_1d(shape, k, k, "deblur_gauss", faithful, pinv_threshold, perm)


def _deblur_uni(shape, *, faithful, key, kernel_size=9, pinv_threshold=None, perm=None):
    size = _int_param(kernel_size, "kernel_size")
    k = (uniform_kernel_1d(size), official_uniform_kernel_f32(size))
    return _deblur_from_1d(shape, k, k, "deblur_uni", faithful, pinv_threshold, perm)


def _deblur_aniso(shape, *, faithful, key, sigma=(1.0, 20.0), kernel_size=9,
                  pinv_threshold=None, perm=None):
    try:
        s_h, s_w = sigma
    except (TypeError, ValueError):
        raise ValueError(f"sigma for deblur_aniso must be a pair (sigma_H, sigma_W), "
                         f"got {sigma!r}") from None
    size = _odd(kernel_size)
    s_h, s_w = _float_param(s_h, "sigma[0]"), _float_param(s_w, "sigma[1]")
    k_h = (gaussian_kernel_1d(s_h, size), official_gaussian_kernel_f32(s_h, size))
    k_w = (gaussian_kernel_1d(s_w, size), official_gaussian_kernel_f32(s_w, size))
    return _deblur_from_1d(shape, k_h, k_w, "deblur_aniso", faithful, pinv_threshold, perm)


def _deblur(shape, *, faithful, key, kernel=None, pinv_threshold=None, perm=None):
    if kernel is None:
        return _deblur_gauss(shape, faithful=faithful, key=key, pinv_threshold=pinv_threshold,
                             perm=perm)
    if faithful:
        k = _kernel_array(kernel, shape, (1,))
        thr = 3e-2 if pinv_threshold is None else _threshold(pinv_threshold)
        return svd_deblur(shape, k, k, name="deblur", threshold=thr, perm=perm)
    if perm is not None:
        raise ValueError("perm is only used by the faithful deblur (faithful=True)")
    k = _kernel_array(kernel, shape, (1, 2))
    k2 = np.outer(k, k) if k.ndim == 1 else k
    return fft_deblur(shape, k2, name="deblur", pinv_threshold=_threshold(pinv_threshold))


def _odd(size: Any) -> int:
    size = _int_param(size, "kernel_size")
    if size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {size}")
    return size


def _inpainting(shape, *, faithful, key, mask=None, keep_ratio=None):
    return Inpainting(mask=resolve_mask(mask, shape, keep_ratio=keep_ratio, key=key),
                      image_shape=shape, faithful=faithful)


def _colorization(shape, *, faithful, key):
    c = shape[2]
    if faithful:
        if c != 3:
            raise ValueError(f"faithful colorization needs C=3 channels, got image_shape={shape}")
        w = np.asarray(OFFICIAL_GRAY_WEIGHTS, dtype=np.float64)
    else:
        w = np.full((c,), 1.0 / c)
    return Colorization(weights=w, image_shape=shape, faithful=faithful)


def _cs_walshhadamard(shape, *, faithful, key, ratio=0.5, perm=None):
    return walsh_hadamard_cs(shape, ratio=ratio, key=key, perm=perm, faithful=faithful)


def _denoising(shape, *, faithful, key):
    return Denoising(image_shape=shape, faithful=faithful)


_BUILDERS = {
    "sr_averagepooling": _sr_averagepooling,
    "sr_bicubic": _sr_bicubic,
    "deblur_gauss": _deblur_gauss,
    "deblur_uni": _deblur_uni,
    "deblur_aniso": _deblur_aniso,
    "deblur": _deblur,
    "inpainting": _inpainting,
    "colorization": _colorization,
    "cs_walshhadamard": _cs_walshhadamard,
    "denoising": _denoising,
}


def _accepted(builder) -> list[str]:
    params = inspect.signature(builder).parameters
    return [p for p in params if p not in ("shape", "faithful", "key")]


def get(
    name: str,
    image_shape: tuple[int, int, int] = (256, 256, 3),
    *,
    key: Any = None,
    faithful: bool = False,
    **params: Any,
) -> LinearOperator:
    """Build the degradation operator of a task.

    Args:
      name: an official task name (:data:`TASKS`) or an alias (:data:`ALIASES`).
      image_shape: ``(H, W, C)`` of the images (any size; SR needs ``scale | H, W``; CS needs
        ``H·W`` a power of two).
      key: JAX PRNG key or int seed for random masks / the CS permutation (``None``: seed 0).
      faithful: reproduce the official PyTorch operator (quirks included) instead of the
        mathematically clean one; see each operator's docstring for the differences.
      **params: task parameters:

        * ``sr_averagepooling``: ``scale`` (int, default 4).
        * ``sr_bicubic``: ``scale`` (default 4), ``pinv_threshold``.
        * ``deblur_gauss``: ``sigma`` (10), ``kernel_size`` (5, odd), ``pinv_threshold``.
        * ``deblur_uni``: ``kernel_size`` (9), ``pinv_threshold``.
        * ``deblur_aniso``: ``sigma`` = ``(sigma_H, sigma_W)`` (``(1, 20)``), ``kernel_size``
          (9), ``pinv_threshold``.
        * faithful ``deblur_*`` also take ``perm``: the official sort permutation from a
          PyTorch run (see :func:`~deqir_jax.operators.deblur.svd_deblur`).
        * ``deblur``: ``kernel`` (2-D array; 1-D means separable ``k kᵀ``; faithful needs 1-D),
          ``pinv_threshold``; without ``kernel`` it is ``deblur_gauss``.
        * ``inpainting``: ``mask`` (array ``HxW``/``HxWx1``/``HxWxC`` of 0/1 with 1 = keep, a
          path to an image or ``.npy`` file, or ``"box"`` (default), ``"random"``, ``"half"``),
          ``keep_ratio`` (with ``"random"``, default 0.5).
        * ``cs_walshhadamard``: ``ratio`` (0.5), ``perm`` (explicit permutation).
        * ``colorization``, ``denoising``: none.

        ``pinv_threshold``: clean operators zero singular values / frequencies
        ``<= pinv_threshold · max`` (default ``1e-3``) in both ``A`` and ``A⁺``; faithful ones
        use the official absolute ``3e-2`` on the 1-D singular values.

    Returns:
      A :class:`~deqir_jax.operators.base.LinearOperator` (a pytree).

    Raises:
      ValueError / TypeError naming the offending argument.
    """
    task = canonical_name(name)
    if task == "deblur" and params.get("kernel") is None:
        task = "deblur_gauss"
        params.pop("kernel", None)
    shape = validate_image_shape(image_shape)
    if not isinstance(faithful, (bool, np.bool_)):
        raise TypeError(f"faithful must be a bool, got {faithful!r}")
    builder = _BUILDERS[task]
    accepted = _accepted(builder)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(
            f"unexpected parameter(s) {unknown} for task {task!r}; accepted: {accepted or 'none'}"
        )
    return builder(shape, faithful=bool(faithful), key=key, **params)
