"""End-to-end tests of the ``deqir`` command, driven through ``deqir_jax.cli.main``.

A tiny random ADM network (2 levels, no attention, ~0.2M params) saved into a temporary folder
stands in for a real prior: the tests check files, shapes, tables, messages and exit codes, not
restoration quality. Images are 16x16 (and one 19x23) and ``--timesteps 4``; most runs use
``--method sequential`` because it compiles several times faster than the Anderson solver
(one test covers the default Anderson path). Runs that share an image size and task reuse the
compiled programs (jit caches are per process), which keeps the whole file fast.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import deqir_jax as dq
from deqir_jax import models
from deqir_jax.cli import main
from deqir_jax.cli.engine import COLUMNS
from deqir_jax.restore import DEFAULT_LINEARIZE

FAST = ["--timesteps", "4", "--method", "sequential", "--no-lpips"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    cfg = models.ADMConfig(
        image_size=16, model_channels=32, out_channels=6, num_res_blocks=1,
        attention_resolutions=(), channel_mult=(1, 2), num_heads=1, num_head_channels=-1,
        resblock_updown=False)
    path = tmp_path_factory.mktemp("model") / "tiny"
    models.save(models.create(cfg, key=0), path)
    return str(path)


def _save(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """clean.png (16x16 RGB), gray.png (L), rgba.png (RGBA), odd.png (19x23 RGB)."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16]
    smooth = np.stack([xx * 15, yy * 15, (xx + yy) * 7], -1).astype(np.uint8)
    _save(d / "clean.png", smooth)
    _save(d / "gray.png", (rng.random((16, 16)) * 255).astype(np.uint8))
    _save(d / "rgba.png", (rng.random((16, 16, 4)) * 255).astype(np.uint8))
    _save(d / "odd.png", (rng.random((19, 23, 3)) * 255).astype(np.uint8))
    return d


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size  # (width, height)


def test_synthetic_restore_writes_everything(capsys, tmp_path, model_dir, inputs):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "restore", inputs, "--task", "sr_bicubic", "--scale", "2",
                            "-o", out, "--model", model_dir, *FAST)
    assert code == 0, err
    for stem, size in [("clean", (16, 16)), ("gray", (16, 16)), ("rgba", (16, 16)),
                       ("odd", (23, 19))]:
        for kind in ("original", "apy", "restored"):
            assert size_of(out / f"{stem}_{kind}.png") == size, (stem, kind)
        # the measurement is the low-resolution image: ceil(H / 2) x ceil(W / 2)
        assert size_of(out / f"{stem}_y.png") == (-(-size[0] // 2), -(-size[1] // 2))
        assert (out / f"{stem}_grid.png").is_file()
    rows = read_csv(out / "metrics.csv")
    assert list(rows[0]) == list(COLUMNS)
    assert [r["name"] for r in rows] == ["clean", "gray", "odd", "rgba"]  # folder: sorted
    for r in rows:
        assert r["task"] == "sr_bicubic" and r["mode"] == "synthetic"
        assert float(r["psnr"]) > 0 and 0 <= float(r["ssim_apy"]) <= 1
        assert r["lpips"] == ""  # --no-lpips
        # A x = y holds exactly for the last step (a' = 1); float32 rounding only
        assert float(r["consistency_rms"]) < 1e-4
        assert int(r["nfe"]) == 4 and r["converged"] == "true"
    assert {r["name"]: (int(r["height"]), int(r["width"])) for r in rows}["odd"] == (19, 23)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"]["task"] == "sr_bicubic" and summary["task"]["scale"] == 2
    assert summary["seed"] == 0 and summary["model"] == str(Path(model_dir).absolute())
    assert summary["sampler"]["timesteps"] == 4 and "jax" in summary["versions"]
    assert summary["means"]["psnr"] is not None and summary["count"] == 4
    assert "restored 4/4 image(s)" in stdout
    # grayscale input is replicated to RGB; RGBA is composited on white (both restorable)
    gray = np.asarray(Image.open(out / "gray_original.png"))
    assert gray.shape == (16, 16, 3) and np.array_equal(gray[..., 0], gray[..., 2])


def test_measured_super_resolution(capsys, tmp_path, model_dir):
    lr = _save(tmp_path / "lr.png", (np.random.default_rng(1).random((8, 8, 3)) * 255)
               .astype(np.uint8))
    out = tmp_path / "out"
    code, _, err = run(capsys, "restore", lr, "--task", "sr", "--scale", "2", "--measured",
                       "-o", out, "--model", model_dir, *FAST)
    assert code == 0, err
    assert size_of(out / "lr_restored.png") == (16, 16)  # H * scale
    assert not (out / "lr_original.png").exists()
    assert np.array_equal(np.asarray(Image.open(out / "lr_y.png")), np.asarray(Image.open(lr)))
    (row,) = read_csv(out / "metrics.csv")
    assert row["mode"] == "measured" and row["psnr"] == "" and row["ssim"] == ""
    assert float(row["consistency_rms"]) < 1e-4


def test_measured_inpainting_with_mask_file(capsys, tmp_path, model_dir):
    rng = np.random.default_rng(2)
    photo = _save(tmp_path / "photo.png", (rng.random((16, 16, 3)) * 255).astype(np.uint8))
    mask = np.full((16, 16), 255, np.uint8)
    mask[4:10, 5:12] = 0  # 0 = missing
    _save(tmp_path / "mask.png", mask)
    out = tmp_path / "out"
    code, _, err = run(capsys, "restore", photo, "--task", "inpaint", "--mask",
                       tmp_path / "mask.png", "--measured", "-o", out, "--model", model_dir,
                       *FAST)
    assert code == 0, err
    restored = np.asarray(Image.open(out / "photo_restored.png"))
    original = np.asarray(Image.open(photo))
    assert restored.shape == (16, 16, 3)
    keep = mask > 0  # observed pixels are kept exactly (A x = y), up to 8-bit rounding
    assert np.abs(restored[keep].astype(int) - original[keep]).max() <= 1
    y = np.asarray(Image.open(out / "photo_y.png"))
    assert np.all(y[~keep] == 128)  # missing pixels are zeros (grey) in the measurement
    # --measured inpainting needs an explicit mask
    code, _, err = run(capsys, "restore", photo, "--task", "inpainting", "--measured", "-o",
                       tmp_path / "o2", "--model", model_dir, *FAST)
    assert code == 2 and "--mask" in err


def test_auto_method_on_cpu(capsys, tmp_path, model_dir, inputs):
    """No method flag: auto picks sequential on this CPU, says so, and refuses solver flags
    that would then be ignored."""
    argv = ["restore", inputs / "clean.png", "--task", "inpainting", "--model", model_dir,
            "--timesteps", "4", "--no-lpips"]
    code, stdout, err = run(capsys, *argv, "-o", tmp_path / "out")
    assert code == 0, err
    assert "method: sequential (auto on a CPU" in stdout
    (row,) = read_csv(tmp_path / "out" / "metrics.csv")
    assert row["method"] == "sequential" and row["depth"] == "4" and row["nfe"] == "4"
    code, _, err = run(capsys, *argv, "-o", tmp_path / "o2", "--coarse", "2")
    assert code == 2 and "--method auto chose sequential" in err


def test_linearize_flag(capsys, tmp_path, model_dir, inputs):
    """DDNM's η = 1 with --method anderson gets the linearized map by default, says so and
    records it; --linearize sets or switches it off; a bad value or a sequential run with the
    flag is a usage error."""
    argv = ["restore", inputs / "clean.png", "--task", "inpainting", "--model", model_dir,
            "--timesteps", "4", "--no-lpips", "--method", "anderson", "--etw", "1", "--nw", "1",
            "--fresh-noise"]
    assert DEFAULT_LINEARIZE == (0.1, 1.0)  # the expected line below is written for it
    for extra, value, expected in (
            ([], DEFAULT_LINEARIZE,
             "linearized (Gaussian ε slope, s² = 0.1 null space, 1 range space)"),
            (["--linearize", "off"], None, "official"),
            (["--linearize", "0.3"], 0.3, "linearized (Gaussian ε slope, s² = 0.3)"),
            (["--linearize", "0.2,2"], (0.2, 2.0),
             "linearized (Gaussian ε slope, s² = 0.2 null space, 2 range space)")):
        out = tmp_path / f"out_{extra[-1] if extra else 'default'}"
        code, stdout, err = run(capsys, *argv, "-o", out, *extra)
        assert code == 0, err
        summary = json.loads((out / "summary.json").read_text())
        recorded = summary["sampler"]["linearize"]
        assert (tuple(recorded) if isinstance(recorded, list) else recorded) == value
        assert f"map: full order, {expected}" in stdout
    for bad in ("-1", "0.1,0", "0.1,1,2", "a,b"):
        code, _, err = run(capsys, *argv, "-o", tmp_path / "bad", "--linearize", bad)
        assert code == 2 and "--linearize" in err and "variance > 0" in err, bad
    code, _, err = run(capsys, *argv, "--method", "sequential", "-o", tmp_path / "seq",
                       "--linearize", "0.1")
    assert code == 2 and "--linearize does not apply to --method sequential" in err


def test_anderson_method_and_solver_failure(capsys, tmp_path, model_dir, inputs):
    # 3 map evaluations < T + 1 = 5: the last row cannot be right yet (its inputs are not),
    # and tol 1e-12 asks for the fixed point itself: the solver runs to its step limit
    argv = ["restore", inputs / "clean.png", "--task", "inpainting", "--model", model_dir,
            "--timesteps", "4", "--max-anderson-iters", "3", "--tol", "1e-12", "--no-lpips",
            "--method", "anderson"]
    out = tmp_path / "out"
    code, stdout, err = run(capsys, *argv, "-o", out)
    assert code == 0, err  # not converging is a warning, the outputs are written
    assert "reached its step limit" in err and "NOT converged" in stdout
    (row,) = read_csv(out / "metrics.csv")
    assert row["converged"] == "false" and int(row["iterations"]) == 3
    assert int(row["nfe"]) == 4 * 3 and int(row["depth"]) == 3  # T rows per map evaluation
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sampler"]["method"] == "anderson"
    assert summary["sampler"]["solver"]["mixing"] == "triangular"  # the default solver
    assert summary["sampler"]["solver"]["max_steps"] == 3
    # --strict makes it a solver failure: exit code 1, one message, tables still written
    out = tmp_path / "strict"
    code, _, err = run(capsys, *argv, "-o", out, "--strict")
    assert code == 1 and "solver failed" in err and "Traceback" not in err
    assert not (out / "clean_restored.png").exists()
    assert json.loads((out / "summary.json").read_text())["failed"]


def test_batching_gives_the_same_images(capsys, tmp_path, model_dir, inputs):
    files = [inputs / "clean.png", inputs / "gray.png"]
    common = ["--task", "sr", "--scale", "2", "--model", model_dir, *FAST]
    assert run(capsys, "restore", *files, "-o", tmp_path / "b1", *common)[0] == 0
    assert run(capsys, "restore", *files, "-o", tmp_path / "b2", "--batch-size", "2",
               *common)[0] == 0
    for stem in ("clean", "gray"):
        a = np.asarray(Image.open(tmp_path / "b1" / f"{stem}_restored.png"), int)
        b = np.asarray(Image.open(tmp_path / "b2" / f"{stem}_restored.png"), int)
        # same per-image noise; batched float32 arithmetic may flip an 8-bit rounding
        assert np.abs(a - b).max() <= 1


def test_samples_output_is_the_mean_of_restorations(capsys, tmp_path, model_dir, inputs):
    common = ["--task", "sr", "--scale", "2", "--model", model_dir, *FAST]
    img = inputs / "clean.png"
    assert run(capsys, "restore", img, "-o", tmp_path / "k1", *common)[0] == 0
    code, _, err = run(capsys, "restore", img, "-o", tmp_path / "k3", "--samples", "3",
                       *common)
    assert code == 0, err
    one = np.asarray(Image.open(tmp_path / "k1" / "clean_restored.png"), int)
    mean = np.asarray(Image.open(tmp_path / "k3" / "clean_restored.png"), int)
    assert np.abs(one - mean).max() > 2  # a different estimate than the first sample
    summary = json.loads((tmp_path / "k3" / "summary.json").read_text())
    assert summary["sampler"]["samples"] == 3
    assert read_csv(tmp_path / "k3" / "metrics.csv")[0]["nfe"] == "4"  # per row, not per K
    code, _, err = run(capsys, "restore", img, "-o", tmp_path / "k0", "--samples", "0",
                       *common)
    assert code == 2 and "--samples must be >= 1" in err


def test_overwrite_refused_then_allowed(capsys, tmp_path, model_dir, inputs):
    out = tmp_path / "out"
    argv = ["restore", inputs / "clean.png", "--task", "sr", "--scale", "2", "-o", out,
            "--model", model_dir, *FAST]
    assert run(capsys, *argv)[0] == 0
    before = (out / "metrics.csv").stat().st_mtime_ns
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "refusing to overwrite" in err and "clean_original.png" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (out / "metrics.csv").stat().st_mtime_ns == before  # nothing was touched
    code, _, err = run(capsys, *argv, "--overwrite")
    assert code == 0, err


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["MISSING.png", "--task", "sr"], "does not exist"),
        (["{clean}", "--task", "superres"], "valid names: sr_averagepooling, sr_bicubic"),
        (["{clean}", "--task", "sr", "--scale", "0"], "--scale must be a positive integer"),
        (["{clean}", "--task", "sr", "--scale", "32"], "--scale 32 is larger than image"),
        (["{clean}", "--task", "inpainting", "--scale", "2"], "--scale does not apply"),
        (["{clean}", "--task", "cs", "--measured"], "not supported for cs_walshhadamard"),
        (["{clean}", "--task", "sr", "--timesteps", "0"], "--timesteps must be >= 1"),
        (["{clean}", "--task", "sr", "--m", "3"], "--m does not apply to --method sequential"),
        (["{bad}", "--task", "sr"], "cannot read image"),
        (["{clean}", "--task", "inpainting", "--mask", "nomask.png"], "--mask 'nomask.png'"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, model_dir, inputs, extra, expected):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    args = [a.format(clean=inputs / "clean.png", bad=bad) for a in extra]
    if "--method" not in args:
        args += ["--method", "sequential"]
    code, _, err = run(capsys, "restore", *args, "-o", tmp_path / "out", "--model", model_dir)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert err.startswith("deqir: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # failed before any work


def test_debug_shows_traceback(capsys, tmp_path, model_dir):
    code, _, err = run(capsys, "restore", tmp_path / "nope.png", "--task", "sr", "-o",
                       tmp_path / "out", "--model", model_dir, "--debug")
    assert code == 2 and "Traceback" in err and "does not exist" in err


def test_bad_model_path(capsys, tmp_path, inputs):
    code, _, err = run(capsys, "restore", inputs / "clean.png", "--task", "sr", "-o",
                       tmp_path / "out", "--model", tmp_path / "nomodel")
    assert code == 2 and "--model" in err and "Traceback" not in err


def test_missing_default_model_asks_for_model(capsys, tmp_path, inputs, monkeypatch):
    import deqir_jax.models as models_pkg

    def unavailable(*args, **kwargs):
        raise FileNotFoundError("the default model is not installed: config.json is missing")

    default_module = importlib.import_module("deqir_jax.models.default")
    monkeypatch.setattr(default_module, "default", unavailable)
    if callable(getattr(models_pkg, "default", None)) and not isinstance(
            models_pkg.default, types.ModuleType):
        monkeypatch.setattr(models_pkg, "default", unavailable)
    code, _, err = run(capsys, "restore", inputs / "clean.png", "--task", "sr", "-o",
                       tmp_path / "out", "--method", "sequential")
    assert code == 2 and "pass --model PATH" in err and "Traceback" not in err


def test_train_is_forwarded(capsys):
    pytest.importorskip("deqir_jax.train")
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0 and "deqir train" in out


def test_metrics_command(capsys, tmp_path):
    rng = np.random.default_rng(3)
    gt, rest = tmp_path / "gt", tmp_path / "rest"
    gt.mkdir()
    rest.mkdir()
    for name in ("a", "b"):
        img = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
        _save(gt / f"{name}.png", img)
        noisy = np.clip(img.astype(int) + rng.integers(-8, 9, img.shape), 0, 255)
        _save(rest / f"{name}_restored.png", noisy.astype(np.uint8))  # deqir restore names
    _save(rest / "a_apy.png", np.zeros((16, 16, 3), np.uint8))  # ignored: not *_restored
    table = tmp_path / "m.csv"
    code, out, err = run(capsys, "metrics", rest, gt, "--csv", table, "--crop", "1",
                         "--lpips-net", "none")
    assert code == 0, err
    assert "a: PSNR" in out and "mean of 2: PSNR" in out
    rows = read_csv(table)
    assert [r["name"] for r in rows] == ["a", "b", "mean"]
    assert 25 < float(rows[0]["psnr"]) < 40
    assert rows[0]["restored"].endswith("a_restored.png")
    # the CSV is not overwritten without --overwrite; a missing folder is a usage error
    assert run(capsys, "metrics", rest, gt, "--csv", table)[0] == 2
    code, _, err = run(capsys, "metrics", rest, tmp_path / "nogt")
    assert code == 2 and "GT_DIR" in err


def test_metrics_on_restore_output(capsys, tmp_path, model_dir, inputs):
    out = tmp_path / "out"
    assert run(capsys, "restore", inputs, "--task", "sr", "--scale", "2", "-o", out,
               "--model", model_dir, *FAST)[0] == 0
    code, stdout, err = run(capsys, "metrics", out, inputs, "--lpips-net", "none")
    assert code == 0, err
    psnr = {r["name"]: float(r["psnr"]) for r in read_csv(out / "metrics.csv")}
    for name, value in psnr.items():  # same numbers from the written 8-bit files (rounding)
        line = next(s for s in stdout.splitlines() if s.startswith(f"{name}:"))
        assert abs(float(line.split("PSNR ")[1].split(" dB")[0]) - value) < 0.1


def test_demo_small(capsys, tmp_path, model_dir):
    out = tmp_path / "demo"
    code, stdout, err = run(capsys, "demo", "-o", out, "--model", model_dir, "--size", "16",
                            "--tasks", "sr_bicubic", "cs", "--timesteps", "4", "--no-lpips")
    assert code == 0, err
    for name in ("original.png", "demo_grid.png", "sr_bicubic_grid.png",
                 "cs_walshhadamard_grid.png", "metrics.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert [r["task"] for r in read_csv(out / "metrics.csv")] == ["sr_bicubic",
                                                                  "cs_walshhadamard"]
    assert "demo: 2/2 task(s)" in stdout


def test_help_via_python_m():
    res = subprocess.run([sys.executable, "-m", "deqir_jax.cli", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("restore", "demo", "metrics", "train"):
        assert cmd in res.stdout


def test_usage_errors_from_argparse(capsys):
    code, _, err = run(capsys, "restore", "x.png")  # --task and -o missing
    assert code == 2 and "required" in err
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "--help")[0] == 0


def test_persistent_compile_cache_second_run_compiles_nothing(tmp_path, model_dir, inputs):
    """Two fresh processes on the same shapes: the first fills the cache folder, the second
    finds every program there (no new entry)."""
    import os

    cache = tmp_path / "cache"
    env = dict(os.environ)
    env.pop("DEQIR_COMPILE_CACHE", None)

    def restore(out):
        cmd = [sys.executable, "-m", "deqir_jax.cli", "restore", str(inputs / "clean.png"),
               "--task", "sr", "--scale", "2", "--model", model_dir, *FAST, "-o",
               str(tmp_path / out), "--compile-cache", str(cache)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return sorted(p.name for p in cache.rglob("*") if p.is_file())

    first = restore("a")
    assert first, "nothing was cached"
    assert restore("b") == first
    # and off means off
    cmd = [sys.executable, "-m", "deqir_jax.cli", "restore", str(inputs / "clean.png"),
           "--task", "sr", "--scale", "2", "--model", model_dir, *FAST, "-o",
           str(tmp_path / "c"), "--no-compile-cache"]
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode == 0
    assert not (tmp_path / "xdg").exists()


def test_resume_skips_finished_images_and_equals_uninterrupted(capsys, tmp_path, model_dir,
                                                               inputs):
    imgs = [inputs / "clean.png", inputs / "gray.png", inputs / "odd.png"]
    common = ["--task", "sr", "--scale", "2", "--model", model_dir, *FAST]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run(capsys, "restore", *imgs, "-o", full, *common)[0] == 0
    assert run(capsys, "restore", *imgs, "-o", cut, *common)[0] == 0
    # An interruption: odd.png never finished (its grid missing, its row not written yet),
    # gray.png's outputs and row are there.
    (cut / "odd_grid.png").unlink()
    rows = read_csv(cut / "metrics.csv")
    with open(cut / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:2])
    kept = {p: p.stat().st_mtime_ns for p in cut.glob("gray_*.png")}
    code, out, err = run(capsys, "restore", *imgs, "-o", cut, *common)
    assert code == 2 and "refusing to overwrite" in err  # not without --resume
    code, out, err = run(capsys, "restore", *imgs, "-o", cut, *common, "--resume")
    assert code == 0, err
    assert "resume: 2 of 3 image(s) already restored" in out
    assert {p: p.stat().st_mtime_ns for p in cut.glob("gray_*.png")} == kept  # untouched
    for p in full.glob("odd_*.png"):
        assert (cut / p.name).read_bytes() == p.read_bytes()
    skip = {"seconds"}
    a, b = read_csv(full / "metrics.csv"), read_csv(cut / "metrics.csv")
    assert [{k: v for k, v in r.items() if k not in skip} for r in a] == \
        [{k: v for k, v in r.items() if k not in skip} for r in b]
    code, _, err = run(capsys, "restore", *imgs, "-o", cut, *common, "--resume", "--overwrite")
    assert code == 2 and "pass one of them" in err
    code, _, err = run(capsys, "restore", *imgs, "-o", cut, "--task", "inpainting", "--model",
                       model_dir, *FAST, "--resume")
    assert code == 2 and "made for task 'sr_bicubic'" in err


def test_ccdf_flag(capsys, tmp_path, model_dir, inputs):
    common = ["restore", inputs / "clean.png", "--task", "sr", "--scale", "2", "--model",
              model_dir, *FAST]
    code, _, err = run(capsys, *common, "-o", tmp_path / "c", "--ccdf", "2")
    assert code == 0, err
    row = read_csv(tmp_path / "c" / "metrics.csv")[0]
    assert row["nfe"] == "2" and row["depth"] == "2"  # 2 of the 4 steps ran
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["sampler"]["ccdf"] == 2
    code, _, err = run(capsys, *common, "-o", tmp_path / "d", "--ccdf", "5")
    assert code == 2 and "--ccdf must be an integer in [1, 4], got 5" in err


def test_devices_flag(capsys, tmp_path, model_dir, inputs):
    """--devices on 8 simulated CPU devices (a subprocess): picard over 4 devices and
    sequential over 2 (a batch of 3 padded to 4) give the one-device images; too many devices
    and a T the mesh cannot split are refused."""
    imgs = [inputs / "clean.png", inputs / "gray.png", inputs / "rgba.png"]
    base = ["restore", *imgs, "--task", "sr", "--scale", "2", "--model", model_dir,
            "--timesteps", "4", "--no-lpips", "--batch-size", "3"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")

    def cli(out, *extra):
        proc = subprocess.run([sys.executable, "-m", "deqir_jax.cli", *map(str, base), "-o",
                               str(tmp_path / out), *extra], env=env, capture_output=True,
                              text=True, timeout=600)
        return proc.returncode, proc.stderr

    runs = {"picard-1": ("--method", "picard", "--tol", "1e-9"),
            "picard-4": ("--method", "picard", "--tol", "1e-9", "--devices", "4"),
            "seq-1": ("--method", "sequential"),
            "seq-2": ("--method", "sequential", "--devices", "2")}
    for out, extra in runs.items():
        code, err = cli(out, *extra)
        assert code == 0, err
    for a, b in (("picard-1", "picard-4"), ("seq-1", "seq-2")):
        ra, rb = read_csv(tmp_path / a / "metrics.csv"), read_csv(tmp_path / b / "metrics.csv")
        assert len(rb) == 3
        for x, y in zip(ra, rb, strict=True):
            # float32 on a mesh sums in another order (picard runs to 1e-9): only rounding
            # differs, far under 0.01 dB; sequential is data parallel and bit-identical.
            assert abs(float(x["psnr"]) - float(y["psnr"])) < 0.01, (a, b, x["name"])
    code, err = cli("bad", "--method", "picard", "--devices", "3")
    assert code == 2 and "--devices 3: timesteps T=4 must be divisible by the 3 devices" in err
    code, err = cli("bad2", "--method", "sequential", "--devices", "9")
    assert code == 2 and "--devices 9: devices must be in [1, 8]" in err


def test_seed_equals_library_key(capsys, tmp_path, model_dir, inputs):
    """``deqir restore --seed k`` on two images restores each as ``dq.restore(key=k)`` restores
    them stacked (image i draws from fold_in(key(k), i)), to the 8-bit level."""
    files = [inputs / "clean.png", inputs / "gray.png"]
    code, _, err = run(capsys, "restore", *files, "--task", "sr", "--scale", "2", "--model",
                       model_dir, *FAST, "--seed", "3", "--etw", "0.5", "--fresh-noise",
                       "--batch-size", "1", "-o", tmp_path / "o")
    assert code == 0, err
    model = models.load(model_dir)
    x = jnp.stack([jnp.asarray(dq.io.read_image(f)) for f in files])
    op = dq.operators.get("sr_bicubic", image_shape=(16, 16, 3), scale=2)
    res = dq.restore(model, op.A(x), op, 4, "sequential", key=3, etw=0.5, fresh_noise=True)
    for i, f in enumerate(files):
        cli = np.asarray(Image.open(tmp_path / "o" / f"{f.stem}_restored.png"), np.int32)
        lib = np.round((np.clip(np.asarray(res.image[i]), -1, 1) + 1) * 127.5).astype(np.int32)
        assert np.abs(cli - lib).max() <= 1, f.name


def test_model_settings_used_unless_overridden(capsys, tmp_path, model_dir, inputs):
    """A checkpoint's recommended sampler settings are what the CLI runs without flags (and
    it says so); a flag overrides one setting; --official-sampler selects the official
    example's settings."""
    stored = tmp_path / "with_settings"
    models.save(models.load(model_dir).replace(sampler=dq.Sampler(timesteps=3, etw=0.4)), stored)
    common = ["restore", inputs / "clean.png", "--task", "sr", "--scale", "2", "--model",
              stored, "--method", "sequential", "--no-lpips"]

    def sampler(out, *flags):
        code, out_text, err = run(capsys, *common, *flags, "-o", tmp_path / out)
        assert code == 0, err
        return json.loads((tmp_path / out / "summary.json").read_text())["sampler"], out_text

    s, text = sampler("a")
    assert (s["timesteps"], s["etw"], s["nw"]) == (3, 0.4, 0.0)
    assert "sampler: T=3, etw=0.4, nw=0, one shared noise (the model's recommended " \
           "settings)" in text
    s, text = sampler("b", "--etw", "0.2")
    assert (s["timesteps"], s["etw"]) == (3, 0.2) and "with --etw" in text
    s, _ = sampler("c", "--official-sampler", "--timesteps", "4")
    assert (s["timesteps"], s["etw"], s["nw"]) == (4, 0.1, 0.0)
