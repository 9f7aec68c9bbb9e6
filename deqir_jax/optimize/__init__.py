"""Initialization optimization: optimize x_T through the DeqIR equilibrium with optax."""

from .init_opt import ADJOINTS, InitOptResult, optimize_init
from .losses import LOSSES, make_loss

__all__ = ["ADJOINTS", "LOSSES", "InitOptResult", "make_loss", "optimize_init"]
