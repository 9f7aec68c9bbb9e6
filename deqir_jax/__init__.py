"""deqir_jax: diffusion image restoration as a deep-equilibrium fixed-point system (DeqIR).

``import deqir_jax as dq``; see the README for the public surface.
"""

from . import diffusion, io, metrics, models, operators, optimize, parallel, solve, train
from .restore import Restoration, SolverError, make_problem, make_solver, restore
from .sampler import Sampler

__all__ = [
    "Restoration",
    "Sampler",
    "SolverError",
    "diffusion",
    "io",
    "metrics",
    "models",
    "operators",
    "optimize",
    "parallel",
    "make_problem",
    "make_solver",
    "restore",
    "solve",
    "train",
]
