"""Host-side training data: images preloaded into RAM once, random crops from numpy.

The batch of step ``s`` is a pure function of ``(seed, s)``: its crops are drawn from
``np.random.default_rng([seed, s])``. So the data-loader position is just the step counter,
a resumed run sees exactly the batches the uninterrupted run would have seen, and nothing
about the loader has to be pickled.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import list_images, read_image, to_uint8


def find_images(data: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The image files of the training folders/files; ValueError naming the bad ``data`` entry."""
    items = [data] if isinstance(data, str | os.PathLike) else list(data)
    if not items:
        raise ValueError("data: no image folder given")
    for item in items:
        p = Path(item)
        if not p.exists():
            raise ValueError(f"data: training image folder '{p}' does not exist")
    try:
        return list_images(items)
    except ValueError as e:
        raise ValueError(f"data: {e}") from None


def _resize(img: np.ndarray, scale: float, min_side: int) -> np.ndarray:
    """Downscale a uint8 (H, W, 3) image by ``scale`` (bicubic), never below ``min_side``."""
    h, w = img.shape[:2]
    s = max(scale, min_side / min(h, w))
    if s == 1.0:
        return img
    size = (max(min_side, round(w * s)), max(min_side, round(h * s)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))


class ImageCrops:
    """Random square crops with horizontal flips from images held in RAM as uint8.

    Images smaller than ``crop_size`` are upscaled (bicubic) so their short side equals it.

    Args:
      data: folders and/or image files.
      crop_size: side of the crops in pixels.
      scales: downscale factors in (0, 1]; every image is stored at each scale.
    """

    def __init__(self, data: Sequence[str | os.PathLike], crop_size: int,
                 scales: Sequence[float] = (1.0,)):
        self.paths = find_images(data)
        self.crop_size = int(crop_size)
        self.scales = tuple(float(s) for s in scales)
        self.images: list[np.ndarray] = []
        for path in self.paths:
            full = to_uint8(read_image(path))
            for s in self.scales:
                self.images.append(_resize(full, s, self.crop_size))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_files(self) -> int:
        return len(self.paths)

    def sample(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """(batch_size, crop, crop, 3) float32 crops in [-1, 1] drawn with ``rng``."""
        c = self.crop_size
        out = np.empty((batch_size, c, c, 3), np.uint8)
        idx = rng.integers(0, len(self.images), size=batch_size)
        for b, i in enumerate(idx):
            img = self.images[i]
            h, w = img.shape[:2]
            y0 = rng.integers(0, h - c + 1)
            x0 = rng.integers(0, w - c + 1)
            crop = img[y0:y0 + c, x0:x0 + c]
            out[b] = crop[:, ::-1] if rng.random() < 0.5 else crop
        return out.astype(np.float32) / np.float32(127.5) - np.float32(1.0)

    def batch(self, seed: int, step: int, batch_size: int) -> np.ndarray:
        """The batch of training step ``step`` (a pure function of ``seed`` and ``step``)."""
        return self.sample(np.random.default_rng([int(seed), int(step)]), batch_size)
