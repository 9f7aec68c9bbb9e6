"""Run directory: orbax checkpoints of the train state, the loss log and the config.

Layout::

    RUN_DIR/
      train_config.json      the TrainConfig of the run (checked again on --resume)
      loss.csv               step, loss, grad_norm, lr, elapsed_s, steps_per_s
      checkpoints/<step>/
        state/               orbax (params, ema, opt_state, step, rng key data)
        meta/                JSON: step, data_step (loader position), elapsed_s, config
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .config import TRAJECTORY_FIELDS, TrainConfig

CONFIG_FILE = "train_config.json"
LOSS_FILE = "loss.csv"
CHECKPOINT_DIR = "checkpoints"
LOSS_COLUMNS = ("step", "loss", "grad_norm", "lr", "elapsed_s", "steps_per_s")


def _manager(run_dir: Path, keep: int, create: bool = True):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=create, enable_async_checkpointing=False)
    return ocp.CheckpointManager(run_dir / CHECKPOINT_DIR, options=options,
                                 item_names=("state", "meta"))


class RunDir:
    """Checkpoints and logs of one training run (see the module docstring for the layout)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.path = Path(config.run_dir).expanduser().absolute()
        self._mngr = None

    @property
    def manager(self):
        if self._mngr is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._mngr = _manager(self.path, self.config.keep_checkpoints)
        return self._mngr

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        if not (self.path / CHECKPOINT_DIR).is_dir():
            return None
        return self.manager.latest_step()

    def write_config(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

    def check_resumable(self, saved: dict[str, Any], extend: bool = False) -> None:
        """ValueError when ``self.config`` would not continue the saved run's trajectory.

        ``extend`` allows a different ``steps`` with the cosine schedule (a warm restart).
        """
        old = TrainConfig.from_dict({**saved, "run_dir": self.config.run_dir})
        diff = [f for f in TRAJECTORY_FIELDS if getattr(old, f) != getattr(self.config, f)]
        if (old.steps != self.config.steps and self.config.lr_schedule == "cosine"
                and not extend):
            diff.append("steps (the cosine schedule depends on it; pass extend=True / "
                        "--extend to continue with a new length anyway)")
        if diff:
            raise ValueError(
                f"resume: the run in {self.path} was started with different settings for "
                f"{', '.join(diff)}; resume with the same settings (see {CONFIG_FILE}) or "
                "start a new run directory"
            )

    def save(self, state: dict, elapsed_s: float) -> None:
        """Checkpoint ``state`` at its step (blocking; replaces an existing same-step save)."""
        import orbax.checkpoint as ocp

        host = jax.device_get(state)
        step = int(host["step"])
        meta = {"step": step, "data_step": step, "seed": self.config.seed,
                "elapsed_s": float(elapsed_s), "config": self.config.to_dict()}
        if step in self.manager.all_steps():
            self.manager.delete(step)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, template: dict, step: int | None = None) -> tuple[dict, dict]:
        """(state, meta) of checkpoint ``step`` (default: the latest) shaped like ``template``."""
        import orbax.checkpoint as ocp

        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"resume: no checkpoint found in {self.path / CHECKPOINT_DIR}")
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding), template)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def close(self) -> None:
        if self._mngr is not None:
            self._mngr.close()
            self._mngr = None

    # --- loss log -------------------------------------------------------------------------

    def open_log(self, from_step: int):
        """Open ``loss.csv`` for appending, dropping rows after ``from_step`` (resumed runs)."""
        path = self.path / LOSS_FILE
        rows = []
        if path.exists() and from_step > 0:
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= from_step]
        fh = path.open("w", newline="")
        writer = csv.DictWriter(fh, fieldnames=LOSS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        fh.flush()
        return fh, writer


def read_loss_log(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The columns of ``RUN_DIR/loss.csv`` as float arrays."""
    with (Path(run_dir) / LOSS_FILE).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {c: np.asarray([float(r[c]) for r in rows]) for c in LOSS_COLUMNS}
