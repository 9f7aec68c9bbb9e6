"""Inpainting masks: ``1`` = observed (keep), ``0`` = missing. All helpers return numpy float64.

Built-in masks (``inpainting`` with ``mask="box" | "random" | "half"``):

* :func:`box_mask`: everything kept except a rectangle (default: the centred ``H/2 x W/2`` box).
* :func:`random_mask`: exactly ``round(keep_ratio · H · W)`` pixels kept, chosen uniformly
  from a JAX PRNG key (same key -> same mask).
* :func:`half_mask`: one half of the image kept (default: the left half).
* :func:`load_mask`: a mask from an image file (nonzero = keep, via PIL) or a ``.npy`` file
  (the official ``experiments/inp_masks/*.npy`` format).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from .base import as_prng_key

__all__ = ["box_mask", "random_mask", "half_mask", "load_mask", "resolve_mask", "BUILTIN_MASKS"]

BUILTIN_MASKS = ("box", "random", "half")


def _check_hw(height: Any, width: Any) -> tuple[int, int]:
    for nm, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{nm} must be a positive int, got {v!r}")
    return int(height), int(width)


def box_mask(
    height: int,
    width: int,
    *,
    top: int | None = None,
    left: int | None = None,
    box_height: int | None = None,
    box_width: int | None = None,
) -> np.ndarray:
    """``(H, W)`` mask that hides one rectangle; defaults to the centred ``H//2 x W//2`` box.

    Args:
      height, width: image size.
      top, left: upper-left corner of the hidden box (default: centred).
      box_height, box_width: size of the hidden box (default ``H//2``, ``W//2``).
    """
    height, width = _check_hw(height, width)
    bh = height // 2 if box_height is None else int(box_height)
    bw = width // 2 if box_width is None else int(box_width)
    t = (height - bh) // 2 if top is None else int(top)
    lft = (width - bw) // 2 if left is None else int(left)
    if bh < 0 or bw < 0 or t < 0 or lft < 0 or t + bh > height or lft + bw > width:
        raise ValueError(
            f"box (top={t}, left={lft}, box_height={bh}, box_width={bw}) does not fit in "
            f"a {height}x{width} image"
        )
    mask = np.ones((height, width))
    mask[t : t + bh, lft : lft + bw] = 0.0
    return mask


def random_mask(height: int, width: int, keep_ratio: float = 0.5, key: Any = None) -> np.ndarray:
    """``(H, W)`` mask keeping exactly ``round(keep_ratio · H · W)`` random pixels.

    Args:
      height, width: image size.
      keep_ratio: fraction of observed pixels, in ``(0, 1]``.
      key: JAX PRNG key or int seed (``None``: seed 0). Same key, same mask.
    """
    height, width = _check_hw(height, width)
    keep_ratio = _check_ratio(keep_ratio, "keep_ratio")
    n = height * width
    n_keep = max(1, int(round(keep_ratio * n)))
    perm = np.asarray(jax.random.permutation(as_prng_key(key), n))
    mask = np.zeros(n)
    mask[perm[:n_keep]] = 1.0
    return mask.reshape(height, width)


def half_mask(height: int, width: int, *, keep: str = "left") -> np.ndarray:
    """``(H, W)`` mask keeping one half: ``keep`` in ``"left" | "right" | "top" | "bottom"``."""
    height, width = _check_hw(height, width)
    mask = np.zeros((height, width))
    if keep == "left":
        mask[:, : width // 2] = 1.0
    elif keep == "right":
        mask[:, width // 2 :] = 1.0
    elif keep == "top":
        mask[: height // 2, :] = 1.0
    elif keep == "bottom":
        mask[height // 2 :, :] = 1.0
    else:
        raise ValueError(f"keep must be 'left', 'right', 'top' or 'bottom', got {keep!r}")
    return mask


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Load a mask: ``.npy`` arrays as stored, images via PIL; nonzero = keep.

    Grey images give ``(H, W)``; colour images give ``(H, W)`` too, a pixel being kept when any
    colour channel is nonzero (an alpha channel is ignored).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"mask file {path!r} does not exist")
    if path.lower().endswith(".npy"):
        arr = np.load(path)
    else:
        from PIL import Image

        with Image.open(path) as img:
            if img.mode in ("1", "L", "I", "I;16", "F"):
                arr = np.asarray(img)
            else:  # colour, palette, with alpha: keep where any colour channel is nonzero
                arr = np.any(np.asarray(img.convert("RGBA"))[..., :3] != 0, axis=-1)
    return (np.asarray(arr) != 0).astype(np.float64)


def _check_ratio(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in (0, 1], got {value!r}") from None
    if not (0.0 < v <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return v


def resolve_mask(
    mask: Any, image_shape: tuple[int, int, int], *, keep_ratio: float | None, key: Any
) -> np.ndarray:
    """Turn the ``mask`` argument of ``inpainting`` into a validated ``(H, W, C)`` 0/1 array.

    ``mask`` may be ``None``/``"box"`` (centred box; ``None`` with a ``keep_ratio`` means
    ``"random"``), ``"random"`` (with ``keep_ratio``, default 0.5, and ``key``),
    ``"half"``, a path to an image/``.npy`` file, or an array of
    shape ``(H, W)``, ``(H, W, 1)`` or ``(H, W, C)`` with values in {0, 1}.
    """
    height, width, channels = image_shape
    if keep_ratio is not None and mask is None:
        mask = "random"
    if keep_ratio is not None and not (isinstance(mask, str) and mask == "random"):
        raise ValueError("keep_ratio is only used with mask='random'")
    if mask is None or (isinstance(mask, str) and mask == "box"):
        arr = box_mask(height, width)
    elif isinstance(mask, str) and mask == "random":
        arr = random_mask(height, width, 0.5 if keep_ratio is None else keep_ratio, key)
    elif isinstance(mask, str) and mask == "half":
        arr = half_mask(height, width)
    elif isinstance(mask, (str, os.PathLike)):
        if not os.path.exists(os.fspath(mask)):
            raise ValueError(
                f"mask must be one of {BUILTIN_MASKS}, an array or an existing file path; "
                f"got {mask!r}"
            )
        arr = load_mask(mask)
    else:
        try:
            arr = np.asarray(mask, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"mask must be an array of 0/1 values, got {type(mask)}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[:2] != (height, width) or arr.shape[2] not in (1, channels):
        raise ValueError(
            f"mask must have shape ({height}, {width}), ({height}, {width}, 1) or "
            f"({height}, {width}, {channels}) for image_shape={image_shape}, got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("mask contains non-finite values")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError("mask values must be 0 (missing) or 1 (observed)")
    return np.ascontiguousarray(np.broadcast_to(arr, (height, width, channels)), dtype=np.float64)
