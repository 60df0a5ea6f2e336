"""Output writers, fed in input order by ``pipeline``: annotated images / videos, JSON Lines, COCO results.

Each writer leaves a complete file after every call (JSONL flushes per line; a video is a valid file as
soon as ``close`` releases the writer) so an interrupted run keeps everything finished so far.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from .clients import Result
from .coco_categories import COCO80_TO_91
from .errors import CliError
from .sources import Frame, Source

# 20 well-separated BGR colours; class i uses PALETTE[i % 20].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207),
    (10, 249, 72), (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0),
    (168, 153, 44), (255, 194, 0), (147, 69, 52), (255, 115, 100), (236, 24, 0),
    (255, 56, 132), (133, 0, 82), (255, 56, 203), (200, 149, 255), (199, 55, 255),
)  # fmt: skip


# Annotated videos: (suffix, fourcc, description), most preferred first; the first one this OpenCV build
# can write is used. Browsers play H.264 MP4 and VP8 WebM; they do not play the MPEG-4 part 2 ("mp4v") or
# MJPG AVI that OpenCV writes most easily. The opencv-python(-headless) wheels have no H.264 encoder (only
# a V4L2 hardware one), so with them the output is VP8 WebM; an OpenCV built against a full FFmpeg writes
# H.264 MP4.
VIDEO_FORMATS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "browser": (("mp4", "avc1", "H.264 MP4"), ("webm", "VP80", "VP8 WebM")),
    "mp4v": (("mp4", "mp4v", "MPEG-4 part 2 MP4, fast to write, not playable in browsers"),),
}


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """FFmpeg and OpenCV print to file descriptor 2 when a codec is missing or a tag is remapped."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _open_writer(path: str, fourcc: str, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    with _quiet_stderr():
        return cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, size)


@functools.cache
def video_format(kind: str = "browser") -> tuple[str, str, str]:
    """(suffix, fourcc, description) of the first format of ``VIDEO_FORMATS[kind]`` this OpenCV writes."""
    with tempfile.TemporaryDirectory(prefix="yolo-v7-codec-") as folder:
        for suffix, fourcc, description in VIDEO_FORMATS[kind]:
            writer = _open_writer(os.path.join(folder, f"probe.{suffix}"), fourcc, 10.0, (64, 48))
            usable = writer.isOpened()
            if usable:
                writer.write(np.zeros((48, 64, 3), np.uint8))
            with _quiet_stderr():
                writer.release()
            if usable:
                return suffix, fourcc, description
    raise CliError(f"this OpenCV build can write none of: {', '.join(d for _, _, d in VIDEO_FORMATS[kind])}")


def open_video(stem_path: Path, fps: float, size: tuple[int, int], kind: str = "browser") -> tuple[cv2.VideoWriter, Path]:
    """A video writer for ``stem_path`` + the suffix of :func:`video_format`; (writer, path)."""
    suffix, fourcc, _ = video_format(kind)
    path = stem_path.with_name(f"{stem_path.name}.{suffix}")
    writer = _open_writer(str(path), fourcc, float(fps), size)
    if not writer.isOpened():
        raise CliError(f"cannot open a video writer for {path}")
    return writer, path


def draw(image_bgr: np.ndarray, result: Result) -> np.ndarray:
    """Boxes and "label score" tags drawn on a copy of the (BGR) image."""
    canvas = image_bgr.copy()
    height, width = canvas.shape[:2]
    thickness = max(1, round((height + width) / 2 * 0.003))
    font_scale = max(0.35, thickness / 3)
    for box, score, cls, label in zip(result.boxes, result.scores, result.classes, result.labels, strict=True):
        colour = PALETTE[int(cls) % len(PALETTE)]
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        text = f"{label} {float(score):.2f}"
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, max(1, thickness // 2))
        top = y1 - th - baseline - 2 if y1 - th - baseline - 2 >= 0 else y1
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + baseline + 2), colour, -1)
        cv2.putText(canvas, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (255, 255, 255), max(1, thickness // 2), cv2.LINE_AA)
    return canvas


class AnnotatedWriter:
    """``--out DIR``: images as DIR/<name>, videos as DIR/<stem>.<webm|mp4> (see ``VIDEO_FORMATS``) with
    the source's frame rate and size; camera streams as DIR/camera<N>.<webm|mp4>."""

    def __init__(self, out_dir: Path, video_kind: str = "browser") -> None:
        self.out_dir = out_dir
        self.video_kind = video_kind
        out_dir.mkdir(parents=True, exist_ok=True)
        self._names: dict[int, Path] = {}  # by id(source): the same file given twice gets two outputs
        self._used: set[str] = set()
        self._video: cv2.VideoWriter | None = None
        self._video_source: Source | None = None
        self.written: list[Path] = []

    def _path_for(self, source: Source) -> Path:
        if id(source) in self._names:
            return self._names[id(source)]
        if source.kind == "image":
            base = source.path.name
            if source.path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"):
                base = source.path.stem + ".png"
        elif source.kind == "video":
            base = f"{source.path.stem}.{video_format(self.video_kind)[0]}"
        else:
            base = f"{source.name}.{video_format(self.video_kind)[0]}"
        stem, suffix = os.path.splitext(base)
        name, counter = base, 1
        while name in self._used:
            counter += 1
            name = f"{stem}_{counter}{suffix}"
        self._used.add(name)
        self._names[id(source)] = self.out_dir / name
        return self._names[id(source)]

    def write(self, frame: Frame, result: Result) -> None:
        canvas = draw(frame.image, result)
        path = self._path_for(frame.source)
        if frame.source.kind == "image":
            if not cv2.imwrite(str(path), canvas):
                raise CliError(f"cannot write {path}")
            self.written.append(path)
            return
        if self._video_source is not frame.source:
            self._close_video()
            height, width = canvas.shape[:2]
            writer, path = open_video(path.with_suffix(""), float(frame.fps or 30.0), (width, height),
                                      self.video_kind)
            self._video, self._video_source = writer, frame.source
            self.written.append(path)
        self._video.write(canvas)
        if frame.last:
            self._close_video()

    def _close_video(self) -> None:
        if self._video is not None:
            self._video.release()
        self._video, self._video_source = None, None

    def close(self) -> None:
        self._close_video()


def _round(values: np.ndarray, digits: int) -> list:
    return np.round(values.astype(np.float64), digits).tolist()


def record(frame: Frame, result: Result) -> dict[str, Any]:
    """One JSON Lines record."""
    item: dict[str, Any] = {"file": frame.source.name, "frame": frame.frame}
    if frame.frame is not None and frame.fps:
        item["time"] = round(frame.frame / frame.fps, 3)
    item.update({
        "width": result.width,
        "height": result.height,
        "boxes": _round(result.boxes, 2),
        "scores": _round(result.scores, 5),
        "classes": [int(c) for c in result.classes],
        "labels": list(result.labels),
    })
    return item


class JsonlWriter:
    """``--jsonl PATH`` (``-`` = stdout): one line per image or frame, flushed as it is written."""

    def __init__(self, target: str) -> None:
        self.target = target
        if target == "-":
            self.stream: IO[str] = sys.stdout
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self.stream = open(target, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, frame: Frame, result: Result) -> None:
        self.stream.write(json.dumps(record(frame, result), separators=(",", ":")) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not sys.stdout:
            self.stream.close()


class ImageIds:
    """File name → COCO image id: from an instances JSON (``images[].file_name``) or numeric file stems
    (COCO's own ``000000397133.jpg`` naming)."""

    def __init__(self, annotations: dict[str, Any] | None = None) -> None:
        self.by_name: dict[str, int] = {}
        if annotations is not None:
            for image in annotations.get("images", []):
                self.by_name[os.path.basename(image["file_name"])] = int(image["id"])
                self.by_name[image["file_name"]] = int(image["id"])

    def lookup(self, source: Source) -> int | None:
        if source.path is None:
            return None
        for key in (source.name, source.path.name):
            if key in self.by_name:
                return self.by_name[key]
        stem = source.path.stem
        return int(stem) if stem.isdigit() else None


def category_mapper(mode: str, names: Sequence[str] | None, annotations: dict[str, Any] | None) -> Callable[[int], int]:
    """Model class id → COCO category id. ``coco80``: the standard 80 → 91 table; ``names``: the
    annotation category with the same name; ``identity``: the class id itself."""
    if mode == "coco80":
        if names is not None and len(names) != 80:
            raise CliError(f"--category-map coco80 needs an 80-class model; this one has {len(names)} classes "
                           "(use --category-map names or identity)")
        return lambda cls: COCO80_TO_91[cls]
    if mode == "identity":
        return lambda cls: int(cls)
    if mode == "names":
        if names is None or annotations is None:
            raise CliError("--category-map names needs the model's class names and an annotations file")
        by_name = {cat["name"].lower(): int(cat["id"]) for cat in annotations.get("categories", [])}
        table = {index: by_name.get(name.lower()) for index, name in enumerate(names)}
        missing = [names[i] for i, cid in table.items() if cid is None]
        if len(missing) == len(names):
            raise CliError("--category-map names: no class name of the model appears in the annotations' categories")
        return lambda cls: table.get(int(cls)) if table.get(int(cls)) is not None else -1
    raise CliError(f"unknown --category-map {mode!r} (coco80, names or identity)")


def default_category_map(names: Sequence[str] | None) -> str:
    return "coco80" if names is None or len(names) == 80 else "names"


def coco_results(image_id: int, result: Result, category: Callable[[int], int]) -> list[dict[str, Any]]:
    """Detections of one image as COCO results entries (bbox = x, y, width, height)."""
    out = []
    for box, score, cls in zip(result.boxes.astype(np.float64), result.scores, result.classes, strict=True):
        category_id = category(int(cls))
        if category_id < 0:
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        # full precision: evaluation must see exactly the boxes the model gave (a rounded 0.01 px wide box
        # would no longer match itself)
        out.append({"image_id": image_id, "category_id": category_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score)})
    return out


class CocoWriter:
    """``--coco PATH``: a COCO results list, written (atomically) when the run ends or is interrupted."""

    def __init__(self, target: str, image_ids: ImageIds, category: Callable[[int], int]) -> None:
        self.target = Path(target)
        self.image_ids = image_ids
        self.category = category
        self.results: list[dict[str, Any]] = []

    def check(self, source: Source) -> None:
        if source.kind != "image":
            raise CliError(f"--coco applies to image files, not the {source.kind} {source.name}")
        if self.image_ids.lookup(source) is None:
            raise CliError(
                f"--coco needs an image id for {source.name}: pass --annotations instances.json "
                "(ids by file name) or name the files by their numeric COCO id"
            )

    def write(self, frame: Frame, result: Result) -> None:
        self.results.extend(coco_results(self.image_ids.lookup(frame.source), result, self.category))

    def close(self) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        partial = self.target.with_name(self.target.name + ".partial")
        partial.write_text(json.dumps(self.results), encoding="utf-8")
        os.replace(partial, self.target)
