"""The restoration problem as one pytree: everything the samplers and the DEQ map read.

Nothing is closed over (DESIGN.md, Contracts): network params, x_T, y, the noises, the
per-step coefficients and the operator all travel here, so ``jax.custom_vjp`` and ``jax.grad``
reach every array in it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from .coefficients import StepCoefficients


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Problem:
    """Arguments of the restoration chain (a JAX pytree).

    Attributes:
        params: network parameters (any pytree).
        x_T: (B, H, W, C) initial noise.
        y: (B, ...) measurements, or None for unconditional DDIM (A = 0).
        noise: (B, 1, H, W, C) one shared noise (official) or (B, T, H, W, C) fresh per step.
        coeffs: per-step coefficients, arrays of shape (T,).
        op: the degradation operator (a pytree with ``A_pinv``/``project_range``), or None.
    """

    params: Any
    x_T: jax.Array
    y: Any
    noise: jax.Array
    coeffs: StepCoefficients
    op: Any = None

    @property
    def num_steps(self) -> int:
        return self.coeffs.num_steps

    def apy(self):
        """``A⁺y`` (zeros without an operator), (B, H, W, C)."""
        if self.op is None:
            return jnp.zeros_like(self.x_T)
        return self.op.A_pinv(self.y).astype(self.x_T.dtype)

    def project_range(self, x):
        """``P x = A⁺A x`` on any (..., H, W, C) stack of images (zeros without an operator)."""
        if self.op is None:
            return jnp.zeros_like(x)
        lead = x.shape[:-3]
        flat = x.reshape((-1,) + x.shape[-3:])
        return self.op.project_range(flat).astype(x.dtype).reshape(lead + x.shape[-3:])

    def noise_at(self, i):
        """The noise z_i of step i (0-based) as (B, H, W, C); shared noise ignores i."""
        if self.noise.shape[1] == 1:
            return self.noise[:, 0]
        return jax.lax.dynamic_index_in_dim(self.noise, i, axis=1, keepdims=False)
