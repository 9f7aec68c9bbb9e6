"""Schedules, step coefficients, the sequential samplers and the DeqIR fixed-point map."""

from .coefficients import StepCoefficients, step_coefficients
from .deq_map import DEQMap, initial_trajectory
from .gaussian import GaussianModel, gaussian_eps
from .problem import Problem
from .samplers import coarse_segments, coarse_trajectory, ddnm_step, sequential_sample
from .scan import affine_scan
from .schedules import (
    alpha_bar_at,
    alphas_cumprod,
    cosine_betas,
    get_betas,
    linear_betas,
    timesteps,
)
from .window import SlidingWindow, windowed_solve

__all__ = [
    "DEQMap",
    "SlidingWindow",
    "GaussianModel",
    "Problem",
    "StepCoefficients",
    "affine_scan",
    "alpha_bar_at",
    "alphas_cumprod",
    "coarse_segments",
    "coarse_trajectory",
    "cosine_betas",
    "ddnm_step",
    "gaussian_eps",
    "get_betas",
    "initial_trajectory",
    "linear_betas",
    "sequential_sample",
    "step_coefficients",
    "timesteps",
    "windowed_solve",
]
