"""Fixtures for the CLI tests: one real predictor (yolov7-tiny random weights, input 640 so that ``eval``
through the service uses the official letterbox), the CLI run as a subprocess, and generated videos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.tools.predictor_server import PredictorServer, predictor_server

REPO_ROOT = Path(__file__).resolve().parents[2]
# --engine torch: served answers are compared with the CLI's --local torch Detector, in order
SERVER_ARGS = ["--input_size", "640", "--max_batch_size", "8", "--max_batch_delay_ms", "50", "--engine", "torch"]


@pytest.fixture(scope="session")
def tiny_weights(yolo_fixtures: Path) -> Path:
    return yolo_fixtures / "yolov7-tiny-random.pt"


@pytest.fixture(scope="session")
def fixture_images(yolo_fixtures: Path) -> Path:
    return yolo_fixtures / "images"


@pytest.fixture(scope="session")
def cli_server(tiny_weights: Path) -> PredictorServer:
    with predictor_server(tiny_weights, extra_args=SERVER_ARGS) as running:
        yield running


def cli_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "yolo_cli", *(str(arg) for arg in args)]


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``yolo-v7 ARGS`` as a subprocess; stdout/stderr captured as text."""
    return subprocess.run(cli_command(*args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def read_jsonl(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") or not text, "the last JSON line is incomplete"
    return [json.loads(line) for line in text.splitlines()]


def make_video(path: Path, image: Path, *, frames: int = 12, fps: float = 15.0, size: tuple[int, int] = (320, 240),
               shift: int = 6) -> None:
    """``frames`` frames of ``image`` resized to ``size`` (w, h), shifted ``shift`` px right per frame (mp4v)."""
    base = cv2.resize(cv2.imread(str(image)), size, interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for index in range(frames):
        writer.write(np.roll(base, shift * index, axis=1))
    writer.release()


def read_video(path: Path) -> tuple[list[np.ndarray], float, tuple[int, int]]:
    """All frames (BGR), the frame rate and (width, height)."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"cannot open {path}"
    fps = capture.get(cv2.CAP_PROP_FPS)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = []
    while True:
        ok_, frame = capture.read()
        if not ok_:
            break
        frames.append(frame)
    capture.release()
    return frames, fps, size


def scrape_batches(url: str) -> tuple[float, float]:
    """(forwards, images) so far, from the predictor's ``yolo_batch_size`` histogram."""
    import httpx

    count = total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("yolo_batch_size_count"):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith("yolo_batch_size_sum"):
            total = float(line.rsplit(" ", 1)[1])
    return count, total
