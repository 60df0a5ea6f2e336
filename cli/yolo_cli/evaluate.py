"""``yolo-v7 eval``: COCO AP of the model on an annotated image set, with pycocotools.

Detection runs at the official YOLOv7 evaluation settings (confidence 0.001, NMS IoU 0.65, at most 300
detections per image, square 640 letterbox) through the predictor or in-process; the model's class ids
are mapped to the annotations' category ids — by name when the categories have names, checked against
them otherwise (:mod:`.category_scheme`: ids 1..90, 0..79, 1..80 or any numbering), and
``COCOeval`` computes AP over IoU 0.50:0.95, AP50, AP75 and AP by object size.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import pipeline
from .category_scheme import MAPS, choose_category_map, foreign_results
from .clients import Params
from .common import (
    add_target_arguments,
    check_target_arguments,
    make_client,
    positive_int,
    progress_bar,
    unit_interval,
    warn,
)
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, CliError
from .outputs import category_mapper, coco_results
from .sources import Frame, Source

OFFICIAL_CONF = 0.001
OFFICIAL_IOU = 0.65
OFFICIAL_MAX_DET = 300
OFFICIAL_INPUT_SIZE = 640

# (key, COCOeval.stats index, description)
METRICS: tuple[tuple[str, int, str], ...] = (
    ("AP", 0, "IoU 0.50:0.95, all areas"),
    ("AP50", 1, "IoU 0.50"),
    ("AP75", 2, "IoU 0.75"),
    ("AP_small", 3, "area < 32²"),
    ("AP_medium", 4, "32² ≤ area < 96²"),
    ("AP_large", 5, "area ≥ 96²"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="COCO AP on an annotated image set (pycocotools)",
        description="Run detection on the images of a COCO instances file at the official YOLOv7 evaluation "
        "settings and report AP, AP50, AP75 and AP small/medium/large.",
    )
    parser.add_argument("--images", type=Path, help="folder holding the annotated images (not needed with --detections)")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON (ground truth)")
    parser.add_argument("--json", metavar="PATH", help="also write the metrics as JSON ('-' = stdout, no table)")
    parser.add_argument("--save-detections", metavar="PATH", help="write the detections as a COCO results JSON")
    parser.add_argument("--detections", metavar="PATH",
                        help="evaluate this COCO results JSON instead of running the model")
    parser.add_argument("--category-map", choices=MAPS,
                        help="class id → category id (default: by the categories' names; refused when it "
                        "contradicts them)")
    parser.add_argument("--conf", type=unit_interval, default=OFFICIAL_CONF,
                        help=f"confidence threshold (default {OFFICIAL_CONF}, the official setting)")
    parser.add_argument("--iou", type=unit_interval, default=OFFICIAL_IOU,
                        help=f"NMS IoU threshold (default {OFFICIAL_IOU})")
    parser.add_argument("--max-det", type=positive_int, default=OFFICIAL_MAX_DET,
                        help=f"maximum detections per image (default {OFFICIAL_MAX_DET})")
    parser.add_argument("--verbose", action="store_true", help="show pycocotools' own report as well")
    add_target_arguments(parser, local_input_size=OFFICIAL_INPUT_SIZE)
    parser.set_defaults(handler=run)


def load_annotations(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CliError(f"cannot read --annotations {path}: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise CliError(f"{path} is not a COCO instances file (needs 'images', 'annotations' and 'categories')")
    data.setdefault("categories", [])
    for annotation in data["annotations"]:  # fields COCOeval needs that hand-made files often lack
        annotation.setdefault("iscrowd", 0)
        if "area" not in annotation and "bbox" in annotation:
            annotation["area"] = float(annotation["bbox"][2]) * float(annotation["bbox"][3])
    return data


def coco_metrics(annotations: dict[str, Any], results: list[dict[str, Any]], image_ids: list[int],
                 verbose: bool = False) -> dict[str, float | None]:
    """COCOeval (bbox) → {AP, AP50, AP75, AP_small, AP_medium, AP_large}; None where no ground truth
    falls in that range (pycocotools' -1)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    sink = sys.stderr if verbose else io.StringIO()
    with contextlib.redirect_stdout(sink):
        ground_truth = COCO()
        ground_truth.dataset = annotations
        ground_truth.createIndex()
        if not results:
            stats = np.zeros(12) if ground_truth.getAnnIds(imgIds=image_ids) else -np.ones(12)
        else:
            detections = ground_truth.loadRes(results)
            evaluator = COCOeval(ground_truth, detections, "bbox")
            evaluator.params.imgIds = sorted(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats = evaluator.stats
    return {key: (None if stats[index] < 0 else float(stats[index])) for key, index, _ in METRICS}


def format_table(metrics: dict[str, float | None], header: str) -> str:
    lines = [header, f"{'metric':<10} {'value':>6}", f"{'-' * 10} {'-' * 6}"]
    for key, _, description in METRICS:
        value = metrics[key]
        shown = "n/a" if value is None else f"{value:.4f}"
        lines.append(f"{key:<10} {shown:>6}  {description}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not args.detections:
        check_target_arguments(args)
    if not args.detections and args.images is None:
        raise CliError("eval needs --images DIR (or --detections results.json)")
    annotations = load_annotations(args.annotations)
    images = annotations["images"]
    failures = 0
    frames: list[Frame] = []
    ids: list[int] = [int(image["id"]) for image in images] if args.detections else []
    for image in [] if args.detections else images:
        path = args.images / image["file_name"]
        if not path.is_file():
            warn(f"skipped image id {image['id']}: {path} not found")
            failures += 1
            continue
        source = Source("image", str(path), path=path)
        frames.append(Frame(len(frames), source, extra={"image_id": int(image["id"])}))
        ids.append(int(image["id"]))
    if not frames and not args.detections:
        raise CliError(f"none of the {len(images)} images of {args.annotations} is in {args.images}")

    evaluated: list[int] = []
    interrupted = False
    started = time.perf_counter()
    description = "detections file"
    if args.detections:
        try:
            results = json.loads(Path(args.detections).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CliError(f"cannot read --detections {args.detections}: {error}") from None
        if not isinstance(results, list):
            raise CliError(f"--detections {args.detections} is not a COCO results list")
        known = set(ids)
        results = [item for item in results if item.get("image_id") in known]
        mismatch = foreign_results(results, annotations)
        if mismatch:
            warn(mismatch)
        evaluated = ids
        description = f"detections from {args.detections}"
    else:
        client = make_client(args)
        try:
            served = (getattr(client, "metadata", None) or {}).get("parameters", {}).get("input_size")
            if served and int(served) != OFFICIAL_INPUT_SIZE:
                warn(f"the predictor letterboxes to {served}, not {OFFICIAL_INPUT_SIZE}: the official evaluation "
                     f"runs at {OFFICIAL_INPUT_SIZE} (start it with --input_size {OFFICIAL_INPUT_SIZE})")
            mode, how = choose_category_map(args.category_map, client.names, annotations)
            if not args.quiet:
                print(how, file=sys.stderr)
            category = category_mapper(mode, client.names, annotations)
            params = Params(confidence=args.conf, iou=args.iou, max_detections=args.max_det)
            results = []

            def on_result(frame: Frame, result) -> None:  # noqa: ANN001
                results.extend(coco_results(frame.extra["image_id"], result, category))
                evaluated.append(frame.extra["image_id"])

            def on_skip(frame: Frame, message: str) -> None:
                nonlocal failures
                failures += 1
                warn(f"skipped {message}")

            with pipeline.StopFlag() as stop, progress_bar(len(frames), args.quiet, "eval") as bar:
                outcome = pipeline.run(frames, client, params, on_result, on_skip, batch=args.batch,
                                       concurrency=args.concurrency, stop=stop, progress=bar)
            interrupted = outcome.interrupted
            description = client.description
        finally:
            client.close()
        if args.save_detections:
            Path(args.save_detections).write_text(json.dumps(results), encoding="utf-8")
    elapsed = time.perf_counter() - started
    if not evaluated:
        raise CliError("no image was evaluated", exit_code=EXIT_INTERRUPTED if interrupted else EXIT_PARTIAL)

    metrics = coco_metrics(annotations, results, evaluated, verbose=args.verbose)
    report = {
        "metrics": metrics,
        "images": len(evaluated),
        "annotations": sum(1 for a in annotations["annotations"] if a["image_id"] in set(evaluated)),
        "detections": len(results),
        "settings": None if args.detections else {"conf": args.conf, "iou": args.iou, "max_det": args.max_det},
        "source": description,
        "seconds": round(elapsed, 3),
        "complete": not interrupted and len(evaluated) == len(images),
    }
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    if args.json != "-":
        settings = "" if args.detections else f" (conf {args.conf:g}, iou {args.iou:g}, max_det {args.max_det})"
        header = (f"{len(evaluated)} images, {report['annotations']} objects, {len(results)} detections"
                  f"{settings} via {description}")
        print(format_table(metrics, header))
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if failures else EXIT_OK
