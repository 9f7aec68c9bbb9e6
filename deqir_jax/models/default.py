"""The default diffusion prior shipped inside the package (``dq.models.default()``).

A small ADM UNet (guided-diffusion architecture) trained by this project with
:mod:`deqir_jax.train` on Urban100 + SunHays80 crops, first as an ε-network, then fine-tuned
into a v-prediction network (``prediction="v"``; ``eps_fn`` still returns ε); see
``experiments/results/train_prior.md`` for the recipe. It is stored as a regular model
checkpoint (``config.json`` + orbax params) in ``deqir_jax/assets/default_model`` and is
found with :mod:`importlib.resources`, so it works from a source checkout and from an
installed wheel, with no download.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
from pathlib import Path
from typing import Any

from .checkpoint import CONFIG_FILE, load
from .model import Model, dtype_name

#: Location of the packaged checkpoint, relative to the ``deqir_jax`` package.
DEFAULT_MODEL_RESOURCE = ("assets", "default_model")

_KEEP_OPEN = contextlib.ExitStack()  # holds an extracted copy alive (zipped installs)


@functools.lru_cache(maxsize=1)
def default_model_path() -> Path:
    """Filesystem path of the packaged default checkpoint directory.

    Raises:
      FileNotFoundError: naming the expected path when the asset is not installed.
    """
    res = importlib.resources.files("deqir_jax")
    for part in DEFAULT_MODEL_RESOURCE:
        res = res / part
    if isinstance(res, Path):
        path = res
    else:  # a zip or other non-file loader: extract (directories need Python >= 3.12)
        try:
            path = Path(_KEEP_OPEN.enter_context(importlib.resources.as_file(res)))
        except Exception as e:
            raise FileNotFoundError(
                f"the default model asset {'/'.join(DEFAULT_MODEL_RESOURCE)} of deqir_jax "
                f"could not be read from {res} ({e})") from None
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"the default model is not installed: {path / CONFIG_FILE} does not exist "
            "(the package data deqir_jax/assets/default_model is missing; reinstall deqir_jax, "
            "or train one with `python experiments/train_prior.py` and pass its path to "
            "dq.models.load)"
        )
    return path


@functools.lru_cache(maxsize=4)
def _default(dtype: str) -> Model:
    return load(default_model_path(), dtype=dtype)


def default(dtype: Any = None) -> Model:
    """The shipped default prior as a :class:`Model` (loaded once, then cached).

    Args:
      dtype: compute dtype (None/``jnp.float32``: float32; ``jnp.bfloat16`` for bfloat16
        activations). Params are float32 either way.
    Returns:
      the model; ``model.eps_fn(model.params, x, t)`` takes NHWC images in [-1, 1] of any
      height and width that are multiples of ``model.config.size_multiple``.
    Raises:
      FileNotFoundError: naming the missing path when the packaged checkpoint is absent.
    """
    return _default(dtype_name(dtype))
