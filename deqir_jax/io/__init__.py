"""Images in and out (files <-> float32 HWC arrays in [-1, 1]), padding, comparison grids.

Checkpoints are handled by :mod:`deqir_jax.models`, not here.
"""

from .grid import make_grid, save_grid
from .images import (
    IMAGE_EXTENSIONS,
    from_uint8,
    list_images,
    read_image,
    to_uint8,
    write_image,
    write_uint8,
)
from .padding import crop_to, pad_to_multiple, resize_nearest

__all__ = [
    "IMAGE_EXTENSIONS",
    "crop_to",
    "from_uint8",
    "list_images",
    "make_grid",
    "pad_to_multiple",
    "read_image",
    "resize_nearest",
    "save_grid",
    "to_uint8",
    "write_image",
    "write_uint8",
]
