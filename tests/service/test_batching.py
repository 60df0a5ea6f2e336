"""Dynamic batching in the real server: concurrent clients with distinct images and thresholds each get
exactly their own answer (equal to the Detector run directly), and batches larger than one form."""

from __future__ import annotations

import asyncio

import cv2
import httpx
import numpy as np

from tests.service.helpers import assert_same_detections, decode, direct, scrape, v2_outputs, v2_request

CLIENTS = 12


def _distinct_images(images: dict[str, bytes]) -> list[np.ndarray]:
    """12 images of different shapes and content: crops and flips of the six fixture photos."""
    out = []
    for index in range(CLIENTS):
        rgb = decode(list(images.values())[index % len(images)])
        h, w = rgb.shape[:2]
        top, left = (index * 37) % (h // 4), (index * 53) % (w // 4)
        crop = rgb[top : top + h // 2 + index * 11, left : left + w // 2 + index * 17]
        if index >= len(images):
            crop = crop[:, ::-1]
        out.append(np.ascontiguousarray(crop))
    return out


def _png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


def _batches_over_one(metrics: dict[str, float]) -> float:
    return metrics.get("yolo_batch_size_count", 0.0) - metrics.get('yolo_batch_size_bucket{le="1.0"}', 0.0)


async def test_concurrent_clients_get_their_own_results_and_batches_form(server, detector, images):
    pictures = _distinct_images(images)
    assert len({p.shape for p in pictures}) == CLIENTS  # every client's image differs in shape
    confidences = [round(0.02 + 0.002 * i, 3) for i in range(CLIENTS)]  # and in threshold
    expected = [direct(detector, p, confidence=c) for p, c in zip(pictures, confidences, strict=True)]
    bodies = [v2_request(_png(p), parameters={"confidence": c}) for p, c in zip(pictures, confidences, strict=True)]

    with httpx.Client(timeout=60) as sync:
        before = scrape(sync, server)

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=CLIENTS)) as client:
        async def one(body: dict) -> dict:
            response = await client.post(server.infer_url, json=body)
            assert response.status_code == 200, response.text
            return response.json()

        answers = await asyncio.gather(*(one(body) for body in bodies))

    for index, (answer, exp, picture) in enumerate(zip(answers, expected, pictures, strict=True)):
        out = v2_outputs(answer)
        n = int(out["num_detections"][0])
        assert out["image_sizes"].tolist() == [list(picture.shape[:2])], f"client {index}"
        assert_same_detections(out["detection_boxes"][0, :n], out["detection_scores"][0, :n],
                               out["detection_classes"][0, :n], exp, context=f"client {index}")

    with httpx.Client(timeout=60) as sync:
        after = scrape(sync, server)
    assert _batches_over_one(after) - _batches_over_one(before) >= 1, "no batch of more than one image formed"
    images_batched = after["yolo_batch_size_sum"] - before["yolo_batch_size_sum"]
    assert images_batched == CLIENTS
    assert after["yolo_batch_size_count"] - before["yolo_batch_size_count"] < CLIENTS
