"""The ``deqir`` command (also ``python -m deqir_jax.cli``).

Subcommands::

    deqir restore INPUT... --task TASK [task flags] -o OUTDIR  # restore (synthetic/--measured)
    deqir demo [-o OUTDIR] [--tasks ...] [--size N]            # every task on a sample photo
    deqir metrics RESTORED_DIR GT_DIR [--crop N] [--y-channel] # PSNR / SSIM / LPIPS of folders
    deqir train ...                                            # train a prior (deqir_jax.train)

Exit codes: 0 success, 1 solver failure (or an internal error), 2 usage or input error. User
errors print one line (``deqir: error: ...``); ``--debug`` also prints the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
import warnings

from .common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError

__all__ = ["main", "build_parser", "UsageError"]

_EPILOG = """exit codes: 0 success, 1 solver failure, 2 usage or input error.
Run 'deqir COMMAND --help' for the flags of a command."""


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("deqir_jax")
    except metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``deqir`` (sub-parsers import their modules lazily)."""
    from . import demo, metrics_cmd, restore_cmd

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show Python tracebacks for errors")
    common.add_argument("--compile-cache", metavar="DIR", help="JAX's persistent compilation "
                        "cache folder, so a later run of the same shapes skips compilation "
                        f"(default: ${CACHE_ENV} or {default_cache_dir()}; 'off' disables it)")
    common.add_argument("--no-compile-cache", dest="compile_cache", action="store_const",
                        const="off", help="do not use the persistent compilation cache")
    parser = argparse.ArgumentParser(
        prog="deqir", parents=[common], epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Diffusion image restoration solved as one fixed point (DeqIR) in JAX.")
    parser.add_argument("--version", action="version", version=f"deqir {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "restore", parents=[common], help="restore images (synthetic degradation or measured)",
        description="Restore images. Synthetic mode (default): each INPUT is a clean image; it "
        "is degraded with TASK (plus --sigma-y noise), restored, and scored against the "
        "original. Measured mode (--measured): each INPUT is the measurement y itself (e.g. a "
        "low-resolution image for SR, or a masked photo with --mask). Any image size works: "
        "images are reflect-padded to the network's and the task's multiple and cropped back. "
        "Writes <stem>_{original,y,apy,restored,grid}.png, metrics.csv and summary.json to "
        "OUTDIR; existing files are never replaced without --overwrite.")
    restore_cmd.add_arguments(p)
    p.set_defaults(func=restore_cmd.run)

    p = sub.add_parser(
        "demo", parents=[common], help="run every task on a bundled sample photograph",
        description="Restore a bundled sample photograph (scikit-image's astronaut) with every "
        f"task on the default model and write <task>_grid.png, demo_grid.png (rows = tasks; "
        f"columns = original, y, A+y, restored), metrics.csv and summary.json. The defaults "
        f"(--size {demo.DEFAULT_SIZE}, the default model's recommended sampler) run on a CPU "
        "in a few minutes.")
    demo.add_arguments(p)
    p.set_defaults(func=demo.run)

    p = sub.add_parser(
        "metrics", parents=[common], help="PSNR / SSIM / LPIPS of restored vs ground truth",
        description="Compare every restored image with the ground-truth image of the same "
        "name (file extension ignored; the '_restored' suffix of deqir restore outputs is "
        "stripped) and print per-image and mean PSNR, SSIM and LPIPS.")
    metrics_cmd.add_arguments(p)
    p.set_defaults(func=metrics_cmd.run)

    sub.add_parser("train", add_help=False, help="train a diffusion prior (arguments are "
                   "passed to deqir_jax.train; 'deqir train --help' lists them)")
    return parser


#: Environment variable naming the compilation cache folder ("off" disables it).
CACHE_ENV = "DEQIR_COMPILE_CACHE"


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/deqir_jax/jax`` (``~/.cache/deqir_jax/jax`` by default)."""
    import os
    from pathlib import Path

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "deqir_jax" / "jax")


def enable_compile_cache(path: str | None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (None: ``$DEQIR_COMPILE_CACHE``
    or :func:`default_cache_dir`; ``"off"``: leave it off). Every program is cached, however
    short its compilation. Returns the folder in use, or None."""
    import os

    import jax

    path = path or os.environ.get(CACHE_ENV) or default_cache_dir()
    if path == "off":
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--compile-cache: cannot create {path!r} ({err.strerror})") from None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _error(msg: str) -> None:
    print(f"deqir: error: {msg}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"deqir: warning: {str(message).splitlines()[0]}", file=sys.stderr)


def _train(argv: list[str], debug: bool) -> int:
    try:
        train = importlib.import_module("deqir_jax.train")
    except ImportError as err:
        if err.name not in ("deqir_jax.train", "deqir_jax"):
            raise
        _error("training is not available in this installation (module deqir_jax.train "
               "not found)")
        return EXIT_USAGE
    fn = getattr(train, "main", None)
    if fn is None:
        _error("deqir_jax.train has no main(argv) entry point")
        return EXIT_USAGE
    try:
        code = fn(argv)
    except SystemExit as e:  # argparse inside train: --help (0) or usage errors (2)
        return _exit_code(e.code)
    return EXIT_OK if code is None else int(code)


def _exit_code(code) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    """Run ``deqir`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] == "train":
        debug = "--debug" in argv[:first]
        return _guarded(lambda: _train(argv[first + 1:], debug), debug)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or an argparse usage error (already printed)
        return _exit_code(e.code)
    args.argv = ["deqir"] + argv

    def run():
        enable_compile_cache(args.compile_cache)
        return args.func(args)

    return _guarded(run, debug)


def _guarded(fn, debug: bool) -> int:
    from ..restore import SolverError

    def fail(code: int, msg: str) -> int:
        if debug:
            traceback.print_exc()
        _error(msg)
        return code

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            code = fn()
            return EXIT_OK if code is None else int(code)
        except UsageError as e:
            return fail(EXIT_USAGE, str(e))
        except SolverError as e:
            return fail(EXIT_FAILURE, f"solver failed: {e}")
        except (ValueError, TypeError, OSError) as e:
            return fail(EXIT_USAGE, str(e).strip().splitlines()[0] if str(e).strip()
                        else type(e).__name__)
        except KeyboardInterrupt:
            return fail(130, "interrupted")
        except MemoryError:
            return fail(EXIT_FAILURE, "out of memory; try a smaller image, --batch-size 1 or "
                        "--chunk-size")
        except Exception as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            if "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e):
                return fail(EXIT_FAILURE, f"out of device memory ({text}); try --chunk-size or "
                            "a smaller image")
            hint = "" if debug else " (run with --debug for the traceback)"
            return fail(EXIT_FAILURE, f"internal error: {type(e).__name__}: {text}{hint}")
