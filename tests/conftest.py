"""Test configuration: float64 everywhere (maths checks are exact-value tests in float64;
float32 code paths are exercised with explicit dtypes), and the shared data locations."""

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)
# In-process CLI tests leave the user's persistent compilation cache alone (test_cli checks the
# cache itself in subprocesses with a folder of its own).
os.environ.setdefault("DEQIR_COMPILE_CACHE", "off")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEQIR_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
DATA = Path(os.environ.get("DEQIR_DATA", SHARED / "data"))


@pytest.fixture(scope="session")
def golden():
    """The official-code outputs (../shared/golden); skips when absent."""
    path = GOLDEN / "deqir_official_tiny.npz"
    if not path.exists():
        pytest.skip(f"golden fixture {path} not found (needs the project's shared/ folder)")
    import numpy as np

    return dict(np.load(path))


@pytest.fixture
def counting():
    """``counting(model) -> (wrapped, traces)``: a model whose ``eps_fn`` appends to ``traces``
    each time it is traced (it runs at trace time only), for no-recompilation tests."""

    def wrap(model):
        traces = []

        class Counting:
            params = model.params

            @staticmethod
            def eps_fn(params, x, t):
                traces.append(1)
                return model.eps_fn(params, x, t)

        return Counting, traces

    return wrap
