"""A corpus of bad requests over REST v2, REST v1 and gRPC: each is refused with 400 (or 413) and a
message naming the problem; the server keeps serving and its memory stays bounded."""

from __future__ import annotations

import base64
import gzip
import json
import struct
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from tests.service.helpers import (
    MAX_IMAGE_PIXELS,
    MAX_IMAGES,
    MAX_REQUEST_BYTES,
    b64,
    scrape,
    v2_outputs,
    v2_request,
)
from tests.tools.images import encode, png_claiming, png_corrupt_idat, png_forged_chunk


@dataclass(frozen=True)
class BadImage:
    name: str
    data: bytes
    message: str


def bad_images(bus: bytes) -> list[BadImage]:
    return [
        BadImage("zero bytes", b"", "empty (0 bytes)"),
        BadImage("non-image bytes", b"%PDF-1.4 definitely not an image", "not a JPEG, PNG, BMP or WebP image"),
        BadImage("truncated JPEG", bus[: len(bus) // 2], "truncated JPEG"),
        BadImage("JPEG header only", bus[:600], "truncated JPEG"),
        BadImage("decompression bomb PNG", png_claiming(100_000, 100_000), "10000000000 pixels is over the limit"),
        BadImage("PNG over the pixel limit", png_claiming(3000, 2000), "6000000 pixels is over the limit"),
    ]


@dataclass(frozen=True)
class Outcome:
    status: int  # HTTP status (gRPC: mapped from the status code)
    message: str


GRPC_TO_HTTP = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.RESOURCE_EXHAUSTED: 413}


def _rest(client: httpx.Client, url: str, **kwargs) -> Outcome:
    response = client.post(url, **kwargs)
    try:
        message = response.json().get("error", response.text)
    except ValueError:
        message = response.text
    return Outcome(response.status_code, str(message))


def _grpc(stub, request: pb.ModelInferRequest) -> Outcome:
    try:
        stub.ModelInfer(request, timeout=60)
    except grpc.RpcError as error:
        return Outcome(GRPC_TO_HTTP.get(error.code(), 500), f"{error.code().name}: {error.details()}")
    return Outcome(200, "")


def _grpc_bytes(*items: bytes, parameters: dict | None = None, datatype: str = "BYTES", shape=None):
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="images", datatype=datatype, shape=shape if shape is not None else [len(items)],
        contents=pb.InferTensorContents(bytes_contents=list(items)),
    )
    params = {k: pb.InferParameter(string_param=str(v)) for k, v in (parameters or {}).items()}
    return pb.ModelInferRequest(model_name="yolov7", inputs=[tensor], parameters=params)


def test_bad_input_corpus(server, images):
    bus = images["bus"]
    good = images["zidane"]
    oversize = b"\xff\xd8\xff" + bytes(MAX_REQUEST_BYTES)  # body over --max_request_bytes
    cases: list[tuple[str, callable, int, str]] = []  # (name, send, status, message)

    with httpx.Client(timeout=120) as client, grpc.insecure_channel(
        server.grpc_target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        v2, v1 = server.infer_url, server.predict_url

        # warm up, then measure the server's memory before the corpus
        assert client.post(v2, json=v2_request(good)).status_code == 200
        rss_before = server.rss_bytes()

        for bad in bad_images(bus):
            cases += [
                (f"v2 {bad.name}", lambda b=bad: _rest(client, v2, json=v2_request(b.data)), 400, bad.message),
                (f"v1 {bad.name}", lambda b=bad: _rest(client, v1, json={"instances": [{"image": {"b64": b64(b.data)}}]}),
                 400, bad.message),
                (f"grpc {bad.name}", lambda b=bad: _grpc(stub, _grpc_bytes(b.data)), 400, bad.message),
                (f"v2 second image {bad.name}", lambda b=bad: _rest(client, v2, json=v2_request(good, b.data)),
                 400, "image 1"),
            ]

        invalid_b64 = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": ["***not base64***"]}]}
        fp32 = {"inputs": [{"name": "images", "shape": [1, 3], "datatype": "FP32", "data": [0.1, 0.2, 0.3]}]}
        bad_shape = {"inputs": [{"name": "images", "shape": [3], "datatype": "BYTES", "data": [b64(good)]}]}
        uint8_shape = {"inputs": [{"name": "images", "shape": [1, 4, 4], "datatype": "UINT8", "data": [0] * 48}]}
        two_inputs = {"inputs": [v2_request(good)["inputs"][0], {**v2_request(good)["inputs"][0], "name": "more"}]}
        too_many = v2_request(*([good] * (MAX_IMAGES + 1)))
        short_header = json.dumps({"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                                               "parameters": {"binary_data_size": 1000}}]}).encode()
        cases += [
            ("v2 invalid base64", lambda: _rest(client, v2, json=invalid_b64), 400, "invalid base64"),
            ("v1 invalid base64", lambda: _rest(client, v1, json={"instances": ["%%%"]}), 400, "invalid base64"),
            ("v2 wrong datatype", lambda: _rest(client, v2, json=fp32), 400, "datatype FP32; expected BYTES"),
            ("grpc wrong datatype", lambda: _grpc(stub, pb.ModelInferRequest(
                model_name="yolov7", inputs=[pb.ModelInferRequest.InferInputTensor(
                    name="images", datatype="FP32", shape=[1], contents=pb.InferTensorContents(fp32_contents=[1.0]))])),
             400, "datatype FP32"),
            ("v2 wrong shape", lambda: _rest(client, v2, json=bad_shape), 400, "shape [3] says 3 elements but 1"),
            ("grpc wrong shape", lambda: _grpc(stub, _grpc_bytes(good, shape=[2])), 400, "says 2 elements but 1"),
            ("v2 UINT8 wrong shape", lambda: _rest(client, v2, json=uint8_shape), 400, "[N, H, W, 3]"),
            ("v2 two inputs", lambda: _rest(client, v2, json=two_inputs), 400, "exactly one input tensor"),
            ("v2 not JSON", lambda: _rest(client, v2, content=b"{nope", headers={"content-type": "application/json"}),
             400, "invalid v2 inference request"),
            ("v2 no inputs", lambda: _rest(client, v2, json={"id": "x"}), 400, "inputs"),
            ("v1 no instances", lambda: _rest(client, v1, json={"inputs": []}), 400, '"instances" to be a list'),
            ("v2 confidence > 1", lambda: _rest(client, v2, json=v2_request(good, parameters={"confidence": 1.5})),
             400, "'confidence' must be in [0, 1]"),
            ("v2 iou < 0", lambda: _rest(client, v2, json=v2_request(good, parameters={"iou": -0.2})),
             400, "'iou' must be in [0, 1]"),
            ("v1 confidence not a number", lambda: _rest(client, v1, json={"instances": [b64(good)],
                                                                          "parameters": {"confidence": "high"}}),
             400, "'confidence' must be a number"),
            ("grpc iou > 1", lambda: _grpc(stub, _grpc_bytes(good, parameters={"iou": "7"})), 400, "'iou' must be in"),
            ("v2 unknown class", lambda: _rest(client, v2, json=v2_request(good, parameters={"classes": "person,unicorn"})),
             400, "unknown class name 'unicorn'"),
            ("v1 class id out of range", lambda: _rest(client, v1, json={"instances": [b64(good)],
                                                                         "parameters": {"classes": [80]}}),
             400, "class id 80 is out of range"),
            ("grpc unknown class", lambda: _grpc(stub, _grpc_bytes(good, parameters={"classes": "dragon"})),
             400, "unknown class name 'dragon'"),
            ("v2 too many images", lambda: _rest(client, v2, json=too_many), 400, f"at most {MAX_IMAGES} are accepted"),
            ("v1 too many images", lambda: _rest(client, v1, json={"instances": [b64(good)] * (MAX_IMAGES + 1)}),
             400, f"at most {MAX_IMAGES}"),
            ("grpc too many images", lambda: _grpc(stub, _grpc_bytes(*([good] * (MAX_IMAGES + 1)))), 400, "at most"),
            ("v2 body over the byte limit", lambda: _rest(client, v2, json=v2_request(oversize)), 413,
             f"over the limit of {MAX_REQUEST_BYTES} bytes"),
            ("v1 body over the byte limit", lambda: _rest(client, v1, json={"instances": [b64(oversize)]}), 413,
             f"over the limit of {MAX_REQUEST_BYTES} bytes"),
            ("v2 binary over the byte limit", lambda: _rest(
                client, v2, content=b"{}" + oversize, headers={"Inference-Header-Content-Length": "2"}),
             413, "over the limit"),
            ("grpc message over the byte limit", lambda: _grpc(stub, _grpc_bytes(oversize + bytes(100_000))), 413,
             "RESOURCE_EXHAUSTED"),
            ("v2 binary header length outside body", lambda: _rest(
                client, v2, content=b'{"inputs": []}', headers={"Inference-Header-Content-Length": "500"}),
             400, "outside the"),
            ("v2 binary size does not fit", lambda: _rest(
                client, v2, content=short_header + b"\0" * 10,
                headers={"Inference-Header-Content-Length": str(len(short_header))}),
             400, "binary_data_size 1000 does not fit"),
        ]

        problems = []
        for name, send, status, message in cases:
            outcome = send()
            if outcome.status != status or message not in outcome.message:
                problems.append(f"{name}: got {outcome.status} {outcome.message!r}, expected {status} with {message!r}")
        assert not problems, "\n".join(problems)

        # still serving, and a good request after the corpus is answered correctly
        response = client.post(v2, json=v2_request(good))
        assert response.status_code == 200, response.text
        assert v2_outputs(response.json())["num_detections"][0] > 0
        growth = server.rss_bytes() - rss_before
        assert growth < 150 * 1024 * 1024, f"server RSS grew by {growth / 2**20:.0f} MiB over the bad-input corpus"
        assert server.alive()


@pytest.mark.parametrize("path", ["/v2/models/nope/infer", "/v1/models/nope:predict"])
def test_unknown_model_is_404(server, images, path):
    with httpx.Client(timeout=60) as client:
        body = v2_request(images["zidane"]) if "v2" in path else {"instances": [b64(images["zidane"])]}
        assert client.post(server.http_url + path, json=body).status_code == 404


def test_pixels_tensor_memory_is_bounded_by_the_limit(server):
    """A UINT8 tensor declaring a huge image is refused from its shape, before its data is read."""
    with httpx.Client(timeout=60) as client:
        body = {"inputs": [{"name": "pixels", "shape": [1, 50_000, 50_000, 3], "datatype": "UINT8",
                            "data": [0, 0, 0]}]}
        response = client.post(server.infer_url, json=body)
    assert response.status_code == 400
    assert f"= {50_000 * 50_000} pixels is over the limit of {MAX_IMAGE_PIXELS}" in response.json()["error"]


# ----- issue 12 -------------------------------------------------------------------------------------
def _log_lines(server) -> list[str]:
    return server.log_text().splitlines()


def test_forged_png_chunk_is_a_400_with_bounded_memory(server, images):
    """Issue 12.1: a ~120-byte PNG whose chunk declares 300 MB (4 GiB in the report) made OpenCV allocate it,
    once per image of the request."""
    forged = png_forged_chunk(300_000_000)
    with httpx.Client(timeout=120) as client:
        assert client.post(server.infer_url, json=v2_request(images["zidane"])).status_code == 200
        before = server.rss_bytes()
        response = client.post(server.infer_url, json=v2_request(forged, forged))
        growth = server.rss_bytes() - before
    assert response.status_code == 400
    assert "image 0: corrupt PNG: chunk tEXt at byte 33 declares 300000000 bytes" in response.json()["error"]
    assert growth < 100 * 1024 * 1024, f"RSS grew by {growth / 2**20:.0f} MiB for a {len(forged)}-byte image"


THIN = [(2000, 1), (4000, 2), (1, 10000)]


def test_thin_images_are_400_over_every_protocol_and_the_connection_survives(server, images):
    """Issue 12.2: 2000x1, 4000x2, 1x10000 hit an OpenCV assertion (500 / INTERNAL, ~152 log lines, not
    counted as request errors) and reset the next request on the same keep-alive connection."""
    good = images["zidane"]
    with httpx.Client(timeout=120) as client, grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        counted = scrape(client, server).get('yolo_request_errors_total{code="image_shape",protocol="v2"}', 0)
        for width, height in THIN:
            thin = encode(".png", np.zeros((height, width, 3), np.uint8))
            expected = f"{width}x{height}"
            outcome = _rest(client, server.infer_url, json=v2_request(good, thin))
            assert (outcome.status, expected in outcome.message) == (400, True), outcome
            assert "image 1" in outcome.message
            outcome = _rest(client, server.predict_url, json={"instances": [b64(thin)]})
            assert (outcome.status, expected in outcome.message) == (400, True), outcome
            outcome = _grpc(stub, _grpc_bytes(thin))
            assert outcome.status == 400 and expected in outcome.message, outcome
            # the same keep-alive connection answers the next request
            assert client.post(server.infer_url, json=v2_request(good)).status_code == 200
        after = scrape(client, server)['yolo_request_errors_total{code="image_shape",protocol="v2"}']
    assert after - counted == len(THIN)


def _double_parameter(value: float) -> pb.InferParameter:
    """What tritonclient sends for a Python float: ``double_param``, field 4, which KServe's proto lacks."""
    parameter = pb.InferParameter()
    parameter.MergeFromString(b"\x21" + struct.pack("<d", value))
    return parameter


def _num_detections(response: pb.ModelInferResponse) -> list[int]:
    [index] = [i for i, output in enumerate(response.outputs) if output.name == "num_detections"]
    if response.raw_output_contents:
        return np.frombuffer(response.raw_output_contents[index], np.int32).tolist()
    return list(response.outputs[index].contents.int_contents)


def test_grpc_float_parameters_are_read_or_refused_never_dropped(server, images):
    """Issue 12.3: confidence=0.9 as a float answered with the default threshold; 1.5 was accepted."""
    request = _grpc_bytes(images["zidane"])
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        default = stub.ModelInfer(request, timeout=60)
        request.parameters["confidence"].CopyFrom(pb.InferParameter(string_param="0.3"))
        as_string = stub.ModelInfer(request, timeout=60)
        request.parameters["confidence"].CopyFrom(_double_parameter(0.3))
        as_double = stub.ModelInfer(request, timeout=60)
        request.parameters["confidence"].CopyFrom(_double_parameter(1.5))
        refused = _grpc(stub, request)
        request.parameters["confidence"].CopyFrom(pb.InferParameter())
        empty = _grpc(stub, request)
    assert _num_detections(as_double) == _num_detections(as_string)
    assert _num_detections(as_string)[0] < _num_detections(default)[0]  # the threshold took effect
    assert refused.status == 400 and "'confidence' must be in [0, 1], got 1.5" in refused.message
    assert empty.status == 400 and "'confidence' has no value this server can read" in empty.message


def test_one_log_line_per_rejected_request_with_its_id(server, images):
    """Issue 12.7: every rejected request logged a full traceback (100 bad requests -> 4,100 lines)."""
    good = images["zidane"]
    with httpx.Client(timeout=120) as client, grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        start = len(_log_lines(server))
        sends = []
        for index in range(5):
            sends += [
                lambda i=index: client.post(server.infer_url, json={"id": f"bad-v2-{i}", **v2_request(b"junk")}),
                lambda i=index: client.post(server.predict_url, json={"instances": ["%%%"]},
                                            headers={"x-request-id": f"bad-v1-{i}"}),
                lambda i=index: _grpc(stub, pb.ModelInferRequest(id=f"bad-grpc-{i}", model_name="yolov7",
                                                                 inputs=_grpc_bytes(b"junk").inputs)),
                lambda: client.post(server.http_url + "/v2/models/nope/infer", json=v2_request(good)),
                lambda: client.post(server.infer_url, content=b"{nope", headers={"content-type": "application/json"}),
                lambda: client.post(server.infer_url, json=v2_request(png_corrupt_idat())),  # libpng's own line
            ]
        for send in sends:
            send()
        assert client.post(server.infer_url, json=v2_request(good)).status_code == 200
        added = _log_lines(server)[start:]
    assert len(added) <= len(sends), "\n".join(added[-20:])
    assert not any("Traceback" in line for line in added), "\n".join(added[-20:])
    for index in range(5):
        for rid in (f"bad-v2-{index}", f"bad-v1-{index}", f"bad-grpc-{index}"):
            assert sum(rid in line for line in added) == 1, (rid, added)


def test_smaller_wire_issues(server, images):
    """Issue 12.8: gRPC output subset, gzip bodies, URL-safe/MIME base64, v1 text/plain, {"error"} bodies."""
    good = images["zidane"]
    with httpx.Client(timeout=120) as client, grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = _grpc_bytes(good)
        request.outputs.add(name="num_detections")
        request.outputs.add(name="image_sizes")
        answer = stub.ModelInfer(request, timeout=60)
        assert sorted(output.name for output in answer.outputs) == ["image_sizes", "num_detections"]
        request.outputs.add(name="masks")
        assert "unknown output 'masks'" in _grpc(stub, request).message

        body = json.dumps(v2_request(good)).encode()
        plain = client.post(server.infer_url, content=body, headers={"content-type": "application/json"})
        zipped = client.post(server.infer_url, content=gzip.compress(body),
                             headers={"content-type": "application/json", "content-encoding": "gzip"})
        assert zipped.status_code == 200 and zipped.json()["outputs"] == plain.json()["outputs"]
        v1 = json.dumps({"instances": [base64.urlsafe_b64encode(good).decode()]}).encode()
        for headers, content in [({"content-encoding": "gzip"}, gzip.compress(v1)),
                                 ({"content-type": "text/plain"}, v1)]:
            response = client.post(server.predict_url, content=content, headers=headers)
            assert response.status_code == 200, (headers, response.text)
        mime = base64.encodebytes(good).decode()
        assert client.post(server.predict_url, json={"instances": [mime]}).status_code == 200
        refused = client.post(server.infer_url, content=body, headers={"content-encoding": "br"})
        assert refused.status_code == 415 and "Content-Encoding 'br' is not supported" in refused.json()["error"]
        bomb = gzip.compress(bytes(MAX_REQUEST_BYTES + 1))
        refused = client.post(server.infer_url, content=bomb, headers={"content-encoding": "gzip"})
        assert refused.status_code == 413 and "decodes to more than" in refused.json()["error"]
        for response in (client.get(server.infer_url), client.get(server.http_url + "/no/such/route")):
            assert response.status_code in (404, 405) and set(response.json()) == {"error"}, response.text
