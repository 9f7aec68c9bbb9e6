"""Walsh-Hadamard compressed sensing (``cs_walshhadamard``).

Per channel, the image is flattened row-major (``n = h W + w``, ``N = H W``, a power of two),
transformed by the orthonormal Sylvester-Hadamard matrix ``H_N / √N`` (``H_N[i, j] =
(-1)^popcount(i & j)``, the official fast transform), and the coefficients at the first ``m``
entries of a random permutation ``perm`` of ``range(N)`` are kept::

    y[k C + c] = (H_N x_c / √N)[perm[k]],   k < m,  y: (B, m C)

The rows of ``A`` are orthonormal (``A Aᵀ = I``), so ``A⁺ = Aᵀ``: scatter ``y`` back to the
selected coefficients, zeros elsewhere, and transform back (``H_N`` is its own inverse up to
``N``). The layout ``k C + c`` is the official one.

* clean: ``m = round(ratio · N)``.
* faithful: ``m = N // round(1/ratio)`` as in the official code (``ratio = 0.5`` -> ``N/2``,
  the same as clean).

The official permutation is ``torch.randperm(N)`` (PyTorch's global RNG); here it comes from a
JAX key, or pass ``perm=`` explicitly (e.g. one exported from PyTorch) to reproduce official
measurements exactly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .base import LinearOperator, as_prng_key, operator_dataclass, static_field

__all__ = ["WalshHadamardCS", "walsh_hadamard_cs", "fwht"]


def _sylvester(n: int) -> np.ndarray:
    """Sylvester-Hadamard matrix ``H_n`` (``H_2n = [[H_n, H_n], [H_n, -H_n]]``), natural order."""
    mat = np.ones((1, 1))
    while mat.shape[0] < n:
        mat = np.block([[mat, mat], [mat, -mat]])
    return mat


def fwht(x: jax.Array, axis: int = 1) -> jax.Array:
    """Orthonormal Walsh-Hadamard transform (natural/Sylvester order) along ``axis``.

    ``x.shape[axis] = N`` must be a power of two. Uses ``H_N = H_{n_1} ⊗ … ⊗ H_{n_k}`` with
    factors ``n_j <= 64`` applied along the axes of a row-major reshape (a radix-64 fast
    transform, ``O(N log N)``, few XLA ops). Symmetric and its own inverse.
    """
    x = jnp.moveaxis(x, axis, -1)
    lead, n = x.shape[:-1], x.shape[-1]
    factors, rest = [], n
    while rest > 1:
        f = min(rest, 64)
        factors.append(f)
        rest //= f
    y = x.reshape(*lead, *factors)
    for j, f in enumerate(factors):
        ax = len(lead) + j
        y = jnp.moveaxis(jnp.tensordot(y, jnp.asarray(_sylvester(f), x.dtype), ((ax,), (0,))),
                         -1, ax)
    y = y.reshape(*lead, n) / jnp.sqrt(jnp.asarray(n, dtype=x.dtype))
    return jnp.moveaxis(y, -1, axis)


@operator_dataclass
class WalshHadamardCS(LinearOperator):
    """Walsh-Hadamard compressed sensing; see the module docstring for the maths."""

    selected: np.ndarray  # perm[:m], int64
    image_shape: tuple[int, int, int] = static_field()
    num_selected: int = static_field()
    name: str = static_field(default="cs_walshhadamard")
    faithful: bool = static_field(default=False)

    @property
    def measurement_shape(self) -> tuple[int, ...]:
        return (self.num_selected * self.image_shape[2],)

    def _A(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        z = fwht(x.reshape(b, h * w, c), axis=1)
        return jnp.take(z, jnp.asarray(self.selected), axis=1).reshape(b, -1)

    def _A_pinv(self, y: jax.Array) -> jax.Array:
        h, w, c = self.image_shape
        b = y.shape[0]
        z = jnp.zeros((b, h * w, c), y.dtype)
        z = z.at[:, jnp.asarray(self.selected), :].set(y.reshape(b, -1, c))
        return fwht(z, axis=1).reshape(b, h, w, c)

    _At = _A_pinv


def walsh_hadamard_cs(
    image_shape: tuple[int, int, int],
    *,
    ratio: float = 0.5,
    key: Any = None,
    perm: Any = None,
    faithful: bool = False,
) -> WalshHadamardCS:
    """Build :class:`WalshHadamardCS`; ``H·W`` must be a power of two.

    Args:
      image_shape: ``(H, W, C)``.
      ratio: fraction of kept coefficients, in ``(0, 1]`` (default 0.5).
      key: JAX PRNG key or int seed for the permutation (``None``: seed 0).
      perm: an explicit permutation of ``range(H W)`` (overrides ``key``).
      faithful: use the official count ``N // round(1/ratio)``.
    """
    h, w, _ = image_shape
    n = h * w
    if n & (n - 1):
        raise ValueError(
            f"cs_walshhadamard needs H*W to be a power of two (Walsh-Hadamard transform), "
            f"got image_shape={tuple(image_shape)} with H*W={n}"
        )
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise TypeError(f"ratio must be a number in (0, 1], got {ratio!r}") from None
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    m = n // round(1.0 / ratio) if faithful else max(1, int(round(ratio * n)))
    if perm is None:
        perm = np.asarray(jax.random.permutation(as_prng_key(key), n))
    else:
        if key is not None:
            raise ValueError("pass either key or perm to cs_walshhadamard, not both")
        perm = np.asarray(perm)
        if (
            perm.shape != (n,)
            or not np.issubdtype(perm.dtype, np.integer)
            or not np.array_equal(np.sort(perm), np.arange(n))
        ):
            raise ValueError(f"perm must be a permutation of range({n}) (H*W), got shape "
                             f"{perm.shape} dtype {perm.dtype}")
    return WalshHadamardCS(
        selected=np.asarray(perm[:m], dtype=np.int64), image_shape=tuple(image_shape),
        num_selected=int(m), faithful=bool(faithful),
    )
