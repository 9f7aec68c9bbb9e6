"""Fixed-point solvers with result codes and implicit gradients (ALGORITHM.md §4-5)."""

from .fixed_point import Implicit, Phantom, RowScan, Unrolled, fixed_point
from .solution import Result, Solution, Stats
from .solvers import Anderson, Picard, residuals
from .window import SlidingWindow

__all__ = [
    "Anderson",
    "Implicit",
    "Phantom",
    "Picard",
    "Result",
    "RowScan",
    "SlidingWindow",
    "Solution",
    "Stats",
    "Unrolled",
    "fixed_point",
    "residuals",
]
