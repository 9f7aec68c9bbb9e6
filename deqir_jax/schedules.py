"""Noise schedules and sampling-time sequences (ALGORITHM.md §1).

All schedule arrays are float64 numpy arrays computed once on the host; they enter jitted code
as arrays of the working dtype through :class:`~deqir_jax.diffusion.coefficients.StepCoefficients`.
"""

from __future__ import annotations

import math

import numpy as np

NUM_TRAIN_STEPS = 1000

SCHEDULES = ("linear", "cosine")
SKIP_TYPES = ("uniform", "quad")


def linear_betas(num_steps: int = NUM_TRAIN_STEPS, start: float = 1e-4, end: float = 0.02):
    """DDPM linear schedule: ``β_t`` evenly spaced from ``start`` to ``end`` (float64, (N,))."""
    return np.linspace(start, end, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int = NUM_TRAIN_STEPS, s: float = 0.008, max_beta: float = 0.999):
    """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas clipped at max_beta."""
    f = lambda t: math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(num_steps)]
    return np.asarray(betas, dtype=np.float64)


def get_betas(schedule: str = "linear", num_steps: int = NUM_TRAIN_STEPS):
    """Betas of a named schedule (``"linear"`` or ``"cosine"``)."""
    if schedule == "linear":
        return linear_betas(num_steps)
    if schedule == "cosine":
        return cosine_betas(num_steps)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def alphas_cumprod(betas) -> np.ndarray:
    """``ā_t = Π_{s≤t} (1 − β_s)`` for t = 0..N−1 (float64)."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def alpha_bar_at(abar: np.ndarray, t) -> np.ndarray:
    """``ā_t`` with the convention ``ā_{-1} = 1`` (t may contain −1)."""
    t = np.asarray(t)
    padded = np.concatenate([[1.0], abar])
    return padded[t + 1]


def timesteps(
    T: int, num_train_steps: int = NUM_TRAIN_STEPS, skip_type: str = "uniform"
) -> tuple[np.ndarray, np.ndarray]:
    """Sampling times in the official DDIM/DeqIR convention.

    ``uniform``: ``skip = N // T`` and ``seq = [0, skip, …, (T−1)·skip]``; ``quad``:
    ``seq = int(linspace(0, √(0.8 N), T)²)`` (DDIM's quadratic spacing). The chain visits
    ``τ_1 = seq[-1] > … > τ_T = 0`` (for T = 25: 960, 920, …, 0) and the "next" time of
    ``τ_i`` is ``τ_{i+1}`` with ``τ_{T+1} = −1``.

    Returns:
        ``(taus, taus_next)``, two int32 arrays of shape (T,).
    """
    if not isinstance(T, (int, np.integer)) or isinstance(T, bool):
        raise TypeError(f"timesteps T must be an int, got {type(T).__name__}")
    if not 1 <= T <= num_train_steps:
        raise ValueError(f"timesteps T must be in [1, {num_train_steps}], got {T}")
    if skip_type == "uniform":
        seq = np.arange(T) * (num_train_steps // T)
    elif skip_type == "quad":
        seq = (np.linspace(0, np.sqrt(num_train_steps * 0.8), T) ** 2).astype(np.int64)
        if len(np.unique(seq)) != T:
            raise ValueError(f"skip_type='quad' repeats timesteps for T={T}; use 'uniform'")
    else:
        raise ValueError(f"skip_type must be one of {SKIP_TYPES}, got {skip_type!r}")
    taus = seq[::-1].astype(np.int32)
    taus_next = np.concatenate([taus[1:], [-1]]).astype(np.int32)
    return taus, taus_next
