"""A closed-form test model: data ~ N(μ, diag(s²)) per pixel, whose ε-prediction is exact.

With ``x_t = √ā x_0 + √(1−ā) n`` the marginal is ``N(√ā μ, ā s² + 1 − ā)`` and the MMSE noise
prediction is ``E[n | x_t] = √(1−ā) (x_t − √ā μ) / (ā s² + 1 − ā)``. Being affine in x, it lets
tests derive sampler outputs independently of the sampler code.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import schedules


def gaussian_eps(params, x, t, *, schedule: str = "linear"):
    """Exact ε for the Gaussian prior. ``params = {"mean": (H,W,C), "std": (H,W,C)}``;
    ``x`` (N, H, W, C); ``t`` (N,) integer times in 0..999."""
    abar = jnp.asarray(schedules.alphas_cumprod(schedules.get_betas(schedule)), x.dtype)
    a = abar[jnp.asarray(t, jnp.int32)][:, None, None, None]
    var = a * params["std"] ** 2 + 1 - a
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * params["mean"]) / var


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"],
                   meta_fields=["eps_fn", "sampler"])
@dataclasses.dataclass(frozen=True)
class GaussianModel:
    """The Gaussian prior in the model interface used by :func:`deqir_jax.restore` (a pytree:
    ``params`` is its child)."""

    params: Any
    eps_fn: Any = gaussian_eps
    sampler: Any = None  # recommended sampler settings (a dq.Sampler), as Model has

    @classmethod
    def create(cls, image_shape, *, seed: int = 0, std_range=(0.2, 0.6), dtype=np.float32):
        """A random smooth mean in [-0.5, 0.5] and per-pixel std in ``std_range``."""
        rng = np.random.default_rng(seed)
        H, W, C = image_shape
        yy, xx = np.meshgrid(np.linspace(0, 1, H), np.linspace(0, 1, W), indexing="ij")
        phase = rng.uniform(0, 2 * np.pi, size=C)
        mean = 0.5 * np.sin(2 * np.pi * (xx[..., None] + 0.5 * yy[..., None]) + phase)
        std = rng.uniform(*std_range, size=(H, W, C))
        return cls(params={"mean": jnp.asarray(mean, dtype), "std": jnp.asarray(std, dtype)})
