"""``yolo-v7``: the command-line client. ``yolo-v7 detect --help`` and ``yolo-v7 eval --help`` tell more."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import detect, evaluate
from .errors import EXIT_INTERRUPTED, CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yolo-v7",
        description="YOLOv7 object detection from the command line, through a running predictor "
        "(KServe, Open Inference Protocol v2 over REST or gRPC) or in-process.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    detect.add_parser(subparsers)
    evaluate.add_parser(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("yolo-v7")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `yolo-v7 detect ... | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    if code == EXIT_INTERRUPTED:
        # Ctrl-C: the outputs are closed; do not wait at exit for requests in flight whose answers would
        # be thrown away (each could take up to --timeout)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
