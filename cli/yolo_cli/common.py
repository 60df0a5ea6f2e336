"""Options shared by ``detect`` and ``eval``: where the model is (service or in-process) and how hard
to push it; plus the warning/progress helpers."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .clients import GrpcClient, LocalClient, RestClient
from .errors import CliError

DEFAULT_URL = "http://127.0.0.1:8080"


def add_target_arguments(parser: argparse.ArgumentParser, *, local_input_size: int | None = None) -> None:
    group = parser.add_argument_group("where the model runs")
    group.add_argument("--url", default=None,
                       help=f"predictor REST address (env YOLO_URL; default {DEFAULT_URL})")
    group.add_argument("--grpc", metavar="HOST:PORT", default=None,
                       help="use the predictor's gRPC v2 endpoint instead of REST (e.g. localhost:8081)")
    group.add_argument("--model", default=os.environ.get("YOLO_MODEL", "yolov7"),
                       help="model name on the predictor (env YOLO_MODEL; default yolov7)")
    group.add_argument("--local", action="store_true", help="run the model in this process (needs --weights)")
    group.add_argument("--weights", help="checkpoint for --local (official .pt or the project's safetensors)")
    group.add_argument("--device", default="auto", help="--local device: auto, cpu, cuda, cuda:N (default auto)")
    group.add_argument("--input-size", type=int, default=local_input_size,
                       help="--local square network input size (default: the variant's native size"
                       + (f"; {local_input_size} for eval" if local_input_size else "") + ")")
    group.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one answer (default 60)")
    group.add_argument("--concurrency", type=int, default=4,
                       help="requests in flight at once, so the predictor batches them (default 4; 1 with --local)")
    group.add_argument("--batch", type=int, default=1, help="images per request / per local forward (default 1)")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary on stderr")


def check_target_arguments(args: argparse.Namespace) -> None:
    if args.local and (args.url or args.grpc):
        raise CliError("--local runs the model in-process: drop --url/--grpc (or drop --local)")
    if args.local and not args.weights:
        raise CliError("--local needs --weights PATH")
    if not args.local and args.weights:
        raise CliError("--weights is for --local; a predictor loads its own weights")
    if args.concurrency < 1 or args.batch < 1:
        raise CliError("--concurrency and --batch must be at least 1")
    if args.timeout <= 0:
        raise CliError("--timeout must be positive")


def make_client(args: argparse.Namespace) -> Any:
    check_target_arguments(args)
    if args.local:
        return LocalClient(args.weights, device=args.device, input_size=args.input_size)
    if args.grpc:
        return GrpcClient(args.grpc, args.model, timeout=args.timeout, max_workers=args.concurrency)
    url = args.url or os.environ.get("YOLO_URL") or DEFAULT_URL
    return RestClient(url, args.model, timeout=args.timeout, max_workers=args.concurrency)


def warn(message: str) -> None:
    # tqdm.write keeps the progress bar intact
    try:
        from tqdm import tqdm

        tqdm.write(f"warning: {message}", file=sys.stderr)
    except ImportError:  # pragma: no cover
        print(f"warning: {message}", file=sys.stderr)


def progress_bar(total: int | None, quiet: bool, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=description, file=sys.stderr, disable=quiet,
                dynamic_ncols=True, smoothing=0.1, mininterval=0.5)


def parse_classes(text: str | None) -> tuple[int | str, ...] | None:
    if not text:
        return None
    items: list[int | str] = []
    for item in text.split(","):
        item = item.strip()
        if item:
            items.append(int(item) if item.isdigit() else item)
    return tuple(items) or None


def unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
