"""Backpressure (``--max_queued_images``): a burst over the limit gets 503 / ``UNAVAILABLE`` at once, the
admitted requests are answered, the in-flight gauge never passes the limit and is back at 0 afterwards,
and the server keeps serving.

Its own server (module scope): 2 images admitted at once, one image per forward, at input size 640 so
that a forward takes long enough on the CPU (~0.1 s) for a burst to overlap it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kserve.protocol.infer_type import serialize_byte_tensor

from tests.service.helpers import b64, scrape, v2_request
from tests.tools.predictor_server import PredictorServer, predictor_server

LIMIT = 2
BURST = 8
GAUGE = "yolo_images_in_flight"


@pytest.fixture(scope="module")
def busy_server(tiny_weights: Path) -> PredictorServer:
    args = ["--input_size", "640", "--max_batch_size", "1", "--max_batch_delay_ms", "0",
            "--max_queued_images", str(LIMIT)]
    with predictor_server(tiny_weights, extra_args=args) as running:
        yield running


def _overloaded(server: PredictorServer, protocol: str, values: dict[str, float]) -> float:
    return values.get(f'yolo_request_errors_total{{code="overloaded",protocol="{protocol}"}}', 0.0)


async def _burst(server: PredictorServer, image: bytes) -> tuple[list[httpx.Response], list[float]]:
    """BURST concurrent single-image requests (v2 and v1 alternately), sampling the gauge meanwhile."""
    gauge: list[float] = []
    async with httpx.AsyncClient(timeout=60.0) as client:
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                text = (await client.get(f"{server.http_url}/metrics")).text
                gauge.extend(float(line.split()[-1]) for line in text.splitlines() if line.startswith(GAUGE + " "))
                await asyncio.sleep(0.01)

        sampler = asyncio.ensure_future(sample())
        requests = [
            client.post(server.infer_url, json=v2_request(image)) if index % 2 == 0
            else client.post(server.predict_url, json={"instances": [b64(image)]})
            for index in range(BURST)
        ]
        try:
            responses = await asyncio.gather(*requests)
        finally:
            done.set()
            await sampler
    return responses, gauge


def test_rest_burst_over_the_limit_gets_503_and_the_server_recovers(busy_server, images):
    server = busy_server
    with httpx.Client(timeout=60.0) as http:
        before = scrape(http, server)
        responses, gauge = asyncio.run(_burst(server, images["bus"]))
        after = scrape(http, server)
        statuses = [response.status_code for response in responses]
        assert set(statuses) <= {200, 503}, [(r.status_code, r.text[:200]) for r in responses]
        assert statuses.count(200) >= 1, statuses
        assert statuses.count(503) >= 1, statuses  # 8 at once, 2 admitted, a forward takes ~0.1 s
        for response in responses:
            if response.status_code == 503:
                error = response.json()["error"]
                assert error.startswith("server busy: "), error
                assert f"limit of {LIMIT} (--max_queued_images); retry later" in error, error
                assert response.headers["retry-after"] == "1"
            else:
                assert "outputs" in response.json() or "predictions" in response.json()
        assert gauge and max(gauge) <= LIMIT, gauge  # memory bound: never more images admitted than the limit
        assert after[GAUGE] == 0
        refused = (_overloaded(server, "v1", after) - _overloaded(server, "v1", before)
                   + _overloaded(server, "v2", after) - _overloaded(server, "v2", before))
        assert refused == statuses.count(503)
        # the limit does not stick: the next request is served
        assert http.post(server.infer_url, json=v2_request(images["zidane"])).status_code == 200
        assert scrape(http, server)[GAUGE] == 0


def test_grpc_burst_gets_unavailable(busy_server, images):
    raw = serialize_byte_tensor(np.array([images["bus"]], dtype=object)).item()
    request = pb.ModelInferRequest(
        model_name=busy_server.model_name,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])],
        raw_input_contents=[raw],
    )
    with grpc.insecure_channel(busy_server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        futures = [stub.ModelInfer.future(request, timeout=60) for _ in range(BURST)]
        codes, details = [], []
        for future in futures:
            try:
                future.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
                details.append(error.details())
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, (codes, details)
        assert codes.count(grpc.StatusCode.OK) >= 1, codes
        assert codes.count(grpc.StatusCode.UNAVAILABLE) >= 1, codes
        assert all("(--max_queued_images); retry later" in detail for detail in details), details
        stub.ModelInfer(request, timeout=60)  # served again once the burst is over
    with httpx.Client(timeout=60.0) as http:
        assert scrape(http, busy_server)[GAUGE] == 0
    # counted in the metrics, not logged with a traceback each (KServe's gRPC interceptor would)
    assert "Overloaded" not in busy_server.log_text()


def test_request_over_the_limit_itself_is_a_client_error(busy_server, images):
    """3 images can never be admitted with a limit of 2: 400 (not 503 forever)."""
    with httpx.Client(timeout=60.0) as http:
        response = http.post(busy_server.infer_url, json=v2_request(*[images["bus"]] * (LIMIT + 1)))
        assert response.status_code == 400
        assert response.json()["error"] == (
            f"the request holds {LIMIT + 1} images; at most {LIMIT} are admitted at once (--max_queued_images)"
        )
        assert scrape(http, busy_server)[GAUGE] == 0
