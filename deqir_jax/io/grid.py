"""Side-by-side comparison grids (input | restored | reference ...) with text labels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import PathLike, to_uint8, write_uint8
from .padding import resize_nearest


def _as_uint8_rgb(img, index: int) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(
            f"make_grid: images[{index}] must be (H, W, 3), (H, W, 1) or (H, W), "
            f"got shape {np.asarray(img).shape}"
        )
    u = arr if arr.dtype == np.uint8 else to_uint8(arr)
    if u.shape[-1] == 1:
        u = np.repeat(u, 3, axis=-1)
    return u


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def make_grid(
    images: Sequence,
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    *,
    pad: int = 4,
    upscale: bool = True,
    background: int = 255,
) -> np.ndarray:
    """Lay images out in a grid of equal cells, each with an optional text label above it.

    Every cell has the size of the largest image. A smaller image is first enlarged by
    nearest neighbour by the largest integer factor that fits the cell (with ``upscale``; e.g.
    a 64x64 SR input next to 256x256 outputs is shown 4x), then centred in its cell.

    Args:
      images: list of ``(H, W, 3)``, ``(H, W, 1)`` or ``(H, W)`` arrays in ``[-1, 1]`` (numpy
        or JAX); ``uint8`` arrays are taken as pixel values.
      labels: one string per image (drawn with Pillow's default font), or None for no labels.
      ncols: number of columns (default: all images in one row).
      pad: pixels of background between and around cells.
      upscale: enlarge small images by an integer nearest-neighbour factor.
      background: gray level (0-255) of the background.

    Returns:
      ``uint8`` array ``(H_grid, W_grid, 3)``.
    """
    if len(images) == 0:
        raise ValueError("make_grid: images is empty")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"make_grid: got {len(labels)} labels for {len(images)} images")
    ncols = len(images) if ncols is None else int(ncols)
    if ncols < 1:
        raise ValueError(f"make_grid: ncols must be a positive int, got {ncols}")
    if pad < 0:
        raise ValueError(f"make_grid: pad must be >= 0, got {pad}")
    tiles = [_as_uint8_rgb(img, i) for i, img in enumerate(images)]
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    nrows = math.ceil(len(tiles) / ncols)

    font = ImageFont.load_default()
    label_h = 0
    if labels is not None:
        left, top, right, bottom = font.getbbox("Hgy|")
        label_h = int(bottom) + 4

    row_h = label_h + cell_h
    grid_h = pad + nrows * (row_h + pad)
    grid_w = pad + ncols * (cell_w + pad)
    canvas = np.full((grid_h, grid_w, 3), background, dtype=np.uint8)

    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        if upscale:
            k = min(cell_h // tile.shape[0], cell_w // tile.shape[1])
            if k > 1:
                tile = resize_nearest(tile, (tile.shape[0] * k, tile.shape[1] * k))
        y0 = pad + r * (row_h + pad) + label_h + (cell_h - tile.shape[0]) // 2
        x0 = pad + c * (cell_w + pad) + (cell_w - tile.shape[1]) // 2
        canvas[y0 : y0 + tile.shape[0], x0 : x0 + tile.shape[1]] = tile

    if labels is not None:
        pil = Image.fromarray(canvas)
        draw = ImageDraw.Draw(pil)
        ink = (0, 0, 0) if background >= 128 else (255, 255, 255)
        for i, text in enumerate(labels):
            r, c = divmod(i, ncols)
            text = _fit_text(draw, str(text), font, cell_w)
            tw = draw.textlength(text, font=font)
            x = pad + c * (cell_w + pad) + max(0, int((cell_w - tw) // 2))
            y = pad + r * (row_h + pad) + 1
            draw.text((x, y), text, fill=ink, font=font)
        canvas = np.asarray(pil, dtype=np.uint8).copy()
    return canvas


def save_grid(
    path: PathLike,
    images: Sequence,
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    *,
    overwrite: bool = False,
    **kwargs,
) -> Path:
    """Build :func:`make_grid` and write it to ``path`` (refusing to overwrite by default).

    Extra keyword arguments go to :func:`make_grid`. Returns the path written.
    """
    grid = make_grid(images, labels, ncols, **kwargs)
    return write_uint8(path, grid, overwrite=overwrite)
