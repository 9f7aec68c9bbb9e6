"""Schedules, step coefficients, the sequential samplers and the DeqIR fixed-point map."""

from ..sampler import Sampler, sampler_for
from ..schedules import (
    alpha_bar_at,
    alphas_cumprod,
    cosine_betas,
    get_betas,
    linear_betas,
    timesteps,
)
from .coefficients import StepCoefficients, step_coefficients
from .deq_map import DEQMap, initial_trajectory
from .gaussian import GaussianModel, gaussian_eps
from .problem import Problem, ccdf_problem, image_keys, make_problem
from .samplers import coarse_segments, coarse_trajectory, ddnm_step, sequential_sample
from .scan import affine_scan

__all__ = [
    "DEQMap",
    "GaussianModel",
    "Problem",
    "Sampler",
    "StepCoefficients",
    "affine_scan",
    "alpha_bar_at",
    "ccdf_problem",
    "alphas_cumprod",
    "coarse_segments",
    "coarse_trajectory",
    "cosine_betas",
    "ddnm_step",
    "gaussian_eps",
    "image_keys",
    "get_betas",
    "initial_trajectory",
    "linear_betas",
    "make_problem",
    "sampler_for",
    "sequential_sample",
    "step_coefficients",
    "timesteps",
]
