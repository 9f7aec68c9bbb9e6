"""Images in and out: files <-> float32 HWC arrays in [-1, 1].

Conventions (the whole library uses them):

* Arrays are float32, channels last, values in ``[-1, 1]``; a file's 8-bit value ``k`` maps to
  ``k / 127.5 - 1`` and back with ``round((x + 1) * 127.5)`` (clipped to ``[0, 255]``), so a
  write/read round trip of 8-bit data is exact.
* ``read_image`` always returns 3 channels: grayscale is replicated; an alpha channel is
  composited on a **white** background (``rgb * a + 1 * (1 - a)`` on ``[0, 1]`` values);
  palette, CMYK, YCbCr, ... are converted to RGB by Pillow. The EXIF orientation tag is applied,
  so the array looks like the picture an image viewer shows.
* 16-bit grayscale PNGs are read at full precision (``v / 65535``). Pillow reduces 16-bit
  RGB/RGBA PNGs to their top 8 bits when it opens them, so those are read at 8-bit precision.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PathLike = str | os.PathLike

#: File extensions (lower case) that :func:`list_images` picks up inside folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pnm",
    ".gif",
)

# JPEG/WebP are lossy: a high quality keeps restored outputs close to what was computed.
_LOSSY_QUALITY = 95


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Convert an array in ``[-1, 1]`` to ``uint8``: ``clip(round((x + 1) * 127.5), 0, 255)``.

    Args:
      x: array of any shape (numpy or JAX), values nominally in ``[-1, 1]``; values outside
        are clipped.

    Returns:
      ``np.uint8`` array of the same shape.

    Raises:
      ValueError: if ``x`` contains NaN or infinite values (they have no pixel value).
    """
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("to_uint8: the image contains NaN or infinite values")
    return np.clip(np.round((arr + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(u: np.ndarray) -> np.ndarray:
    """Convert ``uint8`` values ``k`` to float32 ``k / 127.5 - 1`` in ``[-1, 1]``."""
    arr = np.asarray(u)
    if arr.dtype != np.uint8:
        raise TypeError(f"from_uint8: expected a uint8 array, got dtype {arr.dtype}")
    # Computed in float64 and rounded once, so that read_image gives identical values.
    return (arr.astype(np.float64) / 127.5 - 1.0).astype(np.float32)


def _signed_rgb(img: Image.Image) -> np.ndarray:
    """Pillow image -> float32 (H, W, 3) in [-1, 1]; see the module docstring for the rules."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (Pillow opens 16-bit gray PNG/TIFF as I;16 or I).
        unit = np.clip(np.asarray(img, dtype=np.float64) / 65535.0, 0.0, 1.0)
    elif mode == "F":
        # 32-bit float images (e.g. TIFF) are taken to hold values in [0, 1].
        unit = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
        alpha = rgba[..., 3:4]
        unit = rgba[..., :3] * alpha + (1.0 - alpha)  # composite on white
    elif mode in ("1", "L"):
        return np.repeat(from_uint8(np.asarray(img.convert("L")))[..., None], 3, axis=-1)
    else:
        return from_uint8(np.asarray(img.convert("RGB")))
    if unit.ndim == 2:
        unit = np.repeat(unit[..., None], 3, axis=-1)
    return (unit * 2.0 - 1.0).astype(np.float32)


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as a float32 ``(H, W, 3)`` array in ``[-1, 1]``.

    Any format Pillow opens (PNG, JPEG, BMP, TIFF, WebP, ...). Grayscale is replicated to 3
    channels, alpha is composited on white, 16-bit grayscale keeps full precision (see the
    module docstring).

    Args:
      path: file path.

    Returns:
      float32 array ``(H, W, 3)`` with values in ``[-1, 1]``.

    Raises:
      ValueError: naming the path and the reason when the file does not exist, is a folder,
        is not an image Pillow recognises, or is truncated/corrupt.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"cannot read image '{p}': the file does not exist")
    if p.is_dir():
        raise ValueError(f"cannot read image '{p}': it is a folder, not a file")
    try:
        with Image.open(p) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            out = _signed_rgb(img)
    except UnidentifiedImageError:
        raise ValueError(
            f"cannot read image '{p}': not an image format Pillow recognises"
        ) from None
    except PermissionError:
        raise ValueError(f"cannot read image '{p}': permission denied") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"cannot read image '{p}': too large to decode safely ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated / corrupt data
        raise ValueError(
            f"cannot read image '{p}': the file is corrupt or truncated ({err})"
        ) from None
    return out


def _pil_format(p: Path) -> str:
    ext = p.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise ValueError(
            f"cannot write image '{p}': unknown extension '{p.suffix}' "
            f"(use one of {', '.join(IMAGE_EXTENSIONS)})"
        )
    return fmt


def write_uint8(path: PathLike, u: np.ndarray, overwrite: bool = False) -> Path:
    """Write a ``uint8`` array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``.

    The format follows the extension. Parent folders are created. Without ``overwrite`` the
    file is created exclusively, so an existing file is never replaced.

    Raises:
      FileExistsError: naming the path, if it exists and ``overwrite`` is False.
      ValueError: for an unknown extension or a bad shape/dtype.
    """
    p = Path(path)
    arr = np.asarray(u)
    if arr.dtype != np.uint8:
        raise ValueError(f"write_uint8: expected a uint8 array, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise ValueError(
            f"cannot write image '{p}': expected shape (H, W), (H, W, 1), (H, W, 3) or "
            f"(H, W, 4), got {arr.shape}"
        )
    fmt = _pil_format(p)
    img = Image.fromarray(np.ascontiguousarray(arr))
    if fmt == "JPEG" and img.mode == "RGBA":
        raise ValueError(f"cannot write image '{p}': JPEG has no alpha channel")
    options = {"quality": _LOSSY_QUALITY} if fmt in ("JPEG", "WEBP") else {}
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fh = open(p, "wb" if overwrite else "xb")
    except FileExistsError:
        raise FileExistsError(
            f"refusing to overwrite existing file '{p}' (pass overwrite=True to replace it)"
        ) from None
    try:
        with fh:
            img.save(fh, format=fmt, **options)
    except BaseException:  # (Ctrl-C too)
        p.unlink(missing_ok=True)  # do not leave a half-written file behind
        raise
    return p


def write_image(path: PathLike, x: np.ndarray, overwrite: bool = False) -> Path:
    """Write an image in ``[-1, 1]`` to ``path`` (format from the extension).

    Values are clipped to ``[-1, 1]`` and rounded to 8 bits with :func:`to_uint8`.

    Args:
      path: destination; parent folders are created.
      x: ``(H, W, 3)``, ``(H, W, 1)``, ``(H, W)`` or ``(1, H, W, C)`` array (numpy or JAX).
      overwrite: replace an existing file; by default an existing file is an error.

    Returns:
      The path written.

    Raises:
      FileExistsError: naming the path when it exists and ``overwrite`` is False.
      ValueError: for non-finite values, a bad shape or an unknown extension.
    """
    arr = np.asarray(x)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(
                f"write_image: got a batch of {arr.shape[0]} images; write them one at a time"
            )
        arr = arr[0]
    return write_uint8(path, to_uint8(arr), overwrite=overwrite)


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(inputs: PathLike | Iterable[PathLike]) -> list[Path]:
    """Expand files and folders into a list of image files.

    A folder contributes its image files (by :data:`IMAGE_EXTENSIONS`, case-insensitive,
    hidden files skipped, not recursive) sorted by name; a file is taken as given. A list
    is expanded item by item, keeping its order.

    Args:
      inputs: a path or a sequence of paths.

    Returns:
      A list of :class:`pathlib.Path`.

    Raises:
      ValueError: for a path that does not exist, a file without an image extension, or
        when no image is found at all.
    """
    items: Sequence[PathLike]
    if isinstance(inputs, (str, os.PathLike)):
        items = [inputs]
    else:
        items = list(inputs)
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found.extend(
                sorted((c for c in p.iterdir() if _is_image_file(c)), key=lambda c: c.name)
            )
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise ValueError(
                    f"'{p}' is not an image file (extension '{p.suffix}' is not one of "
                    f"{', '.join(IMAGE_EXTENSIONS)})"
                )
            found.append(p)
        else:
            raise ValueError(f"input path '{p}' does not exist")
    if not found:
        names = ", ".join(f"'{Path(i)}'" for i in items) or "(empty list)"
        raise ValueError(f"no image files found in {names}")
    return found
