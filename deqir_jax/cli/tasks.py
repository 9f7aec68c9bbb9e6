"""Tasks for the CLI: flags -> operator parameters, padding sizes, measurements as pictures."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from .. import operators
from ..operators import masks as mask_lib
from .common import UsageError

#: Task parameters of each task, as CLI flags (``deblur`` is a user ``--kernel``).
TASK_PARAMS: dict[str, tuple[str, ...]] = {
    "sr_averagepooling": ("scale",),
    "sr_bicubic": ("scale",),
    "deblur_gauss": ("sigma", "kernel_size"),
    "deblur_uni": ("kernel_size",),
    "deblur_aniso": ("sigma", "kernel_size"),
    "deblur": ("kernel",),
    "inpainting": ("mask", "keep_ratio"),
    "colorization": (),
    "cs_walshhadamard": ("ratio",),
    "denoising": (),
}
FLAG = {"scale": "--scale", "sigma": "--sigma", "kernel_size": "--kernel-size",
        "kernel": "--kernel", "mask": "--mask", "keep_ratio": "--keep-ratio", "ratio": "--ratio"}
DEFAULT_SCALE = 4
CS = "cs_walshhadamard"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A task resolved from the flags: official name, registry params, mask spec."""

    name: str
    params: dict
    mask: Any = None  # None | "box" | "random" | "half" | np.ndarray (H, W[, C]) from a file
    mask_source: str | None = None
    keep_ratio: float | None = None
    faithful: bool = False
    seed: int = 0

    @property
    def scale(self) -> int:
        return int(self.params.get("scale", 1))

    @property
    def is_sr(self) -> bool:
        return self.name.startswith("sr_")

    def describe(self) -> dict:
        d = {"task": self.name, **{k: v for k, v in self.params.items() if k != "kernel"},
             "faithful_operator": self.faithful}
        if "kernel" in self.params:
            d["kernel_shape"] = list(np.shape(self.params["kernel"]))
        if self.name == "inpainting":
            d["mask"] = self.mask_source or "box"
            if self.keep_ratio is not None:
                d["keep_ratio"] = self.keep_ratio
        return d


def task_names_help() -> str:
    return ", ".join(operators.TASKS)


def _load_kernel(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--kernel file '{p}' does not exist")
    if p.suffix.lower() != ".npy":
        raise UsageError(f"--kernel must be a .npy file (a 1-D or 2-D array), got '{p}'")
    try:
        k = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read --kernel '{p}': {err}") from None
    return np.asarray(k, dtype=np.float64)


def _parse_sigma(text: str, task: str):
    try:
        vals = [float(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UsageError(f"--sigma must be a number or 'SIGMA_H,SIGMA_W', got {text!r}") from None
    if not vals or len(vals) > 2 or (task == "deblur_gauss" and len(vals) != 1):
        want = "one number" if task == "deblur_gauss" else "one or two numbers"
        raise UsageError(f"--sigma for {task} must be {want}, got {text!r}")
    if any(not math.isfinite(v) or v <= 0 for v in vals):
        raise UsageError(f"--sigma must be positive, got {text!r}")
    if task == "deblur_aniso":
        return (vals[0], vals[-1])
    return vals[0]


def build_task(args, *, faithful: bool = False) -> TaskSpec:
    """Resolve ``--task`` and the task flags; every mistake is a :class:`UsageError`."""
    try:
        name = operators.canonical_name(args.task)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    given = {k: getattr(args, k, None) for k in FLAG}
    given = {k: v for k, v in given.items() if v is not None}
    if name == "deblur" and "kernel" not in given:
        name = "deblur_gauss"
    if "kernel" in given and name != "deblur":
        raise UsageError(f"--kernel is only used by --task deblur (a custom blur kernel), "
                         f"not by {name}")
    allowed = TASK_PARAMS[name]
    bad = [k for k in given if k not in allowed]
    if bad:
        accepted = ", ".join(FLAG[k] for k in allowed) or "none"
        raise UsageError(f"{FLAG[bad[0]]} does not apply to task {name} (its parameters: "
                         f"{accepted})")
    params: dict[str, Any] = {}
    if name.startswith("sr_"):
        scale = given.get("scale", DEFAULT_SCALE)
        if scale < 1:
            raise UsageError(f"--scale must be a positive integer, got {scale}")
        params["scale"] = int(scale)
    if "sigma" in given:
        params["sigma"] = _parse_sigma(given["sigma"], name)
    if "kernel_size" in given:
        ks = given["kernel_size"]
        if ks < 1 or (name != "deblur_uni" and ks % 2 == 0):
            odd = "" if name == "deblur_uni" else "odd "
            raise UsageError(f"--kernel-size must be a positive {odd}integer, got {ks}")
        params["kernel_size"] = int(ks)
    if "kernel" in given:
        params["kernel"] = _load_kernel(given["kernel"])
    if "ratio" in given:
        r = given["ratio"]
        if not (0 < r <= 1):
            raise UsageError(f"--ratio must be in (0, 1], got {r}")
        params["ratio"] = float(r)
    mask, source, keep = None, None, None
    if name == "inpainting":
        source = given.get("mask")
        keep = given.get("keep_ratio")
        if keep is not None:
            if source != "random":
                raise UsageError("--keep-ratio is only used with --mask random")
            if not (0 < keep <= 1):
                raise UsageError(f"--keep-ratio must be in (0, 1], got {keep}")
        if source is None or source in mask_lib.BUILTIN_MASKS:
            mask = source or "box"
        else:
            mask = _load_mask_file(source)
    return TaskSpec(name=name, params=params, mask=mask, mask_source=source, keep_ratio=keep,
                    faithful=faithful, seed=int(getattr(args, "seed", 0) or 0))


def _load_mask_file(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--mask '{path}' is neither a file nor one of "
                         f"{', '.join(mask_lib.BUILTIN_MASKS)}")
    try:
        arr = mask_lib.load_mask(p)
    except Exception as err:  # PIL/numpy raise many types for bad files
        raise UsageError(f"cannot read --mask '{p}': {err}") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise UsageError(f"--mask '{p}' must be an (H, W) or (H, W, 3) array, got shape "
                         f"{arr.shape}")
    if not arr.any():
        raise UsageError(f"--mask '{p}' keeps no pixel (it is all zeros; 1/white = observed)")
    return arr


# --------------------------------------------------------------------------------------
# sizes


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def padded_size(spec: TaskSpec, h: int, w: int, model_multiple: int) -> tuple[int, int]:
    """The operator's image size for a restored size ``h x w``: padded to the network's
    multiple, the SR scale, and a power of two per side for CS (``H W`` = 2^k)."""
    if spec.name == CS:
        return max(_next_pow2(h), model_multiple), max(_next_pow2(w), model_multiple)
    m = math.lcm(model_multiple, spec.scale) if spec.is_sr else model_multiple
    return -(-h // m) * m, -(-w // m) * m


def check_size(spec: TaskSpec, h: int, w: int, what: str) -> None:
    if spec.is_sr and spec.scale > min(h, w):
        raise UsageError(f"--scale {spec.scale} is larger than {what} ({w}x{h}, width x height)")


def pad_like_image(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reflect-pad an HWC/HW array at the bottom/right to ``size`` (the image padding)."""
    h, w = arr.shape[:2]
    ph, pw = size[0] - h, size[1] - w
    if ph == 0 and pw == 0:
        return arr
    widths = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(arr, widths, mode=mode)


def resolve_mask(spec: TaskSpec, h: int, w: int, padded: tuple[int, int], what: str):
    """The inpainting mask for an ``h x w`` image, reflect-padded like the image."""
    if isinstance(spec.mask, np.ndarray):
        if spec.mask.shape[:2] != (h, w):
            mh, mw = spec.mask.shape[:2]
            raise UsageError(f"--mask '{spec.mask_source}' is {mw}x{mh} but {what} is {w}x{h} "
                             "(width x height)")
        m = spec.mask
    elif spec.mask == "random":
        m = mask_lib.random_mask(h, w, 0.5 if spec.keep_ratio is None else spec.keep_ratio,
                                 key=spec.seed)
    elif spec.mask == "half":
        m = mask_lib.half_mask(h, w)
    else:
        m = mask_lib.box_mask(h, w)
    return pad_like_image(np.asarray(m, np.float64), padded)


def make_operator(spec: TaskSpec, padded: tuple[int, int], mask=None):
    params = dict(spec.params)
    if spec.name == "inpainting":
        params["mask"] = mask
    try:
        return operators.get(spec.name, image_shape=(padded[0], padded[1], 3), key=spec.seed,
                             faithful=spec.faithful, **params)
    except (ValueError, TypeError) as err:
        raise UsageError(f"task {spec.name}: {err}") from None


def y_picture(spec: TaskSpec, y: np.ndarray, h: int, w: int) -> np.ndarray | None:
    """The (unpadded) measurement as a picture for an ``h x w`` restored image, or None (CS)."""
    if spec.name == CS:
        return None
    if spec.is_sr:
        s = spec.scale
        return y[: -(-h // s), : -(-w // s)]
    return y[:h, :w]


def measured_y(spec: TaskSpec, image: np.ndarray, name: str, model_multiple: int):
    """``(y_padded, (H, W) restored size, (H_pad, W_pad), mask)`` for a measured input."""
    if spec.name == CS:
        raise UsageError("--measured is not supported for cs_walshhadamard: its measurements "
                         "are coefficient vectors, not images (use synthetic mode)")
    hy, wy = image.shape[:2]
    mask = None
    if spec.is_sr:
        s = spec.scale
        h, w = hy * s, wy * s
        hp, wp = padded_size(spec, h, w, model_multiple)
        y = pad_like_image(image, (hp // s, wp // s))
    else:
        h, w = hy, wy
        hp, wp = padded_size(spec, h, w, model_multiple)
        y = pad_like_image(image, (hp, wp))
        if spec.name == "colorization":
            y = y.mean(axis=-1, keepdims=True)
        elif spec.name == "inpainting":
            mask = resolve_mask(spec, h, w, (hp, wp), f"image '{name}'")
            m = mask if mask.ndim == 3 else mask[..., None]
            y = y * m  # the measurement is zero where nothing was observed
    return y.astype(np.float32), (h, w), (hp, wp), mask
