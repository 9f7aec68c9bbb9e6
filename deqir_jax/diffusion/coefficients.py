"""Per-step coefficients shared by the sequential sampler and the DEQ map (ALGORITHM.md §2-3).

One restoration step (DDNM range/null-space step with DeqIR's weights), for i = 1..T::

    x0_i  = (x_{i-1} − √(1−a_i) ε_i) / √a_i
    x̂0_i = x0_i − λ_i A⁺(A x0_i − y)            (= A⁺y + Q x0_i when λ_i = 1)
    x_i   = √a'_i x̂0_i + c1_i z_i + c2_i ε_i
    c1_i  = g_i · nw · √(1−a'_i)      c2_i = g_i · √(1−etw²) · √(1−a'_i)

with ``a_i = ā_{τ_i}``, ``a'_i = ā_{τ_{i+1}}``. Official DeqIR: ``λ_i = 1, g_i = 1``. The
noise-aware DDNM+ variant (Wang et al. 2023, eq. 17-19) uses, with ``s_i = √(1−a'_i)`` and
``σ_y`` in [-1, 1] units: ``λ_i = 1, g_i = √(s_i² − a'_i σ_y²)/s_i`` if ``s_i ≥ √a'_i σ_y``, else
``λ_i = s_i/(√a'_i σ_y), g_i = 0``.

Both samplers read these numbers from :class:`StepCoefficients`, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from .. import schedules


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["sqrt_a", "sqrt_1ma", "sqrt_a_next", "c1", "c2", "lam"],
    meta_fields=["t"],
)
@dataclasses.dataclass(frozen=True)
class StepCoefficients:
    """Scalars of each of the T steps, as arrays of shape (T,). A JAX pytree.

    Fields: ``t`` network times τ_i (a static tuple of ints, so the pytree has only float
    leaves and ``jax.grad`` applies to problems directly); ``sqrt_a`` √a_i; ``sqrt_1ma`` √(1−a_i);
    ``sqrt_a_next`` √a'_i; ``c1`` noise weight; ``c2`` ε weight; ``lam`` DDNM+ λ_i.
    """

    t: tuple
    sqrt_a: np.ndarray
    sqrt_1ma: np.ndarray
    sqrt_a_next: np.ndarray
    c1: np.ndarray
    c2: np.ndarray
    lam: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.t)

    def astype(self, dtype) -> StepCoefficients:
        """Float fields cast to ``dtype`` (``t`` stays integer)."""
        cast = lambda a: jax.numpy.asarray(a, dtype)
        return dataclasses.replace(
            self,
            sqrt_a=cast(self.sqrt_a),
            sqrt_1ma=cast(self.sqrt_1ma),
            sqrt_a_next=cast(self.sqrt_a_next),
            c1=cast(self.c1),
            c2=cast(self.c2),
            lam=cast(self.lam),
        )

    def last(self, n: int) -> StepCoefficients:
        """The last ``n`` steps (every field is per step, so a tail is a schedule itself)."""
        tail = lambda a: a[-n:]
        return dataclasses.replace(
            self, t=tuple(self.t[-n:]), sqrt_a=tail(self.sqrt_a), sqrt_1ma=tail(self.sqrt_1ma),
            sqrt_a_next=tail(self.sqrt_a_next), c1=tail(self.c1), c2=tail(self.c2),
            lam=tail(self.lam))

    # Coefficients of the affine recurrence x_i = D_i x_{i-1} + E_i ε_i + ... split into the
    # null space (Q) and the range space (P) of A; see deq_map.py. Derived here, once.
    @property
    def decay_null(self):
        """``√a'_i/√a_i``: factor on ``Q x_{i-1}``."""
        return self.sqrt_a_next / self.sqrt_a

    @property
    def decay_range(self):
        """``(1−λ_i) √a'_i/√a_i``: factor on ``P x_{i-1}`` (0 for the official DDNM step)."""
        return (1 - self.lam) * self.sqrt_a_next / self.sqrt_a

    @property
    def eps_null(self):
        """``c2_i − √a'_i √(1−a_i)/√a_i``: factor on ``Q ε_i``."""
        return self.c2 - self.decay_null * self.sqrt_1ma

    @property
    def eps_range(self):
        """``c2_i − (1−λ_i) √a'_i √(1−a_i)/√a_i``: factor on ``P ε_i``."""
        return self.c2 - self.decay_range * self.sqrt_1ma

    @property
    def apy_weight(self):
        """``λ_i √a'_i``: factor on ``A⁺y``."""
        return self.lam * self.sqrt_a_next


def _check_weight(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value}")
    return value


def step_coefficients(
    T: int,
    *,
    nw: float = 0.0,
    etw: float = 0.0,
    sigma_y: float = 0.0,
    noise_aware: bool = False,
    schedule: str = "linear",
    skip_type: str = "uniform",
    num_train_steps: int = schedules.NUM_TRAIN_STEPS,
) -> StepCoefficients:
    """Coefficients of the T restoration steps (float64 numpy arrays).

    Args:
        T: number of sampling steps, 1 ≤ T ≤ 1000.
        nw: DeqIR's noise weight (``c1 = nw √(1−a')``); 0 = deterministic.
        etw: DeqIR's ε-shrink weight (``c2 = √(1−etw²) √(1−a')``). ``nw = etw = η`` is
            DDNM's η (noise std η√(1−a'); DDIM's η scales its σ differently).
        sigma_y: measurement noise std in **[0, 1] pixel units** (internally doubled to the
            [-1, 1] range). Only used when ``noise_aware`` is set.
        noise_aware: use the DDNM+ λ/γ correction instead of the official hard projection.
        schedule: ``"linear"`` (official) or ``"cosine"``.
        skip_type: ``"uniform"`` (official) or ``"quad"``.
    """
    nw = _check_weight("nw", nw)
    etw = _check_weight("etw", etw)
    sigma_y = float(sigma_y)
    if not np.isfinite(sigma_y) or sigma_y < 0:
        raise ValueError(f"sigma_y must be a finite number >= 0, got {sigma_y}")
    taus, taus_next = schedules.timesteps(T, num_train_steps, skip_type)
    abar = schedules.alphas_cumprod(schedules.get_betas(schedule, num_train_steps))
    a = schedules.alpha_bar_at(abar, taus)
    a_next = schedules.alpha_bar_at(abar, taus_next)
    s_next = np.sqrt(1.0 - a_next)
    lam = np.ones(T)
    gain = np.ones(T)
    if noise_aware and sigma_y > 0:
        sy = 2.0 * sigma_y * np.sqrt(a_next)  # the measurement noise as it appears in x_i
        big = s_next >= sy
        lam = np.where(big, 1.0, s_next / np.where(big, 1.0, sy))
        gain = np.where(big, np.sqrt(np.maximum(s_next**2 - sy**2, 0.0)) / np.where(
            s_next > 0, s_next, 1.0), 0.0)
    return StepCoefficients(
        t=tuple(int(t) for t in taus),
        sqrt_a=np.sqrt(a),
        sqrt_1ma=np.sqrt(1.0 - a),
        sqrt_a_next=np.sqrt(a_next),
        c1=gain * nw * s_next,
        c2=gain * np.sqrt(1.0 - etw**2) * s_next,
        lam=lam,
    )
