"""The work shared by ``deqir restore`` and ``deqir demo``: restore a group of prepared images
with one operator, then crop, score and lay out the results."""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics
from ..diffusion import Sampler
from ..diffusion.deq_map import describe_linearize
from ..io import make_grid, resize_nearest, write_image, write_uint8
from ..restore import SolverError, restore
from .tasks import TaskSpec, y_picture

#: Columns of metrics.csv (empty cells where a value does not exist, e.g. PSNR in measured mode).
COLUMNS = (
    "name", "task", "mode", "height", "width",
    "psnr_apy", "ssim_apy", "lpips_apy", "psnr", "ssim", "lpips",
    "consistency", "consistency_rms", "method", "iterations", "depth", "nfe", "converged",
    "residual", "seconds", "input",
)
#: Grid cells are enlarged (nearest neighbour) to about this many pixels for readable labels.
GRID_CELL = 128
#: Smallest side the AlexNet LPIPS accepts (deqir_jax.metrics.lpips).
LPIPS_MIN_SIZE = 31


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything about a restore call except the images and the operator."""

    sampler: Sampler
    method: str
    solver: Any  # an Anderson/Picard dataclass; None for sequential
    chunk_size: int | None = None
    strict: bool = False
    seed: int = 0
    lpips: bool = True
    order: int | None = None
    linearize: float | tuple[float, float] | None = None
    coarse: int = 0
    devices: int | None = None  # a mesh of this many devices (None: one device)
    method_reason: str = "asked for"

    def method_line(self) -> str:
        """``method: ... (why)``, with the fixed-point map of a parallel method."""
        line = f"method: {self.method} ({self.method_reason})"
        if self.method == "sequential":
            return line
        order = "full order" if self.order is None else f"order {self.order}"
        lin = describe_linearize(self.linearize)
        return f"{line}; map: {order}, {lin}"

    def describe(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("solver", "sampler")}
        d.update(self.sampler.to_dict())
        if self.solver is not None:
            d["solver"] = {"type": type(self.solver).__name__, **dataclasses.asdict(self.solver)}
        return d


@dataclasses.dataclass
class Job:
    """One image to restore, already padded to the operator's size."""

    index: int  # selects the image's PRNG key: fold_in(key(seed), index)
    name: str
    source: str
    hw: tuple[int, int]  # restored (cropped) size
    padded: tuple[int, int]
    spec: TaskSpec
    original: np.ndarray | None = None  # (H, W, 3) clean image (synthetic mode)
    x_pad: np.ndarray | None = None  # padded clean image (synthetic mode)
    y_pad: np.ndarray | None = None  # padded measurement (measured mode)
    mask: np.ndarray | None = None  # padded inpainting mask

    @property
    def measured(self) -> bool:
        return self.x_pad is None

    def op_key(self) -> tuple:
        # masks depend on the unpadded size (a centred box stays centred in the picture)
        return (self.spec.name, self.padded, self.hw if self.spec.name == "inpainting" else None)


@dataclasses.dataclass
class Outcome:
    job: Job
    images: dict  # kind -> unpadded HWC array in [-1, 1] (original, y, apy, restored)
    row: dict
    error: str | None = None


def image_key(seed: int, index: int):
    """The i-th image's key, ``fold_in(key(seed), i)``: what ``dq.restore(key=seed)`` gives
    the i-th image of a batch, so ``--seed k`` restores a folder's images as
    ``dq.restore(..., key=k)`` restores them stacked."""
    return jax.random.fold_in(jax.random.key(seed), index)


@functools.lru_cache(maxsize=4)
def mesh(devices: int):
    """The mesh of ``--devices N`` (timesteps over the first N devices); ValueError naming the
    available count when N is out of range."""
    from ..parallel import make_mesh

    return make_mesh(devices)


def run_group(model, op, jobs: list[Job], cfg: RunConfig, notes: set[str]) -> list[Outcome]:
    """Restore ``jobs`` (same operator) in one batched :func:`deqir_jax.restore` call. With
    ``cfg.devices``: the parallel methods split the timesteps over a mesh of that many
    devices, sequential splits the images (the group is padded with copies of its last image
    to a multiple of the devices; the copies are dropped)."""
    sampler = cfg.sampler
    padded = list(jobs)
    if cfg.devices and cfg.method == "sequential":
        padded += [jobs[-1]] * (-len(jobs) % cfg.devices)
    keys = jnp.stack([image_key(cfg.seed, job.index) for job in padded])
    ys = []
    for job, k in zip(padded, keys, strict=True):
        if job.measured:
            ys.append(jnp.asarray(job.y_pad, jnp.float32))
        else:
            y = op.A(jnp.asarray(job.x_pad, jnp.float32)[None])[0]
            if sampler.sigma_y > 0:  # sigma_y is in [0, 1] pixel units: doubled for [-1, 1]
                ky = jax.random.split(k)[0]  # (x_T and the noise use fold_in(k, sample))
                y = y + 2.0 * sampler.sigma_y * jax.random.normal(ky, y.shape, jnp.float32)
            ys.append(y.astype(jnp.float32))
    y = jnp.stack(ys)
    kwargs = dict(sampler=sampler, method=cfg.method, key=keys, chunk_size=cfg.chunk_size,
                  on_max_steps="raise" if cfg.strict else "ignore")
    if cfg.method != "sequential":
        kwargs.update(solver=cfg.solver, order=cfg.order, linearize=cfg.linearize,
                      coarse=cfg.coarse)
    if cfg.devices:
        kwargs.update(mesh=mesh(cfg.devices))
    t0 = time.perf_counter()
    try:
        res = restore(model, y, op, **kwargs)
        image = jax.block_until_ready(res.image)
    except SolverError as err:
        return [Outcome(job, {}, _base_row(job), error=str(err)) for job in jobs]
    seconds = (time.perf_counter() - t0) / len(jobs)
    cons = metrics.consistency(op, image, y)
    image, apy, y_np = np.asarray(image), np.asarray(res.apy), np.asarray(y)
    stats = res.stats
    residual = stats.get("residual")
    K = sampler.samples
    out = []
    for i, job in enumerate(jobs):
        h, w = job.hw
        restored = np.clip(image[i, :h, :w], -1.0, 1.0)
        apy_i = np.clip(apy[i, :h, :w], -1.0, 1.0)
        images = {"apy": apy_i, "restored": restored}
        ypic = y_picture(job.spec, y_np[i], h, w)
        if ypic is not None:
            images["y"] = np.clip(ypic, -1.0, 1.0)
        row = _base_row(job)
        row.update(
            consistency=float(cons.l2[i]), consistency_rms=float(cons.rms[i]),
            method=stats["method"], iterations=int(stats["iterations"]),
            depth=int(max(stats["depth"][i * K:(i + 1) * K])),
            nfe=int(stats["nfe"]),
            converged=bool(all(stats["image_converged"][i * K:(i + 1) * K])),
            residual=None if residual is None else float(
                np.max(np.ravel(residual)[i * K:(i + 1) * K])),
            seconds=seconds,
        )
        if job.original is not None:
            images["original"] = job.original
            row.update(_scores(restored, job.original, "", cfg.lpips, notes))
            row.update(_scores(apy_i, job.original, "_apy", cfg.lpips, notes))
        out.append(Outcome(job, images, row))
    return out


def _base_row(job: Job) -> dict:
    return {"name": job.name, "task": job.spec.name, "mode": "measured" if job.measured
            else "synthetic", "height": job.hw[0], "width": job.hw[1], "input": job.source}


def _scores(x, ref, suffix: str, use_lpips: bool, notes: set[str]) -> dict:
    if use_lpips and min(x.shape[:2]) < LPIPS_MIN_SIZE:
        use_lpips = False
        notes.add(f"LPIPS (alex) needs at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} pixels: left "
                  "empty for smaller images")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vals = metrics.evaluate(x, ref, lpips_net="alex" if use_lpips else None)
    for w in caught:
        notes.add(str(w.message))
    return {f"{k}{suffix}": float(v[0]) for k, v in vals.items()}


# --------------------------------------------------------------------------------------
# pictures


def display(img: np.ndarray, cell: int) -> np.ndarray:
    """Nearest-neighbour enlargement of ``img`` by the integer factor that fits ``cell``."""
    k = max(1, cell // max(img.shape[:2]))
    return img if k == 1 else resize_nearest(img, (img.shape[0] * k, img.shape[1] * k))


def grid_cells(outcome: Outcome, title: str | None = None) -> tuple[list, list[str]]:
    """Images and labels of one grid row: original, y, A+y, restored (those that exist)."""
    ims, row = outcome.images, outcome.row
    h, w = outcome.job.hw
    cell = max(h, w, GRID_CELL)
    cells, labels = [], []

    def add(img, label):
        cells.append(display(img, cell))
        labels.append(label)

    if "original" in ims:
        add(ims["original"], title or "original")
    if "y" in ims:
        add(ims["y"], "y")
    else:
        add(np.zeros((h, w, 3), np.float32), "y: not an image")
    add(ims["apy"], _label("A+y", row.get("psnr_apy")))
    add(ims["restored"], _label("restored", row.get("psnr")))
    return cells, labels


def _label(text: str, psnr: float | None) -> str:
    if psnr is None:
        return text
    return f"{text} {psnr:.1f}dB" if np.isfinite(psnr) else f"{text} inf dB"


def output_paths(outdir: Path, stem: str, *, original: bool, y: bool) -> dict[str, Path]:
    kinds = (["original"] if original else []) + (["y"] if y else []) + ["apy", "restored",
                                                                        "grid"]
    return {k: outdir / f"{stem}_{k}.png" for k in kinds}


def write_outcome(outcome: Outcome, paths: dict[str, Path], overwrite: bool) -> None:
    for kind, img in outcome.images.items():
        if kind in paths:
            write_image(paths[kind], img, overwrite=overwrite)
    if "grid" in paths:
        cells, labels = grid_cells(outcome)
        write_uint8(paths["grid"], make_grid(cells, labels), overwrite=overwrite)
