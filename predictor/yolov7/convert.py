"""Convert a YOLOv7 checkpoint (official ``.pt``, state dict, or export) into the safetensors export.

Usage::

    python -m predictor.yolov7.convert yolov7.pt yolov7.safetensors
    yolo-v7-convert yolov7.pt yolov7.safetensors --dtype float32 --names my-classes.txt

The input is read with the safe loader (no pickled code runs). Prints the variant, class count and
parameter count. Exit status: 0 done, 1 the checkpoint could not be converted, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]

_DTYPES = ("auto", "float16", "float32")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yolo-v7-convert",
        description="Convert a YOLOv7 checkpoint into the project's safetensors export (safe: no pickled "
        "code is executed).",
    )
    p.add_argument("input", type=Path, help="official .pt, torch.save'd state dict, or .safetensors export")
    p.add_argument("output", type=Path, help="where to write the .safetensors export")
    p.add_argument(
        "--dtype",
        choices=_DTYPES,
        default="auto",
        help="tensor precision in the export; 'auto' keeps the source's (official weights are float16)",
    )
    p.add_argument(
        "--names", type=Path, help="text file with one class name per line (overrides the checkpoint's)"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Heavy imports only once the arguments are known to be fine.
    import torch

    from .checkpoint import CheckpointError, load_checkpoint, save_export

    if args.output.exists() and not args.force:
        print(f"error: {args.output} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    if args.output.resolve() == args.input.resolve():
        print("error: output must differ from input", file=sys.stderr)
        return 1
    try:
        ckpt = load_checkpoint(args.input)
        if args.names is not None:
            names = [n.strip() for n in args.names.read_text(encoding="utf-8").splitlines() if n.strip()]
            if len(names) != ckpt.num_classes:
                raise CheckpointError(
                    f"{args.names} lists {len(names)} names but the model predicts {ckpt.num_classes} classes"
                )
            ckpt.names = names
        dtype_name = ckpt.source_dtype if args.dtype == "auto" else args.dtype
        dtype = torch.float16 if dtype_name == "float16" else torch.float32
        out = save_export(ckpt, args.output, dtype=dtype)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"variant:    {ckpt.variant}")
    print(f"classes:    {ckpt.num_classes}")
    print(f"parameters: {ckpt.num_parameters:,}")
    print(f"source:     {ckpt.source_format} ({ckpt.source_dtype})")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {dtype_name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
