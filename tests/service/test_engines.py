"""The real predictor answers the same with every CPU engine (``--engine``): REST v1 and v2, gRPC,
per-request thresholds and dynamic batching, each compared with the torch Detector run in-process.

One server per engine (yolov7-tiny at 320, the service tests' settings), exported once into the run's
engine cache. Matching is order-insensitive (equal scores may swap places between engines) with fp32
tolerances: scores within 1e-3, boxes within 0.5 original-image px (0.1 input px at 320 scaled back to
a 1080-px photo), >= 99 % of the reference found (tests/unit/test_nms_parity.py's rule).
"""

from __future__ import annotations

import asyncio
import importlib.util

import grpc
import httpx
import numpy as np
import pytest
import torch
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kserve.protocol.infer_type import serialize_byte_tensor

from tests.service.conftest import SERVER_ARGS, SERVER_ENV
from tests.service.helpers import b64, decode, direct, scrape, v2_outputs, v2_request
from tests.tools.predictor_server import predictor_server
from tests.unit.test_nms_parity import assert_parity

ENGINES = [e for e in ("onnxruntime", "openvino") if importlib.util.find_spec(e) is not None] + ["auto"]


@pytest.fixture(scope="module", params=ENGINES)
def engine_server(request, tiny_weights):
    env = {**SERVER_ENV, "YOLO_ENGINE": request.param}
    with predictor_server(tiny_weights, extra_args=SERVER_ARGS, env=env) as running:
        yield request.param, running


def _assert_same(boxes, scores, classes, expected, what: str) -> None:
    ours = torch.from_numpy(np.concatenate([np.asarray(boxes, np.float32).reshape(-1, 4),
                                            np.asarray(scores, np.float32).reshape(-1, 1),
                                            np.asarray(classes, np.float32).reshape(-1, 1)], 1))
    gold = torch.from_numpy(np.concatenate([expected.boxes, expected.scores[:, None],
                                            expected.classes[:, None].astype(np.float32)], 1))
    assert gold.shape[0] > 0, f"{what}: the reference found nothing; the comparison would be vacuous"
    assert_parity(ours, gold, what, box_tol=0.5)


def _assert_v2_like_detector(out: dict, pictures, detector, what: str, **params) -> None:
    """Each image of a decoded v2 answer (``v2_outputs``) equals the torch Detector on that picture."""
    for i, data in enumerate(pictures):
        n = int(out["num_detections"][i])
        _assert_same(out["detection_boxes"][i, :n], out["detection_scores"][i, :n], out["detection_classes"][i, :n],
                     direct(detector, decode(data), **params), f"{what} image {i}")


def _grpc_first_image(response) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, scores, classes) of the first image of a gRPC ModelInfer answer (raw output contents)."""
    raw = dict(zip([o.name for o in response.outputs], response.raw_output_contents, strict=True))
    n = int(np.frombuffer(raw["num_detections"], np.int32)[0])
    return (np.frombuffer(raw["detection_boxes"], np.float32).reshape(-1, 4)[:n],
            np.frombuffer(raw["detection_scores"], np.float32)[:n],
            np.frombuffer(raw["detection_classes"], np.int32)[:n])


def test_every_protocol_answers_like_the_torch_detector(engine_server, detector, images):
    engine, server = engine_server
    bus, zidane = images["bus"], images["zidane"]
    with httpx.Client(timeout=120) as http:
        meta = http.get(f"{server.http_url}/v2/models/yolov7").json()["parameters"]
        assert meta["engine"] == engine or (engine == "auto" and meta["engine"] in ("torch", *ENGINES))
        assert meta["precision"] == "fp32"
        # v2 REST, two images in one request, a per-request threshold
        response = http.post(server.infer_url, json=v2_request(bus, zidane, parameters={"confidence": 0.2}))
        assert response.status_code == 200, response.text
        _assert_v2_like_detector(v2_outputs(response.json()), (bus, zidane), detector, f"{engine} v2", confidence=0.2)
        # v1 REST, the server's default threshold
        response = http.post(server.predict_url, json={"instances": [b64(zidane)]})
        assert response.status_code == 200, response.text
        dets = response.json()["predictions"][0]["detections"]
        _assert_same([d["box"] for d in dets], [d["score"] for d in dets], [d["class_id"] for d in dets],
                     direct(detector, decode(zidane)), f"{engine} v1")
    # gRPC, raw contents, thresholds as parameters
    request = pb.ModelInferRequest(
        model_name="yolov7",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])],
        raw_input_contents=[serialize_byte_tensor(np.array([bus], dtype=object)).item()],
        parameters={"confidence": pb.InferParameter(string_param="0.1"),
                    "max_detections": pb.InferParameter(int64_param=50)},
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=120)
    _assert_same(*_grpc_first_image(response), direct(detector, decode(bus), confidence=0.1, max_detections=50),
                 f"{engine} gRPC")


async def test_concurrent_requests_batch_and_keep_their_thresholds(engine_server, detector, images):
    engine, server = engine_server
    pictures = list(images.values())[:6]
    confidences = [round(0.03 + 0.01 * i, 2) for i in range(len(pictures))]
    with httpx.Client(timeout=60) as sync:
        before = scrape(sync, server)
    async with httpx.AsyncClient(timeout=300) as client:
        answers = await asyncio.gather(*(
            client.post(server.infer_url, json=v2_request(p, parameters={"confidence": c}))
            for p, c in zip(pictures, confidences, strict=True)
        ))
    for index, (answer, data, conf) in enumerate(zip(answers, pictures, confidences, strict=True)):
        assert answer.status_code == 200, answer.text
        _assert_v2_like_detector(v2_outputs(answer.json()), (data,), detector, f"{engine} client {index}",
                                 confidence=conf)
    with httpx.Client(timeout=60) as sync:
        after = scrape(sync, server)
    assert after["yolo_batch_size_sum"] - before["yolo_batch_size_sum"] == len(pictures)
    assert after["yolo_batch_size_count"] - before["yolo_batch_size_count"] < len(pictures), "no batch formed"


async def test_the_cpu_batching_rule_is_measured_applied_and_shown(tiny_weights, images):
    """No batching flag given: the server measures the engine at b1 and b4, decides by the rule, says so in
    its metadata and log, and its batcher follows the decision; a lone request never waits for company."""
    from predictor.batch_plan import PROBE_BATCH, decide

    pairs = zip(SERVER_ARGS[::2], SERVER_ARGS[1::2], strict=True)
    args = [item for flag, value in pairs if "batch" not in flag for item in (flag, value)]
    env = {**SERVER_ENV, "YOLO_ENGINE": ENGINES[0] if ENGINES[0] != "auto" else "torch"}
    bus = images["bus"]
    with predictor_server(tiny_weights, extra_args=args, env=env) as server, httpx.Client(timeout=120) as http:
        meta = http.get(f"{server.http_url}/v2/models/yolov7").json()["parameters"]
        plan = meta["batching"]
        assert plan["source"] in ("measured", "cached") and plan["rounds"] >= 1
        per_image = {int(k): v for k, v in plan["per_image_ms"].items()}
        assert set(per_image) == {1, PROBE_BATCH} and all(v > 0 for v in per_image.values())
        expected = decide(per_image, max_batch_size=8, max_batch_delay_ms=5.0)
        assert (meta["max_batch_size"], meta["max_batch_delay_ms"]) == (expected.max_batch_size,
                                                                        expected.max_batch_delay_ms)
        assert "batching on the CPU" in server.log_text()
        before = scrape(http, server)
        for _ in range(3):  # c1: each request alone
            assert http.post(server.infer_url, json=v2_request(bus)).status_code == 200
        after = scrape(http, server)
        waited = after["yolo_batch_queue_seconds_sum"] - before["yolo_batch_queue_seconds_sum"]
        assert after["yolo_batch_queue_seconds_count"] - before["yolo_batch_queue_seconds_count"] == 3
        assert waited / 3 < 0.004, f"a lone request waited {1000 * waited / 3:.1f} ms for a batch to form"
        async with httpx.AsyncClient(timeout=300) as client:  # c4: batches only where the rule kept them
            answers = await asyncio.gather(*(client.post(server.infer_url, json=v2_request(bus)) for _ in range(4)))
        assert all(answer.status_code == 200 for answer in answers)
        final = scrape(http, server)
        batches = final["yolo_batch_size_count"] - after["yolo_batch_size_count"]
        if expected.max_batch_size == 1:
            assert batches == 4, "batches formed although batching does not pay here"
