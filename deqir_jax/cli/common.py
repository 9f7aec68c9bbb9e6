"""Shared pieces of the ``deqir`` command: errors, model loading, output checks, tables."""

from __future__ import annotations

import csv
import importlib
import json
import math
import platform
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Exit codes: 0 success, 1 solver failure / internal error, 2 usage or input error.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A user error (bad flag, bad input file, existing output): one line, exit code 2."""


def say(msg: str, quiet: bool = False) -> None:
    """A concise summary line on stdout (kept clear of the tqdm bars on stderr)."""
    if quiet:
        return
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stdout)


def note(msg: str) -> None:
    """A one-line notice on stderr."""
    from tqdm import tqdm

    tqdm.write(f"deqir: {msg}", file=sys.stderr)


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "img", quiet=False):
    """A tqdm bar on stderr (hidden when stderr is not a terminal or with ``--quiet``)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=True if quiet else None, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------
# model


def load_model(path: str | None):
    """``(model, description)``: the checkpoint at ``path`` or the embedded default model.

    Raises :class:`UsageError` for an unreadable checkpoint, a missing default model, or a
    network the CLI cannot drive (not 3 channels in, class-conditional).
    """
    from .. import models

    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise UsageError(f"--model '{p}' does not exist (expected a checkpoint directory "
                             "written by weights_convert, deqir train or dq.models.save)")
        try:
            model = models.load(p)
        except (ValueError, OSError) as err:
            raise UsageError(f"cannot load --model '{p}': {_first_line(err)}") from None
        desc = str(p.absolute())
    else:
        default = getattr(models, "default", None)  # the function, once exported there
        if not callable(default) or isinstance(default, types.ModuleType):
            try:
                default = importlib.import_module("deqir_jax.models.default").default
            except (ImportError, AttributeError):
                raise UsageError(
                    "no embedded default model is available in this installation; pass "
                    "--model PATH (a checkpoint from weights_convert, deqir train or "
                    "dq.models.save)") from None
        try:
            model = default()
        except (ValueError, OSError, ImportError) as err:
            raise UsageError(f"cannot load the embedded default model ({_first_line(err)}); "
                             "pass --model PATH") from None
        desc = "default"
        mod = sys.modules.get("deqir_jax.models.default")
        try:
            desc = f"default ({mod.default_model_path()})"
        except Exception:  # only a description: any failure keeps "default"
            pass
    config = getattr(model, "config", None)
    if config is not None:
        if getattr(config, "in_channels", 3) != 3:
            raise UsageError(f"the model takes {config.in_channels} input channels; the CLI "
                             "restores RGB images (3 channels)")
        if getattr(config, "num_classes", None) is not None:
            raise UsageError("the model is class-conditional; the CLI needs an unconditional "
                             "model")
    return model, desc


def size_multiple(model) -> int:
    """Height and width the network needs to divide its input size."""
    return int(getattr(getattr(model, "config", None), "size_multiple", 1) or 1)


def model_info(model) -> dict:
    config = getattr(model, "config", None)
    info: dict[str, Any] = {"dtype": str(getattr(model, "dtype", "float32"))}
    if config is not None:
        from ..models import config_to_dict

        try:
            info["config"] = config_to_dict(config)
        except Exception:  # pragma: no cover - any other model object
            info["config"] = repr(config)
    return info


# --------------------------------------------------------------------------------------
# outputs


def check_outputs(paths: Iterable[Path], overwrite: bool, limit: int = 3) -> None:
    """Fail before any work when an output exists and ``--overwrite`` was not given."""
    paths = list(paths)
    seen: set[Path] = set()
    for p in paths:
        if p in seen:  # two inputs mapped onto the same output name
            raise UsageError(f"two inputs would write the same output '{p}'; give the inputs "
                             "distinct file names")
        seen.add(p)
        if p.exists() and p.is_dir():
            raise UsageError(f"output path '{p}' is a folder")
    if overwrite:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        more = f" (and {len(existing) - limit} more)" if len(existing) > limit else ""
        names = ", ".join(f"'{p}'" for p in existing[:limit])
        raise UsageError(f"refusing to overwrite existing output {names}{more}; pass "
                         "--overwrite to replace")


def check_outdir(outdir: Path) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"output folder '{outdir}' exists and is a file")


def fmt_value(v: Any) -> str:
    """CSV cell text: '' for missing, 6 significant digits for floats, true/false for bools."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6g}"
    return str(v)


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str], overwrite: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fh = open(path, "w" if overwrite else "x", newline="")
    except FileExistsError:
        raise UsageError(f"refusing to overwrite existing output '{path}'; pass --overwrite "
                         "to replace") from None
    with fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([fmt_value(row.get(c)) for c in columns])
    return path


def parse_value(cell: str) -> Any:
    """The inverse of :func:`fmt_value` for a CSV cell: None, bool, int, float or text."""
    if cell == "":
        return None
    if cell in ("true", "false"):
        return cell == "true"
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def read_csv_rows(path: Path) -> list[dict]:
    """Rows of a table written by :func:`write_csv`, values parsed back."""
    with open(path, newline="") as fh:
        return [{k: parse_value(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0
                                                                          else "-inf"))
    if isinstance(v, Path):
        return str(v)
    if v is None or isinstance(v, str):
        return v
    return str(v)


def write_json(path: Path, data: dict, overwrite: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fh = open(path, "w" if overwrite else "x")
    except FileExistsError:
        raise UsageError(f"refusing to overwrite existing output '{path}'; pass --overwrite "
                         "to replace") from None
    with fh:
        json.dump(_json_safe(data), fh, indent=2)
        fh.write("\n")
    return path


def mean_of(rows: Sequence[dict], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("deqir_jax", "jax", "jaxlib", "flax", "numpy", "pillow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        import jax

        out["backend"] = jax.default_backend()
        out["devices"] = [str(d) for d in jax.devices()]
    except Exception:  # pragma: no cover
        pass
    return out


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def fmt_metric(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"
