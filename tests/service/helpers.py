"""Helpers shared by the service tests (constants of the test server, request builders, comparisons)."""

from __future__ import annotations

import base64

import httpx
import numpy as np

from predictor.images import decode_image
from tests.tools.predictor_server import PredictorServer

INPUT_SIZE = 320
DEFAULT_CONF = 0.05  # given by env; the random tiny checkpoint gives many detections here
MAX_IMAGES = 8
MAX_REQUEST_BYTES = 3_000_000
MAX_IMAGE_PIXELS = 4_000_000
MAX_BATCH = 8


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decode(data: bytes) -> np.ndarray:
    return decode_image(data, MAX_IMAGE_PIXELS)


def direct(detector, image: np.ndarray, *, confidence: float = DEFAULT_CONF, **params):
    """The Detector's own answer for one image: the server's defaults here, overridden by ``params``
    (the other :class:`~predictor.settings.DetectParams` fields)."""
    from predictor.settings import DetectParams

    [det] = detector.detect([image], DetectParams(confidence=confidence, **params))
    return det


def assert_same_detections(boxes, scores, classes, expected, *, context: str = "") -> None:
    """Served detections (arrays) equal the Detector's own (batch composition may move the last bits)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    assert len(expected) > 0, f"{context}: the reference found nothing; the comparison would be vacuous"
    assert len(scores) == len(expected), f"{context}: {len(scores)} detections served, {len(expected)} expected"
    np.testing.assert_array_equal(classes, expected.classes, err_msg=context)
    np.testing.assert_allclose(scores, expected.scores, atol=2e-4, err_msg=context)
    np.testing.assert_allclose(boxes, expected.boxes, atol=0.05, err_msg=context)


def v2_outputs(response_json: dict) -> dict[str, np.ndarray]:
    """v2 JSON response → arrays by output name (shaped)."""
    out = {}
    for output in response_json["outputs"]:
        data = output["data"]
        dtype = object if output["datatype"] == "BYTES" else None
        out[output["name"]] = np.asarray(data, dtype=dtype).reshape(output["shape"])
    return out


def v2_request(*encoded: bytes, parameters: dict | None = None, name: str = "images") -> dict:
    body: dict = {"inputs": [{"name": name, "shape": [len(encoded)], "datatype": "BYTES",
                              "data": [b64(item) for item in encoded]}]}
    if parameters:
        body["parameters"] = parameters
    return body


def scrape(http: httpx.Client, server: PredictorServer) -> dict[str, float]:
    """``/metrics`` → {"name{labels}": value} (Prometheus text format, no comments)."""
    text = http.get(f"{server.http_url}/metrics").text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values
