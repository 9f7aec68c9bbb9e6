"""``train(config)``: the training loop (host data, jitted step, checkpoints, log, export)."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ..models import Model, count_params, from_params, save
from .checkpoints import CHECKPOINT_DIR, RunDir
from .config import TrainConfig
from .data import ImageCrops, find_images
from .step import init_state, make_train_step, state_template


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
      state: the final train state (``step``, ``params``, ``ema``, ``opt_state``, ``rng``).
      model: the EMA params as a :class:`~deqir_jax.models.Model` (what gets exported).
      step: the step reached; ``completed`` is False when the run stopped early
        (``stop_at``, ``time_limit`` or Ctrl-C; resume it with ``resume=True``).
      losses: per-log-interval mean losses of this session.
      elapsed_s: training wall-clock of the whole run, resumed sessions included.
      export: the export directory, if written.
    """

    state: dict
    model: Model
    step: int
    completed: bool
    losses: list[float]
    elapsed_s: float
    export: Path | None


def export_ema(config: TrainConfig, state: dict, path: str | Path, *,
               overwrite: bool = False, metadata: dict | None = None) -> Path:
    """Save the EMA params of ``state`` as a model checkpoint (``dq.models.save``)."""
    model = from_params(config.model, jax.device_get(state["ema"]))
    meta = {"source": "deqir_jax.train", "step": int(state["step"]),
            "train_config": config.to_dict(), **(metadata or {})}
    return save(model, path, overwrite=overwrite, metadata=meta)


def export_checkpoint(run_dir: str | Path, path: str | Path, *, step: int | None = None,
                      overwrite: bool = False) -> Path:
    """Export the EMA params of a run's checkpoint (default: the latest) to ``path``.

    For runs stopped before ``steps`` (time limit, Ctrl-C) or to export an earlier step.
    """
    import json

    from .checkpoints import CONFIG_FILE

    cfg_file = Path(run_dir) / CONFIG_FILE
    if not cfg_file.is_file():
        raise ValueError(f"run_dir: {cfg_file} not found (not a training run directory)")
    config = TrainConfig.from_dict({**json.loads(cfg_file.read_text()), "run_dir": str(run_dir)})
    run = RunDir(config)
    try:
        state, meta = run.restore(state_template(config), step)
    finally:
        run.close()
    return export_ema(config, state, path, overwrite=overwrite,
                      metadata={"elapsed_s": round(float(meta.get("elapsed_s", 0.0)), 1)})


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, desc="train")


def train(config: TrainConfig, *, stop_at: int | None = None, time_limit: float | None = None,
          progress: bool = True, data: ImageCrops | None = None,
          extend: bool = False) -> TrainResult:
    """Train a diffusion prior (v- or ε-prediction) on a folder of images (loss: ``step.py``).

    Every ``checkpoint_every`` steps (and when the loop ends for any reason) the state is saved
    to ``config.run_dir``; with ``config.resume`` the latest checkpoint is restored and training
    continues exactly as if it had not been interrupted (batches are a function of
    (seed, step), timesteps/noise come from the checkpointed rng). At ``config.steps`` the EMA
    params are exported to ``config.export`` (if set).

    Args:
      config: the run (:class:`TrainConfig`).
      stop_at: stop (with a checkpoint) once this step is reached, before ``config.steps``
        (for time-sliced runs and tests).
      time_limit: stop (with a checkpoint) after this many seconds of this session.
      progress: show a tqdm progress bar.
      data: pre-loaded crops (must match ``config.data``/``crop_size``/``scales``); default:
        load them from ``config.data``.
      extend: with ``resume``, accept a ``steps`` different from the saved run's even with
        the cosine schedule (continue a finished run: the learning rate jumps to the new
        schedule's value at the current step, a warm restart; no longer equal to any single
        uninterrupted run).
    Returns:
      a :class:`TrainResult`.
    Raises:
      ValueError: for a missing/empty data folder (before anything is written), a run
        directory that already has checkpoints without ``resume``/``overwrite``, or a resume
        with settings that differ from the saved run.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    find_images(config.data)  # fail early, before the run directory is touched
    run = RunDir(config)
    existing = run.latest_step()
    if existing is not None and not config.resume and not config.overwrite:
        raise ValueError(
            f"run_dir {run.path} already has checkpoints (latest step {existing}); "
            "pass resume=True (--resume) to continue or overwrite=True to start over"
        )
    if config.export and Path(config.export).exists() and not config.overwrite:
        raise ValueError(f"export: {config.export} already exists (pass overwrite=True)")
    if data is None:
        data = ImageCrops(config.data, config.crop_size, config.scales)

    template = state_template(config)
    elapsed0 = 0.0
    if config.resume:
        if existing is None:
            raise ValueError(f"resume: no checkpoint found in {run.path / CHECKPOINT_DIR}")
        state, meta = run.restore(template)
        run.check_resumable(meta["config"], extend=extend)
        elapsed0 = float(meta.get("elapsed_s", 0.0))
    else:
        if existing is not None:  # overwrite: start from scratch
            import shutil

            run.close()
            shutil.rmtree(run.path / CHECKPOINT_DIR)
        state = init_state(config)
    state = jax.device_put(state)
    start = int(state["step"])
    run.write_config()

    step_fn = make_train_step(config)
    end = config.steps if stop_at is None else min(config.steps, stop_at)
    log_fh, log = run.open_log(start)
    bar = _progress(config.steps, start, progress)
    bar.write(f"train: {data.num_files} images ({len(data)} with scales {config.scales}), "
              f"{count_params(config.model):,} params, crop {config.crop_size}, "
              f"batch {config.batch_size}, steps {start}->{end}, device {jax.devices()[0]}")
    losses: list[float] = []
    pending: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    t_log = t0
    step = start

    def flush():
        nonlocal t_log
        if not pending:
            return
        got = jax.device_get(pending)
        now = time.perf_counter()
        loss = float(np.mean([m["loss"] for m in got]))
        row = {"step": step, "loss": f"{loss:.6f}",
               "grad_norm": f"{float(np.mean([m['grad_norm'] for m in got])):.4f}",
               "lr": f"{float(got[-1]['lr']):.3e}",
               "elapsed_s": f"{elapsed0 + now - t0:.1f}",
               "steps_per_s": f"{len(got) / max(now - t_log, 1e-9):.3f}"}
        log.writerow(row)
        log_fh.flush()
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}", lr=row["lr"])
        if not math.isfinite(loss):
            raise FloatingPointError(f"train: non-finite loss {loss} at step {step}")
        pending.clear()
        t_log = now

    interrupted = ok = False
    try:
        try:
            while step < end:
                x0 = data.batch(config.seed, step, config.batch_size)
                state, metrics = step_fn(state, x0)
                step += 1
                pending.append(metrics)
                bar.update(1)
                if step % config.log_every == 0 or step == end:
                    flush()
                if step % config.checkpoint_every == 0 and step < end:
                    run.save(state, elapsed0 + time.perf_counter() - t0)
                if time_limit is not None and time.perf_counter() - t0 > time_limit:
                    bar.write(f"train: time limit of {time_limit:.0f} s reached at step {step}")
                    break
        except KeyboardInterrupt:
            interrupted = True
            bar.write(f"train: interrupted at step {step}; saving a checkpoint")
        flush()
        ok = True  # a non-finite loss (FloatingPointError) must not overwrite good checkpoints
    finally:
        bar.close()
        log_fh.close()
        elapsed = elapsed0 + time.perf_counter() - t0
        if ok and (step > start or existing is None):
            try:
                run.save(state, elapsed)
            except RuntimeError as e:  # e.g. buffers donated to a step that was interrupted
                bar.write(f"train: could not save the final checkpoint ({e})")
        run.close()
    if interrupted:
        raise KeyboardInterrupt(f"training interrupted at step {step} (checkpoint saved)")

    completed = step >= config.steps
    exported = None
    if completed and config.export:
        exported = export_ema(config, state, config.export, overwrite=config.overwrite,
                              metadata={"elapsed_s": round(elapsed, 1)})
    model = from_params(config.model, state["ema"])
    return TrainResult(state=state, model=model, step=step, completed=completed,
                       losses=losses, elapsed_s=elapsed, export=exported)
