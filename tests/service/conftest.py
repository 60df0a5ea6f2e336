"""One real predictor for the service tests (session scope), plus the core Detector run in-process.

The server runs yolov7-tiny (the random-weight fixture checkpoint) at input size 320 on the CPU, with
some options given by environment variable (``YOLO_*``) to prove that path too.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.service.helpers import (
    DEFAULT_CONF,
    INPUT_SIZE,
    MAX_BATCH,
    MAX_IMAGE_PIXELS,
    MAX_IMAGES,
    MAX_REQUEST_BYTES,
)
from tests.tools.predictor_server import PredictorServer, predictor_server

SERVER_ARGS = [
    "--input_size", str(INPUT_SIZE),
    "--max_batch_size", str(MAX_BATCH),
    "--max_batch_delay_ms", "20",
    "--max_request_bytes", str(MAX_REQUEST_BYTES),
    "--max_image_pixels", str(MAX_IMAGE_PIXELS),
]
SERVER_ENV = {
    "YOLO_ENGINE": "torch",  # compared with the in-process torch Detector; other engines: test_engines.py
    "YOLO_CONF_THRESHOLD": str(DEFAULT_CONF),
    "YOLO_MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES),
}


@pytest.fixture(scope="session")
def tiny_weights(yolo_fixtures: Path) -> Path:
    return yolo_fixtures / "yolov7-tiny-random.pt"


@pytest.fixture(scope="session")
def server(tiny_weights: Path) -> PredictorServer:
    with predictor_server(tiny_weights, extra_args=SERVER_ARGS, env=SERVER_ENV) as running:
        yield running


@pytest.fixture(scope="session")
def detector(tiny_weights: Path):
    from predictor.engine import Detector

    return Detector.from_weights(tiny_weights, device="cpu", input_size=INPUT_SIZE)


@pytest.fixture(scope="session")
def images(yolo_fixtures: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted((yolo_fixtures / "images").glob("*.jpg"))}


@pytest.fixture()
def http(server: PredictorServer):
    with httpx.Client(timeout=120.0) as client:
        yield client
