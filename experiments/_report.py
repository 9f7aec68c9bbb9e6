"""Shared writers of the experiment scripts: CSV, and the markdown header and table."""

from __future__ import annotations

import csv
import os
import platform
import sys
import time
from pathlib import Path

import jax


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys, in order) as a CSV file with a header."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def machine() -> str:
    """``"<cpu>, <n> cores, jax <version>, backend <backend>"``."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"jax {jax.__version__}, backend {jax.default_backend()}")


def header(title: str, script: str, bullets: list[str]) -> list[str]:
    """Markdown lines: the title, the exact command line that ran, and the settings bullets."""
    return [f"# {title}", "",
            f"Command: `python experiments/{script} {' '.join(sys.argv[1:])}`", "",
            *(f"- {b}" for b in bullets), ""]


def table(rows: list[dict], fmt=str) -> list[str]:
    """A markdown table of ``rows`` (columns: the keys of the first row)."""
    keys = list(rows[0])
    return (["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            + ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows])


def best_of(fn, repeats: int, warmup: bool = False):
    """(last output, best seconds) over ``repeats`` calls of ``fn()``, each ended by
    block_until_ready; ``warmup``: one untimed call first (compilation)."""
    if warmup:
        jax.block_until_ready(fn())
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - t0)
    return out, best


def best_time(f, *args, repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``f(*args)``, after one untimed call
    that compiles."""
    return best_of(lambda: f(*args), repeats, warmup=True)[1]
