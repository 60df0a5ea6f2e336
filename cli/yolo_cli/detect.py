"""``yolo-v7 detect``: images, folders, globs, videos or a camera → annotated files, JSON Lines, COCO results."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from predictor.settings import DetectParams

from . import pipeline
from .clients import Params, resolve_class
from .common import (
    add_target_arguments,
    check_target_arguments,
    make_client,
    parse_classes,
    positive_int,
    progress_bar,
    unit_interval,
    warn,
)
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, CliError
from .outputs import (
    VIDEO_FORMATS,
    AnnotatedWriter,
    CocoWriter,
    ImageIds,
    JsonlWriter,
    category_mapper,
    default_category_map,
)
from .sources import count_frames, expand, iter_frames


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="detect objects in images, folders, globs, videos or a camera",
        description="Detect objects in images, folders, globs, video files or a camera (an index such as 0), "
        "through a running predictor (REST or gRPC) or in-process (--local).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image file, folder, glob ('photos/*.jpg'), video file (.mp4, .avi, ...) or camera index")
    outputs = parser.add_argument_group("outputs (at least one; with none, JSON Lines go to stdout)")
    outputs.add_argument("--out", type=Path, help="folder for annotated images and videos")
    outputs.add_argument("--video-format", choices=tuple(VIDEO_FORMATS), default="browser",
                         help="annotated videos: 'browser' (default: H.264 MP4 when this OpenCV can write it, "
                         "else VP8 WebM; both play in browsers) or 'mp4v' (faster to write; players such as "
                         "VLC only)")
    outputs.add_argument("--jsonl", metavar="PATH", help="detections as JSON Lines, one line per image/frame ('-' = stdout)")
    outputs.add_argument("--coco", metavar="PATH", help="detections as a COCO results JSON (needs image ids)")
    outputs.add_argument("--annotations", metavar="JSON",
                         help="COCO instances file giving image ids (by file name) and categories for --coco")
    outputs.add_argument("--category-map", choices=("coco80", "names", "identity"),
                         help="class id → COCO category id for --coco (default coco80 for 80-class models)")
    thresholds = parser.add_argument_group("thresholds (per request; the predictor's defaults when omitted)")
    defaults = DetectParams()
    thresholds.add_argument("--conf", type=unit_interval,
                            help=f"confidence threshold (predictor default {defaults.confidence:g})")
    thresholds.add_argument("--iou", type=unit_interval, help=f"NMS IoU threshold (predictor default {defaults.iou:g})")
    thresholds.add_argument("--max-det", type=positive_int,
                            help=f"maximum detections per image (predictor default {defaults.max_detections})")
    thresholds.add_argument("--classes", help="only these classes: names or ids, comma-separated (person,car or 0,2)")
    thresholds.add_argument("--agnostic", action="store_true", help="class-agnostic NMS")
    parser.add_argument("--max-frames", type=positive_int, help="stop each video / camera after this many frames")
    add_target_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_target_arguments(args)
    if not (args.out or args.jsonl or args.coco):
        args.jsonl = "-"
    if args.annotations and not args.coco:
        raise CliError("--annotations gives image ids for --coco; add --coco PATH")
    annotations = None
    if args.annotations:
        try:
            annotations = json.loads(Path(args.annotations).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CliError(f"cannot read --annotations {args.annotations}: {error}") from None

    sources, failures = expand(args.inputs, warn)
    if not sources:
        raise CliError("nothing to do: no readable inputs", exit_code=EXIT_PARTIAL)

    image_ids = ImageIds(annotations)
    if args.coco:
        for source in sources:
            CocoWriter(args.coco, image_ids, int).check(source)
    client = make_client(args)
    writers = []
    try:
        classes = parse_classes(args.classes)
        if classes and client.names is not None:
            classes = tuple(resolve_class(item, client.names) for item in classes)
        params = Params(confidence=args.conf, iou=args.iou, max_detections=args.max_det, classes=classes,
                        agnostic=args.agnostic)

        coco = None
        if args.coco:
            mode = args.category_map or default_category_map(client.names)
            coco = CocoWriter(args.coco, image_ids, category_mapper(mode, client.names, annotations))
        if args.out:
            writers.append(AnnotatedWriter(args.out, args.video_format))
        if args.jsonl:
            writers.append(JsonlWriter(args.jsonl))
        if coco is not None:
            writers.append(coco)

        def on_result(frame, result) -> None:  # noqa: ANN001
            for writer in writers:
                writer.write(frame, result)

        def on_skip(frame, message: str) -> None:  # noqa: ANN001
            warn(f"skipped {message}")

        total = count_frames(sources, args.max_frames)
        started = time.perf_counter()
        frames = iter_frames(sources, warn, max_frames=args.max_frames)
        with pipeline.StopFlag() as stop, progress_bar(total, args.quiet, "detect") as bar:
            try:
                outcome = pipeline.run(frames, client, params, on_result, on_skip, batch=args.batch,
                                       concurrency=args.concurrency, stop=stop, progress=bar)
            finally:
                frames.close()
        elapsed = time.perf_counter() - started
    finally:
        errors = []
        for writer in writers:
            try:
                writer.close()
            except Exception as error:  # noqa: BLE001 - close every writer, report the first problem
                errors.append(error)
        client.close()
        if errors and sys.exc_info()[0] is None:
            raise CliError(f"cannot finish writing the output: {errors[0]}")

    if not args.quiet:
        rate = outcome.frames / elapsed if elapsed > 0 else 0.0
        written = []
        if args.out:
            written.append(str(args.out) + "/")
        if args.jsonl and args.jsonl != "-":
            written.append(args.jsonl)
        if args.coco:
            written.append(args.coco)
        print(
            f"{outcome.frames} frames, {outcome.detections} detections in {elapsed:.1f} s "
            f"({rate:.2f} frames/s) via {client.description}"
            + (f"; {outcome.skipped + failures} inputs skipped" if outcome.skipped + failures else "")
            + (f"; wrote {', '.join(written)}" if written else ""),
            file=sys.stderr,
        )
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if (outcome.skipped or failures) else EXIT_OK
