"""Inputs: image files, folders, globs, video files and camera indices, expanded into a stream of frames.

``expand`` turns the command-line arguments into :class:`Source` objects (problems become warnings, not
exceptions); ``iter_frames`` yields :class:`Frame` objects in input order. Image files are read lazily
(in a worker thread, see ``pipeline``); video and camera frames are grabbed here, in order.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import UnreadableInput

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm", ".dib"}
)
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts"}
)
GLOB_CHARS = frozenset("*?[")
DEFAULT_CAMERA_FPS = 30.0


@dataclass(frozen=True)
class Source:
    """One input: ``kind`` is ``image``, ``video`` or ``camera``; ``name`` is what outputs call it."""

    kind: str
    name: str
    path: Path | None = None
    camera: int | None = None


@dataclass
class Frame:
    """One unit of work, in input order. ``image`` holds the pixels once loaded, BGR uint8 as OpenCV
    reads and writes them (converted to RGB only for the in-process model); ``data`` the encoded bytes
    (the file's own bytes for image files, so the predictor decodes exactly what is on disk)."""

    index: int
    source: Source
    frame: int | None = None  # frame number within a video / camera stream, None for images
    image: np.ndarray | None = None
    data: bytes | None = None
    fps: float | None = None  # the source's frame rate (videos and cameras)
    last: bool = False  # the last frame of its video (lets the video writer close early)
    extra: dict = field(default_factory=dict)


def is_camera(argument: str) -> bool:
    return argument.isdigit() and not os.path.exists(argument)


def expand(arguments: Sequence[str], warn: Callable[[str], None]) -> tuple[list[Source], int]:
    """Command-line inputs → sources, in order. Returns (sources, number of arguments that failed)."""
    sources: list[Source] = []
    failures = 0
    for argument in arguments:
        if is_camera(argument):
            sources.append(Source("camera", f"camera{argument}", camera=int(argument)))
            continue
        path = Path(argument)
        if path.is_dir():
            found = [
                child
                for child in sorted(path.iterdir())
                if child.is_file() and child.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
            ]
            if not found:
                warn(f"no images or videos in folder {argument}")
                failures += 1
            sources.extend(_file_source(child) for child in found)
        elif path.is_file():
            sources.append(_file_source(path))
        elif GLOB_CHARS & set(argument):
            matches = [Path(match) for match in sorted(glob.glob(argument, recursive=True))]
            matches = [match for match in matches if match.is_file()]
            if not matches:
                warn(f"no files match {argument!r}")
                failures += 1
            sources.extend(_file_source(match) for match in matches)
        else:
            warn(f"skipped {argument}: no such file or folder")
            failures += 1
    return sources, failures


def _file_source(path: Path) -> Source:
    kind = "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"
    return Source(kind, str(path), path=path)


def count_frames(sources: Sequence[Source], max_frames: int | None = None) -> int | None:
    """Total frames, for the progress bar; None when unknown (a camera without ``max_frames``)."""
    total = 0
    for source in sources:
        if source.kind == "image":
            total += 1
        elif source.kind == "video":
            capture = cv2.VideoCapture(str(source.path))
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
            capture.release()
            total += max(count, 0) if max_frames is None else min(max(count, 0), max_frames)
        elif max_frames is not None:
            total += max_frames
        else:
            return None
    return total


def iter_frames(
    sources: Sequence[Source], warn: Callable[[str], None], *, max_frames: int | None = None
) -> Iterator[Frame]:
    """Yield frames in order. Image files come unloaded (``load_image`` reads them); an unopenable
    video or camera is reported through ``warn`` and yields a Frame with ``extra['error']``."""
    index = 0
    for source in sources:
        if source.kind == "image":
            yield Frame(index, source)
            index += 1
            continue
        target = str(source.path) if source.kind == "video" else source.camera
        capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            capture.release()
            yield Frame(index, source, extra={"error": f"cannot open {source.kind} {source.name}"})
            index += 1
            continue
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        if not fps > 0:
            fps = DEFAULT_CAMERA_FPS
        try:
            number = 0
            ok, bgr = capture.read()
            if not ok:
                yield Frame(index, source, extra={"error": f"cannot read a frame from {source.name}"})
                index += 1
                continue
            while ok:
                if max_frames is not None and number >= max_frames:
                    break
                upcoming_ok, upcoming = capture.read()
                last = not upcoming_ok or (max_frames is not None and number + 1 >= max_frames)
                yield Frame(index, source, frame=number, image=bgr, fps=fps, last=last)
                index += 1
                number += 1
                ok, bgr = upcoming_ok, upcoming
        finally:
            capture.release()


JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_image(frame: Frame, *, need_bytes: bool, jpeg_quality: int = 95) -> None:
    """Fill ``frame.image`` (BGR) and, if ``need_bytes``, ``frame.data`` (JPEG or PNG bytes).

    Image files are decoded here so that an unreadable file is caught (and named) on the client. Their
    own bytes are sent when they are JPEG or PNG; other formats (BMP, TIFF, ...) are re-encoded as PNG
    (lossless). Video frames are encoded as JPEG."""
    if "error" in frame.extra:
        raise UnreadableInput(frame.extra["error"])
    if frame.image is None:
        path = frame.source.path
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise UnreadableInput(f"cannot read {frame.source.name}: {error.strerror or error}") from None
        bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
        if bgr is None:
            raise UnreadableInput(f"cannot decode {frame.source.name}: not an image OpenCV can read")
        frame.image = bgr
        if need_bytes:
            if raw.startswith(JPEG_MAGIC) or raw.startswith(PNG_MAGIC):
                frame.data = raw
            else:
                frame.data = _encode(bgr, ".png")
    elif need_bytes and frame.data is None:
        frame.data = _encode(frame.image, ".jpg", [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality])


def _encode(bgr: np.ndarray, extension: str, params: Sequence[int] = ()) -> bytes:
    ok, buffer = cv2.imencode(extension, bgr, list(params))
    if not ok:
        raise UnreadableInput(f"cannot encode a frame as {extension}")
    return buffer.tobytes()
