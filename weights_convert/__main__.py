"""``python -m weights_convert SRC DST ...``: see :func:`main`."""

from __future__ import annotations

import argparse
import os
import sys

USAGE_EXAMPLES = """\
examples:
  python -m weights_convert 256x256_diffusion_uncond.pt adm256 --preset adm-imagenet256-uncond
  python -m weights_convert celeba_hq.ckpt ddpm_celeba             # architecture inferred
  python -m weights_convert custom.pt out --set num_head_channels=64 --set image_size=128
"""


def build_parser() -> argparse.ArgumentParser:
    from deqir_jax.models import PRESETS

    p = argparse.ArgumentParser(
        prog="python -m weights_convert",
        description="Convert a PyTorch (.pt/.pth/.ckpt) or .safetensors ADM/DDPM UNet "
                    "checkpoint to a deqir_jax model directory (config.json + orbax params). "
                    "The file is read without torch and without executing code from it.",
        epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="checkpoint file (.pt/.pth/.ckpt or .safetensors)")
    p.add_argument("dst", help="output directory (refused if it exists, unless --overwrite)")
    p.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                   help="architecture preset (default: inferred from the tensors); one of: "
                        + ", ".join(sorted(PRESETS)))
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype recorded in the checkpoint (params stay float32)")
    p.add_argument("--key", help="entry holding the state dict, e.g. 'ema', 'state_dict', "
                                 "'4' or 'ckpt/model' (default: see weights_convert.sources)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override/define a config field, e.g. num_head_channels=64 "
                        "(repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the converter CLI; returns the exit status (0 ok, 1 unexpected error, 2 bad input)."""
    args = build_parser().parse_args(argv)
    from .convert import convert

    try:
        result = convert(args.src, args.dst, preset=args.preset, dtype=args.dtype, key=args.key,
                         overrides=args.overrides, overwrite=args.overwrite,
                         progress=not args.quiet)
    except (ValueError, OSError) as e:  # CheckpointError/ConversionError are ValueErrors
        print(f"weights_convert: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("weights_convert: interrupted (destination not written)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a clean message instead of a traceback
        if os.environ.get("WEIGHTS_CONVERT_DEBUG"):
            raise
        print(f"weights_convert: unexpected error {type(e).__name__}: {e} "
              "(set WEIGHTS_CONVERT_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
