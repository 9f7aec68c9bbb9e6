"""Per-image metric tables for arrays and for folders of image files."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.images import list_images, read_image
from .fidelity import psnr, ssim
from .perceptual import _ARCH, LPIPSWeightsNotFoundError, _check_net, lpips


def evaluate(
    restored,
    reference,
    *,
    crop: int = 0,
    y_channel: bool = False,
    lpips_net: str | None = "alex",
) -> dict[str, np.ndarray]:
    """PSNR, SSIM and (when possible) LPIPS of each restored image against its reference.

    Args:
      restored, reference: ``(B, H, W, 3)`` or ``(H, W, 3)`` arrays in ``[-1, 1]``.
      crop: border pixels removed before PSNR/SSIM (LPIPS always sees the whole image).
      y_channel: PSNR/SSIM on BT.601 luma instead of RGB.
      lpips_net: ``"alex"``, ``"vgg"`` or None to skip LPIPS. LPIPS is left out, with a
        warning, when its weights are not available offline or the images are too small.

    Returns:
      ``{"psnr": (B,), "ssim": (B,), "lpips": (B,)}`` float64 numpy arrays (``"lpips"``
      absent when skipped). PSNR is ``inf`` for identical images.
    """
    x = np.asarray(restored)
    y = np.asarray(reference)
    if x.shape != y.shape:
        raise ValueError(
            f"evaluate: restored and reference must have the same shape, got {x.shape} "
            f"and {y.shape}"
        )
    if x.ndim == 3:
        x, y = x[None], y[None]
    out = {
        "psnr": np.asarray(psnr(x, y, crop=crop, y_channel=y_channel), np.float64),
        "ssim": np.asarray(ssim(x, y, crop=crop, y_channel=y_channel), np.float64),
    }
    if lpips_net is not None:
        net = _check_net(lpips_net)
        m = _ARCH[net]["min_size"]
        if x.ndim == 4 and (x.shape[1] < m or x.shape[2] < m):
            warnings.warn(
                f"evaluate: LPIPS ({net}) skipped: images are {x.shape[1]}x{x.shape[2]}, "
                f"smaller than {m}x{m}",
                stacklevel=2,
            )
        else:
            try:
                out["lpips"] = np.asarray(lpips(x, y, net=net), np.float64)
            except LPIPSWeightsNotFoundError as err:
                warnings.warn(f"evaluate: LPIPS skipped: {err}", stacklevel=2)
    return out


def _by_stem(paths: Sequence[Path], folder: Path) -> dict[str, Path]:
    table: dict[str, Path] = {}
    for p in paths:
        if p.stem in table:
            raise ValueError(
                f"'{folder}' holds two images with the name '{p.stem}': "
                f"'{table[p.stem].name}' and '{p.name}'"
            )
        table[p.stem] = p
    return table


def _names(stems, limit: int = 10) -> str:
    stems = sorted(stems)
    more = f" (and {len(stems) - limit} more)" if len(stems) > limit else ""
    return ", ".join(stems[:limit]) + more


def metrics_dirs(
    restored_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    crop: int = 0,
    y_channel: bool = False,
    lpips_net: str | None = "alex",
    strict: bool = True,
) -> list[dict]:
    """Compare every restored image with the ground-truth image of the same file stem.

    Files are paired by name without extension (``0001.png`` with ``0001.jpg``), in sorted
    order.

    Args:
      restored_dir: folder of restored images.
      gt_dir: folder of ground-truth images.
      crop, y_channel, lpips_net: as in :func:`evaluate`.
      strict: also require every ground-truth image to have a restored one (otherwise extra
        ground-truth images are ignored).

    Returns:
      One dict per pair: ``name``, ``restored``, ``reference`` (paths as str), ``psnr``,
      ``ssim`` and, when available, ``lpips`` (floats).

    Raises:
      ValueError: for a missing folder, no images, a restored image without ground truth
        (or the reverse with ``strict``), duplicate stems, or a size mismatch.
    """
    rdir, gdir = Path(restored_dir), Path(gt_dir)
    for d, what in ((rdir, "restored"), (gdir, "ground-truth")):
        if not d.is_dir():
            raise ValueError(f"metrics_dirs: {what} folder '{d}' does not exist")
    restored = _by_stem(list_images(rdir), rdir)
    gt = _by_stem(list_images(gdir), gdir)
    no_gt = set(restored) - set(gt)
    if no_gt:
        raise ValueError(
            f"metrics_dirs: {len(no_gt)} restored image(s) in '{rdir}' have no ground truth "
            f"with the same name in '{gdir}': {_names(no_gt)}"
        )
    no_restored = set(gt) - set(restored)
    if strict and no_restored:
        raise ValueError(
            f"metrics_dirs: {len(no_restored)} ground-truth image(s) in '{gdir}' have no "
            f"restored image in '{rdir}': {_names(no_restored)} (pass strict=False to "
            f"evaluate only the restored ones)"
        )
    rows = []
    seen: set[str] = set()
    for stem in sorted(restored):
        rp, gp = restored[stem], gt[stem]
        x, y = read_image(rp), read_image(gp)
        if x.shape != y.shape:
            raise ValueError(
                f"metrics_dirs: size mismatch for '{stem}': restored '{rp}' is "
                f"{x.shape[1]}x{x.shape[0]} but ground truth '{gp}' is {y.shape[1]}x{y.shape[0]}"
                f" (width x height)"
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vals = evaluate(x, y, crop=crop, y_channel=y_channel, lpips_net=lpips_net)
        for w in caught:  # pass each distinct warning on once, not once per image
            if str(w.message) not in seen:
                seen.add(str(w.message))
                warnings.warn(str(w.message), stacklevel=2)
        row = {"name": stem, "restored": str(rp), "reference": str(gp)}
        row.update({k: float(v[0]) for k, v in vals.items()})
        rows.append(row)
    return rows


def summarize(rows: Sequence[dict]) -> dict[str, float]:
    """Mean of each numeric column of :func:`metrics_dirs` rows (``inf`` PSNRs stay ``inf``).

    Returns ``{"count": n, "psnr": mean, ...}``.
    """
    out: dict[str, float] = {"count": float(len(rows))}
    if not rows:
        return out
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        out[k] = float(np.mean(vals)) if vals else math.nan
    return out
