"""Spatial helpers on HWC / NHWC arrays: pad to a multiple, crop back, nearest resize.

All functions accept numpy or JAX arrays and return the same kind (JAX in, JAX out), so they
can be used inside ``jax.jit`` (sizes are static there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_PAD_MODES = ("reflect", "symmetric", "edge", "constant", "wrap")


def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


def _spatial_axes(x, name: str) -> tuple[int, int]:
    if x.ndim not in (3, 4):
        raise ValueError(f"{name}: expected an HWC or NHWC array, got shape {tuple(x.shape)}")
    return (x.ndim - 3, x.ndim - 2)


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    return a, b


def pad_to_multiple(x, multiple: int | tuple[int, int], mode: str = "reflect"):
    """Pad the bottom and right of an image so that H and W are multiples of ``multiple``.

    Args:
      x: ``(H, W, C)`` or ``(N, H, W, C)`` array.
      multiple: an int, or ``(mh, mw)`` for height and width separately (positive).
      mode: ``numpy.pad`` mode: ``"reflect"`` (default, mirror without repeating the edge),
        ``"symmetric"``, ``"edge"``, ``"constant"`` (zeros) or ``"wrap"``.

    Returns:
      ``(padded, (H, W))``: the padded array and the original size to give to :func:`crop_to`.
    """
    if mode not in _PAD_MODES:
        raise ValueError(f"pad_to_multiple: mode must be one of {_PAD_MODES}, got {mode!r}")
    mh, mw = _pair(multiple, "pad_to_multiple: multiple")
    if mh < 1 or mw < 1:
        raise ValueError(f"pad_to_multiple: multiple must be positive, got {multiple!r}")
    ah, aw = _spatial_axes(x, "pad_to_multiple")
    h, w = int(x.shape[ah]), int(x.shape[aw])
    ph, pw = (-h) % mh, (-w) % mw
    if ph == 0 and pw == 0:
        return x, (h, w)
    widths = [(0, 0)] * x.ndim
    widths[ah] = (0, ph)
    widths[aw] = (0, pw)
    return _xp(x).pad(x, widths, mode=mode), (h, w)


def crop_to(x, size: tuple[int, int]):
    """Crop an HWC/NHWC array to its top-left ``size = (H, W)``; undoes :func:`pad_to_multiple`."""
    ah, _ = _spatial_axes(x, "crop_to")
    h, w = _pair(size, "crop_to: size")
    if h < 1 or w < 1 or h > x.shape[ah] or w > x.shape[ah + 1]:
        raise ValueError(
            f"crop_to: size {(h, w)} must be positive and at most the array's spatial size "
            f"{tuple(x.shape[ah : ah + 2])}"
        )
    return x[..., :h, :w, :]


def resize_nearest(x, size: tuple[int, int]):
    """Nearest-neighbour resize of an HWC/NHWC array to ``size = (H_out, W_out)``.

    Output pixel ``i`` takes input pixel ``floor((i + 0.5) * H_in / H_out)``, so an integer
    upscale by ``k`` repeats each pixel ``k`` times (the usual way to show a small SR input
    at the size of the output).
    """
    ah, aw = _spatial_axes(x, "resize_nearest")
    ho, wo = _pair(size, "resize_nearest: size")
    if ho < 1 or wo < 1:
        raise ValueError(f"resize_nearest: size must be positive, got {size!r}")
    hi, wi = int(x.shape[ah]), int(x.shape[aw])
    rows = np.minimum(((np.arange(ho) + 0.5) * hi / ho).astype(np.int64), hi - 1)
    cols = np.minimum(((np.arange(wo) + 0.5) * wi / wo).astype(np.int64), wi - 1)
    xp = _xp(x)
    return xp.take(xp.take(x, rows, axis=ah), cols, axis=aw)
