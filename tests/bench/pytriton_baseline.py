"""Baseline for :mod:`tests.bench.frontend_bench`: Triton's front end (via PyTriton) doing our front end's work.

A benchmark contender only, never part of the product. Run in an interpreter with ``nvidia-pytriton``
(its wheel carries tritonserver and pins its own dependencies, so it lives in a venv of its own)::

    python -m tests.bench.pytriton_baseline --http_port 8000 --grpc_port 8001 --stub_ms 2

Model ``yolov7``: input ``images`` (BYTES, one per request; raw JPEG, or base64 text as our v2 JSON
carries it), output ``num_detections`` (INT32). Per batch (Triton's dynamic batcher, up to
``--max_batch_size``): decode each JPEG (OpenCV, RGB), letterbox it to 640 x 640 (resize keeping the
aspect ratio, pad with 114), make the float network input (NCHW view of an NHWC float32 buffer kept
between batches, / 255: as ours does on the CPU, ~0.5 ms per 640 x 640 image; a fresh buffer per batch
would cost ~2.5 ms in page faults), sleep ``--stub_ms`` (the same stubbed forward as ours), answer 0.
No torch here: the letterbox is OpenCV's resize + copyMakeBorder, the same two calls ours makes.
"""

from __future__ import annotations

import argparse
import base64
import time

import numpy as np

INPUT_SIZE = 640
PAD = 114


def _letterbox(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    import cv2

    height, width = image.shape[:2]
    ratio = min(size / height, size / width)
    new_w, new_h = round(width * ratio), round(height * ratio)
    if (new_h, new_w) != (height, width):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD, PAD, PAD))


def _decode(data: bytes) -> np.ndarray:
    import cv2

    if not data.startswith(b"\xff\xd8"):  # base64 text (JSON)
        data = base64.b64decode(data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("cannot decode the image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def main() -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--http_port", type=int, required=True)
    parser.add_argument("--grpc_port", type=int, required=True)
    parser.add_argument("--stub_ms", type=float, default=2.0)
    parser.add_argument("--max_batch_size", type=int, default=32)
    args = parser.parse_args()

    buffer = np.empty((0, INPUT_SIZE, INPUT_SIZE, 3), np.float32)  # batches run one at a time: reused

    @batch
    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal buffer
        if len(buffer) < len(images):
            buffer = np.empty((len(images), INPUT_SIZE, INPUT_SIZE, 3), np.float32)
        rows = buffer[:len(images)]
        for row, image in zip(rows, images, strict=True):  # the network input, as ours makes it
            np.copyto(row, _letterbox(_decode(bytes(image[0]))), casting="unsafe")
        rows /= np.float32(255)
        network_input = rows.transpose(0, 3, 1, 2)
        time.sleep(args.stub_ms / 1000.0)
        del network_input
        return {"num_detections": np.zeros((len(images), 1), np.int32)}

    config = TritonConfig(http_port=args.http_port, grpc_port=args.grpc_port, allow_metrics=False, log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="yolov7",
            infer_func=infer,
            inputs=[Tensor(name="images", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="num_detections", dtype=np.int32, shape=(1,))],
            config=ModelConfig(max_batch_size=args.max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=5000)),
        )
        triton.serve()


if __name__ == "__main__":
    main()
