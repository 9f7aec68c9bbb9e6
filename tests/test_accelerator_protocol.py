"""experiments/accelerator_protocol.py on a small random ADM: it writes the markdown and the CSV,
one row per (T, method), with finite timings, the batched/single network-call ratio, and parallel
images that match the sequential one. Timings are reported, never asserted against a bound."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "accelerator_protocol.py"


def _load_script():
    """The script as a module (for its argument checks; importing it runs nothing)."""
    import importlib.util

    if str(SCRIPT.parent) not in sys.path:  # the script imports its sibling _report
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("accelerator_protocol", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accelerator_protocol_small(tmp_path):
    # A subprocess: the run sees float32 JAX as on an accelerator (conftest turns on x64).
    out = tmp_path / "acc"
    argv = ["--model", "small", "--size", "32", "--timesteps", "4", "--repeats", "1",
            "--out", str(out)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md, csv_path = out.with_suffix(".md"), out.with_suffix(".csv")
    assert md.exists() and csv_path.exists()
    text = md.read_text()
    assert f"python experiments/accelerator_protocol.py {' '.join(argv)}" in text
    assert "device:" in text and "batched_over_T_single" in text

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["T"], r["method"]) for r in rows] == [
        ("4", "sequential"), ("4", "anderson"), ("4", "picard")]
    for r in rows:
        for key in ("seconds", "first_call_s", "single_s", "batched_s"):
            v = float(r[key])
            assert math.isfinite(v) and v > 0, (key, r)
        for key in ("batched_over_single", "batched_over_T_single"):
            assert math.isfinite(float(r[key])) and float(r[key]) > 0, (key, r)
        assert r["device_kind"] and r["platform"] and r["jax"]
        assert int(r["nfe"]) >= 4 and int(r["iterations"]) >= 1
    by = {r["method"]: r for r in rows}
    assert float(by["sequential"]["max_abs_vs_sequential"]) == 0.0
    # Picard with its default limit T + 1 is exact up to float32 rounding.
    assert float(by["picard"]["max_abs_vs_sequential"]) <= 1e-3
    assert math.isfinite(float(by["anderson"]["max_abs_vs_sequential"]))
    assert "## One network call" in proc.stdout  # the tables also go to stdout


@pytest.mark.parametrize("argv, message", [
    (["--model", "big"], "invalid choice"),
    (["--methods", "newton"], "invalid choice"),
    (["--size", "48"], "multiple of 32"),
    (["--model", "small", "--size", "32", "--scale", "3"], "positive divisor"),
    (["--timesteps", "0"], "1..1000"),
    (["--repeats", "0"], "--repeats"),
])
def test_accelerator_protocol_flag_errors(argv, message, capsys):
    module = _load_script()
    with pytest.raises(SystemExit) as exc:
        module.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
