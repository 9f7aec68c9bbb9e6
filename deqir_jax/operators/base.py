"""Common interface of the degradation operators.

Every operator is a linear map ``A: R^{H x W x C} -> R^m`` applied to batched NHWC images.
It exposes

* ``A(x)``        the measurement ``y = A x``,
* ``A_pinv(y)``   the Moore-Penrose pseudo-inverse ``A⁺ y`` (of the operator as defined,
  including any documented truncation of tiny singular values),
* ``At(y)``       the adjoint ``Aᵀ y`` (``has_adjoint``),
* ``project_range(x) = A⁺ A x`` (the orthogonal projector ``P`` onto the row space) and
  ``project_null(x) = x − P x`` (``Q = I − P``), the decomposition DDNM/DeqIR is built on.

Operators are frozen dataclasses registered as JAX pytrees: arrays (masks, kernels, SVD factors,
permutations) are leaves, sizes and names are static metadata, so an operator can be passed as an
argument to ``jax.jit``/``vmap``/``grad``. Constants are stored as numpy float64 and cast to the
dtype of the input at use: float64 in, float64 out (with ``jax_enable_x64``); float32 in, float32
out; bfloat16/float16 inputs are computed and returned in float32.

Inputs may carry any number (at least one) of leading batch axes: ``(*B, H, W, C)``. Shapes are
checked statically (also under ``jit``) and a mismatch raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

__all__ = [
    "LinearOperator",
    "operator_dataclass",
    "static_field",
    "validate_image_shape",
    "as_prng_key",
]


def static_field(**kwargs: Any) -> Any:
    """A dataclass field stored as static pytree metadata (hashable, not traced)."""
    return dataclasses.field(metadata={"static": True}, **kwargs)


def operator_dataclass(cls: type) -> type:
    """Make ``cls`` a frozen dataclass and register it as a pytree.

    Fields declared with :func:`static_field` become metadata; all others are array leaves.
    """
    cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
    fields = dataclasses.fields(cls)
    meta = [f.name for f in fields if f.metadata.get("static", False)]
    data = [f.name for f in fields if not f.metadata.get("static", False)]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)


def validate_image_shape(image_shape: Any) -> tuple[int, int, int]:
    """Return ``image_shape`` as a tuple ``(H, W, C)`` of positive ints or raise ``ValueError``."""
    try:
        shape = tuple(image_shape)
    except TypeError:
        raise ValueError(
            f"image_shape must be a tuple (H, W, C) of positive ints, got {image_shape!r}"
        ) from None
    ok = len(shape) == 3 and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and int(s) > 0 for s in shape
    )
    if not ok:
        raise ValueError(
            f"image_shape must be a tuple (H, W, C) of positive ints, got {image_shape!r}"
        )
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def as_prng_key(key: Any) -> jax.Array:
    """Turn ``None`` (seed 0), an int seed or a JAX PRNG key into a PRNG key."""
    if key is None:
        return jax.random.PRNGKey(0)
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return jax.random.PRNGKey(int(key))
    if isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == jnp.uint32 and key.shape == (2,))
    ):
        return key
    raise TypeError(f"key must be None, an int seed or a jax PRNG key, got {key!r}")


def compute_dtype(dtype: Any) -> jnp.dtype:
    """float64 stays float64, every other floating dtype computes in float32."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float64) if dtype == jnp.float64 else jnp.dtype(jnp.float32)


def const(arr: Any, dtype: Any) -> jax.Array:
    """Cast a stored constant (numpy float64 or a traced leaf) to the compute dtype."""
    return jnp.asarray(arr).astype(dtype)


@functools.partial(jax.jit, static_argnames=("method",))
def _run(op: LinearOperator, method: str, arr: jax.Array) -> jax.Array:
    """Flatten batch axes, cast, apply ``op.<method>`` and restore the batch axes.

    Jitted so that eager use compiles once per (operator structure, method, shape, dtype);
    under an outer ``jit``/``grad``/``vmap`` it is simply inlined.
    """
    if method == "_A":
        in_tail, out_tail = op.image_shape, op.measurement_shape
    else:
        in_tail, out_tail = op.measurement_shape, op.image_shape
    batch = arr.shape[: arr.ndim - len(in_tail)]
    dt = compute_dtype(arr.dtype)
    out = getattr(op, method)(arr.reshape((-1, *in_tail)).astype(dt))
    return out.astype(dt).reshape((*batch, *out_tail))


class LinearOperator:
    """Base class: a linear degradation ``A`` with pseudo-inverse and adjoint.

    Subclasses are :func:`operator_dataclass` es with static fields ``name`` and
    ``image_shape`` and implement ``_A``, ``_A_pinv`` and ``_At`` on arrays of shape
    ``(B, H, W, C)`` / ``(B, *measurement_shape)`` already cast to the compute dtype.

    Attributes:
      name: the task name (e.g. ``"sr_bicubic"``).
      image_shape: ``(H, W, C)``.
      measurement_shape: shape of ``y`` without the batch axes.
      faithful: whether the operator reproduces the official PyTorch operator.
      has_adjoint: whether ``At`` is available.
    """

    name: str
    image_shape: tuple[int, int, int]
    faithful: bool
    has_adjoint: ClassVar[bool] = True

    @property
    def measurement_shape(self) -> tuple[int, ...]:
        """Shape of one measurement (no batch axis). Defaults to the image shape."""
        return self.image_shape

    # -- subclass hooks -----------------------------------------------------------------
    def _A(self, x: jax.Array) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def _A_pinv(self, y: jax.Array) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def _At(self, y: jax.Array) -> jax.Array:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shape / dtype handling -----------------------------------------------------------
    def _call(self, method: str, arr: Any, what: str, public: str) -> jax.Array:
        arr = jnp.asarray(arr)
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(
                f"{self.name}.{public}: {what} must be a floating-point array, "
                f"got dtype {arr.dtype}"
            )
        tail = tuple(self.image_shape if method == "_A" else self.measurement_shape)
        n = len(tail)
        if arr.ndim < n + 1 or tuple(arr.shape[-n:]) != tail:
            raise ValueError(
                f"{self.name}.{public}: {what} must have shape (B, {', '.join(map(str, tail))})"
                f" for image_shape={self.image_shape}, got {tuple(arr.shape)}"
            )
        return _run(self, method, arr)

    # -- public API -----------------------------------------------------------------------
    def A(self, x: Any) -> jax.Array:
        """Measurement ``y = A x``; ``x: (B, H, W, C)`` -> ``(B, *measurement_shape)``."""
        return self._call("_A", x, "x", "A")

    def A_pinv(self, y: Any) -> jax.Array:
        """Pseudo-inverse ``A⁺ y``; ``y: (B, *measurement_shape)`` -> ``(B, H, W, C)``."""
        return self._call("_A_pinv", y, "y", "A_pinv")

    def At(self, y: Any) -> jax.Array:
        """Adjoint ``Aᵀ y`` (``<A x, y> = <x, Aᵀ y>``); same shapes as :meth:`A_pinv`."""
        if not self.has_adjoint:
            raise NotImplementedError(f"{self.name} has no adjoint")
        return self._call("_At", y, "y", "At")

    def project_range(self, x: Any) -> jax.Array:
        """``P x = A⁺ A x``, the orthogonal projection onto the row space of ``A``."""
        return self.A_pinv(self.A(x))

    def project_null(self, x: Any) -> jax.Array:
        """``Q x = x − A⁺ A x``, the orthogonal projection onto the null space of ``A``."""
        x = jnp.asarray(x)
        p = self.project_range(x)
        return x.astype(p.dtype) - p

    __call__ = A

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, image_shape={self.image_shape}, "
            f"measurement_shape={self.measurement_shape}, faithful={self.faithful})"
        )
