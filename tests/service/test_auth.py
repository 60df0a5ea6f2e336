"""The bearer-token check (``--auth_token_file``, predictor/auth.py) on a real predictor, over REST and gRPC.

A server of its own (module scope) with the token in a file, as the operator mounts it from a Secret (with the
trailing newline ``kubectl create secret --from-file`` keeps). Probes and /metrics must stay open; everything
else needs ``Authorization: Bearer <token>``; a refusal says nothing about why.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kserve.protocol.infer_type import serialize_byte_tensor

from tests.service.helpers import INPUT_SIZE, v2_request
from tests.tools.predictor_server import REPO_ROOT, predictor_server

TOKEN = "s3cr3t-t0ken-for-tests"  # noqa: S105 - a test token


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def guarded(tiny_weights, token_file):
    args = ["--input_size", str(INPUT_SIZE), "--auth_token_file", str(token_file), "--warmup=false"]
    with predictor_server(tiny_weights, extra_args=args) as running:
        yield running


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_rest_needs_the_token_except_probes_and_metrics(guarded, images):
    url = guarded.infer_url
    body = v2_request(images["bus"])
    with httpx.Client(timeout=120.0) as http:
        for headers in ({}, _bearer("wrong"), _bearer(TOKEN + "x"), {"Authorization": TOKEN}):
            refused = http.post(url, json=body, headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json() == {"error": "unauthorized"}  # no detail about what was wrong
        assert http.get(f"{guarded.http_url}/v2/models/yolov7", headers={}).status_code == 401
        assert http.post(f"{guarded.http_url}/v1/models/yolov7:predict", json={"instances": []}).status_code == 401
        accepted = http.post(url, json=body, headers=_bearer(TOKEN))
        assert accepted.status_code == 200, accepted.text
        assert {o["name"] for o in accepted.json()["outputs"]} >= {"num_detections", "detection_boxes"}
        for probe in ("/v2/health/live", "/v2/health/ready", "/v2/models/yolov7/ready", "/v1/models/yolov7", "/",
                      "/metrics"):
            assert http.get(f"{guarded.http_url}{probe}").status_code == 200, probe


def test_grpc_needs_the_token_except_health(guarded, images):
    raw = serialize_byte_tensor(np.array([images["bus"]], dtype=object)).item()
    request = pb.ModelInferRequest(
        model_name="yolov7", raw_input_contents=[raw],
        inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])])
    with grpc.insecure_channel(guarded.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="yolov7")).ready
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(request, metadata=metadata, timeout=120)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert not refused.value.details()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="yolov7"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        response = stub.ModelInfer(request, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=120)
        assert {output.name for output in response.outputs} >= {"num_detections", "detection_boxes"}


def test_an_empty_token_file_stops_the_predictor(tiny_weights, tmp_path):
    empty = tmp_path / "token"
    empty.write_text("\n")
    done = subprocess.run(
        [sys.executable, "-m", "predictor", "--weights", str(tiny_weights), "--device", "cpu", "--warmup=false",
         "--input_size", str(INPUT_SIZE), "--auth_token_file", str(empty), "--http_port", "0", "--grpc_port", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0
    assert "auth token file" in done.stderr and "empty" in done.stderr
