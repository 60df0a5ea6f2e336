"""Generated hostile requests over REST v2, REST v1 and gRPC against the real predictor (see conftest)."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from tests.fuzz.conftest import FUZZ_EXAMPLES
from tests.fuzz.strategies import b64_variant, b64_variants, hostile_images, json_values, parameters

FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
REST_OK = {200, 400, 413, 415}
GRPC_OK = {grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.RESOURCE_EXHAUSTED: 413}


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _post(http: httpx.Client, url: str, body) -> httpx.Response:
    """JSON as Python writes it: NaN and Infinity included (not valid JSON: the server must say so)."""
    return http.post(url, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def _judge_rest(watch, response: httpx.Response, case: str) -> None:
    watch.record(response.status_code)
    assert response.status_code in REST_OK, f"{case}: {response.status_code} {response.text[:500]}"
    if response.status_code != 200:
        error = response.json().get("error")
        assert isinstance(error, str) and len(error) > 10, f"{case}: {response.text[:300]}"
        assert len(error) <= 1000 and "\n" not in error


@FUZZ
@given(images=st.lists(hostile_images, min_size=1, max_size=3), variant=b64_variants, params=parameters)
def test_v2_rest(server, watch, http, images, variant, params):
    body = {"id": "fuzz", "inputs": [{"name": "images", "shape": [len(images)], "datatype": "BYTES",
                                      "data": [b64_variant(image, variant) for image in images]}]}
    if params:
        body["parameters"] = params
    _judge_rest(watch, _post(http, server.infer_url, body), "v2")


@FUZZ
@given(image=hostile_images, variant=b64_variants, params=parameters, form=st.integers(0, 2))
def test_v1_rest(server, watch, http, image, variant, params, form):
    text = b64_variant(image, variant)
    instance = [{"image": {"b64": text}}, text, {"b64": text}][form]
    _judge_rest(watch, _post(http, server.predict_url, {"instances": [instance], "parameters": params}), "v1")


@FUZZ
@given(body=json_values, raw=st.binary(max_size=200), header=st.one_of(st.none(), st.integers(-5, 300)),
       content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream"]),
       encoding=st.sampled_from([None, "gzip", "deflate", "identity"]))
def test_malformed_bodies(server, watch, http, body, raw, header, content_type, encoding):
    """Arbitrary JSON values and bytes to both REST endpoints, with the binary-extension header or not."""
    headers = {"content-type": content_type}
    if header is not None:
        headers["inference-header-content-length"] = str(header)
    if encoding is not None:
        headers["content-encoding"] = encoding
    for url in (server.infer_url, server.predict_url):
        for content in (json.dumps(body).encode(), raw):
            _judge_rest(watch, http.post(url, content=content, headers=headers), f"{url} {content[:40]!r}")


def _grpc_parameter(value) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):  # tritonclient's double_param (field 4): unknown to KServe's proto
        import struct

        parameter = pb.InferParameter()
        parameter.MergeFromString(b"\x21" + struct.pack("<d", value))
        return parameter
    return pb.InferParameter(string_param=str(value)[:100])


@FUZZ
@given(images=st.lists(hostile_images, min_size=1, max_size=3), params=parameters, raw=st.booleans(),
       shape=st.one_of(st.none(), st.lists(st.integers(-2, 5), max_size=3)),
       datatype=st.sampled_from(["BYTES", "BYTES", "UINT8", "FP32", ""]),
       outputs=st.lists(st.sampled_from(["num_detections", "image_sizes", "masks"]), max_size=2))
def test_grpc(watch, stub, images, params, raw, shape, datatype, outputs):
    tensor = pb.ModelInferRequest.InferInputTensor(name="images", datatype=datatype,
                                                   shape=shape if shape is not None else [len(images)])
    request = pb.ModelInferRequest(model_name="yolov7", id="fuzz", inputs=[tensor])
    if raw:
        import struct

        request.raw_input_contents.append(b"".join(struct.pack("<I", len(i)) + i for i in images))
    else:
        tensor.contents.bytes_contents.extend(images)
    for key, value in params.items():
        request.parameters[key].CopyFrom(_grpc_parameter(value))
    for name in outputs:
        request.outputs.add(name=name)
    try:
        stub.ModelInfer(request, timeout=120)
        status, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        status, details = error.code(), error.details() or ""
    assert status in GRPC_OK, f"{status}: {details}"
    watch.record(GRPC_OK[status])
    if status != grpc.StatusCode.OK:
        assert len(details) > 10 and "\n" not in details, details


def test_invariants_hold_after_the_generated_requests(watch):
    """Run last in this module: the server still answers, memory and log lines are bounded."""
    assert watch.sent > 0
    watch.check()
