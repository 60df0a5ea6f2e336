"""The real predictor over REST v2 (JSON and binary), REST v1 and gRPC v2: answers equal the core Detector."""

from __future__ import annotations

import json

import cv2
import grpc
import numpy as np
import pytest
from kserve import InferenceGRPCClient
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kserve.protocol.infer_type import InferInput, InferRequest, serialize_byte_tensor

from tests.service.helpers import (
    DEFAULT_CONF,
    INPUT_SIZE,
    MAX_IMAGES,
    assert_same_detections,
    b64,
    decode,
    direct,
    v2_outputs,
    v2_request,
)


def test_health_and_readiness(http, server):
    assert http.get(f"{server.http_url}/v2/health/live").json() == {"live": True}
    assert http.get(f"{server.http_url}/v2/health/ready").json() == {"ready": True}
    assert http.get(f"{server.http_url}/v2/models/yolov7/ready").json() == {"name": "yolov7", "ready": True}
    assert http.get(f"{server.http_url}/v2/models/other/ready").status_code == 404


def test_model_metadata_describes_io_and_defaults(http, server):
    meta = http.get(f"{server.http_url}/v2/models/yolov7").json()
    assert meta["name"] == "yolov7"
    assert meta["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == [
        "num_detections", "detection_boxes", "detection_scores", "detection_classes", "detection_labels",
        "image_sizes",
    ]
    params = meta["parameters"]
    assert params["variant"] == "yolov7-tiny"
    assert params["input_size"] == INPUT_SIZE
    assert len(params["class_names"]) == params["num_classes"] == 80 and params["class_names"][0] == "person"
    assert params["confidence"] == DEFAULT_CONF  # from YOLO_CONF_THRESHOLD
    assert params["max_images_per_request"] == MAX_IMAGES  # from YOLO_MAX_IMAGES_PER_REQUEST
    assert params["iou"] == 0.45 and params["max_detections"] == 300


def test_v2_json_two_images_match_the_detector(http, server, detector, images):
    bus, zidane = images["bus"], images["zidane"]
    response = http.post(server.infer_url, json=v2_request(bus, zidane))
    assert response.status_code == 200, response.text
    out = v2_outputs(response.json())
    expected = [direct(detector, decode(bus)), direct(detector, decode(zidane))]
    counts = out["num_detections"].tolist()
    assert counts == [len(e) for e in expected]
    k = max(counts)
    assert out["detection_boxes"].shape == (2, k, 4) and out["detection_scores"].shape == (2, k)
    assert out["image_sizes"].tolist() == [[1080, 810], [720, 1280]]
    for i, exp in enumerate(expected):
        n = counts[i]
        assert_same_detections(out["detection_boxes"][i, :n], out["detection_scores"][i, :n],
                               out["detection_classes"][i, :n], exp, context=f"image {i}")
        assert out["detection_labels"][i, :n].tolist() == [detector.names[c] for c in exp.classes]
        # padding rows
        assert (out["detection_classes"][i, n:] == -1).all() and (out["detection_labels"][i, n:] == "").all()
        assert (out["detection_scores"][i, n:] == 0).all() and (out["detection_boxes"][i, n:] == 0).all()


def test_v2_binary_tensor_extension(http, server, detector, images):
    data = images["zidane"]
    raw = serialize_byte_tensor(np.array([data], dtype=object)).item()
    header = json.dumps({
        "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"confidence": 0.1},
    }).encode()
    response = http.post(server.infer_url, content=header + raw, headers={
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header)),
    })
    assert response.status_code == 200, response.text
    out = v2_outputs(response.json())
    n = int(out["num_detections"][0])
    assert_same_detections(out["detection_boxes"][0, :n], out["detection_scores"][0, :n],
                           out["detection_classes"][0, :n], direct(detector, decode(data), confidence=0.1))


def test_v2_uint8_pixels(http, server, detector, images):
    image = cv2.resize(decode(images["horses"]), (200, 150), interpolation=cv2.INTER_AREA)
    body = {"inputs": [{"name": "pixels", "shape": [1, 150, 200, 3], "datatype": "UINT8",
                        "data": image.flatten().tolist()}]}
    response = http.post(server.infer_url, json=body)
    assert response.status_code == 200, response.text
    out = v2_outputs(response.json())
    n = int(out["num_detections"][0])
    assert out["image_sizes"].tolist() == [[150, 200]]
    assert_same_detections(out["detection_boxes"][0, :n], out["detection_scores"][0, :n],
                           out["detection_classes"][0, :n], direct(detector, image))


def test_v1_instances(http, server, detector, images):
    bus, zidane = images["bus"], images["zidane"]
    body = {"instances": [{"image": {"b64": b64(bus)}}, b64(zidane)], "parameters": {"confidence": 0.2}}
    response = http.post(server.predict_url, json=body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["image_size"] for p in predictions] == [[1080, 810], [720, 1280]]
    for prediction, data in zip(predictions, (bus, zidane), strict=True):
        dets = prediction["detections"]
        assert all(d["label"] == detector.names[d["class_id"]] for d in dets)
        assert_same_detections([d["box"] for d in dets], [d["score"] for d in dets], [d["class_id"] for d in dets],
                               direct(detector, decode(data), confidence=0.2))


def test_request_parameters_override_the_defaults(http, server, detector, images):
    image = decode(images["bus"])
    reference = direct(detector, image)
    top_class = int(np.bincount(reference.classes).argmax())
    top_name = detector.names[top_class]
    cases = [
        ({"classes": top_name}, {"classes": [top_class]}),
        ({"classes": str(top_class)}, {"classes": [top_class]}),
        ({"max_detections": 3}, {"max_detections": 3}),
        ({"confidence": 0.3, "iou": 0.3}, {"confidence": 0.3, "iou": 0.3}),
        ({"agnostic": True}, {"agnostic": True}),
    ]
    for parameters, kwargs in cases:
        response = http.post(server.infer_url, json=v2_request(images["bus"], parameters=parameters))
        assert response.status_code == 200, (parameters, response.text)
        out = v2_outputs(response.json())
        n = int(out["num_detections"][0])
        expected = direct(detector, image, **kwargs)
        assert_same_detections(out["detection_boxes"][0, :n], out["detection_scores"][0, :n],
                               out["detection_classes"][0, :n], expected, context=str(parameters))
    only = v2_outputs(http.post(server.infer_url, json=v2_request(images["bus"], parameters={"classes": top_name})).json())
    assert set(only["detection_labels"][0].tolist()) == {top_name}


def test_binary_outputs_on_request(http, server, images):
    body = v2_request(images["zidane"], parameters={"binary_data_output": True})
    response = http.post(server.infer_url, json=body)
    assert response.status_code == 200, response.text
    header_length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:header_length])
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in header["outputs"]}
    assert sum(sizes.values()) == len(response.content) - header_length
    num = np.frombuffer(response.content[header_length:header_length + sizes["num_detections"]], np.int32)
    assert num.tolist()[0] > 0


# ----- gRPC -------------------------------------------------------------------------------------------
def _grpc_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    out = {}
    raw = list(response.raw_output_contents)
    for index, output in enumerate(response.outputs):
        shape = list(output.shape)
        if raw:
            if output.datatype == "BYTES":
                from kserve.protocol.infer_type import deserialize_bytes_tensor

                array = deserialize_bytes_tensor(raw[index])
            else:
                dtype = {"INT32": np.int32, "FP32": np.float32}[output.datatype]
                array = np.frombuffer(raw[index], dtype)
        else:
            contents = output.contents
            if output.datatype == "INT32":
                array = np.asarray(contents.int_contents, np.int32)
            elif output.datatype == "FP32":
                array = np.asarray(contents.fp32_contents, np.float32)
            else:
                array = np.asarray(list(contents.bytes_contents), object)
        out[output.name] = array.reshape(shape)
    return out


def test_grpc_raw_input_contents_match_the_detector(server, detector, images):
    data = images["bus"]
    raw = serialize_byte_tensor(np.array([data], dtype=object)).item()
    request = pb.ModelInferRequest(
        model_name="yolov7",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])],
        raw_input_contents=[raw],
        parameters={"confidence": pb.InferParameter(string_param="0.1"),
                    "max_detections": pb.InferParameter(int64_param=50)},
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="yolov7")).ready
        response = stub.ModelInfer(request, timeout=120)
    out = _grpc_outputs(response)
    n = int(out["num_detections"][0])
    assert out["image_sizes"].tolist() == [[1080, 810]]
    assert_same_detections(out["detection_boxes"][0, :n], out["detection_scores"][0, :n],
                           out["detection_classes"][0, :n], direct(detector, decode(data), confidence=0.1, max_detections=50))
    assert [label.decode() for label in out["detection_labels"][0, :n]] == [
        detector.names[c] for c in out["detection_classes"][0, :n]
    ]


async def test_grpc_kserve_client_bytes_contents(server, detector, images):
    data = images["zidane"]
    client = InferenceGRPCClient(server.grpc_target, timeout=120, retries=0)
    try:
        assert await client.is_server_ready()
        request = InferRequest(
            model_name="yolov7",
            infer_inputs=[InferInput(name="images", shape=[1], datatype="BYTES", data=[data])],
            parameters={"confidence": "0.05"},
        )
        response = await client.infer(request)
    finally:
        await client.close()
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    n = int(outputs["num_detections"][0])
    assert outputs["image_sizes"].tolist() == [[720, 1280]]
    assert_same_detections(outputs["detection_boxes"][0, :n], outputs["detection_scores"][0, :n],
                           outputs["detection_classes"][0, :n], direct(detector, decode(data)))


def test_v2_answers_follow_the_protocol_schema(http, server, images, kserve_fixtures):
    """Responses validate against the Open Inference Protocol's REST schema (KServe's rest_predict_v2.yaml)."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="jsonschema_rs (a schemathesis dependency) is needed")
    import yaml

    spec = yaml.safe_load((kserve_fixtures / "rest_predict_v2.yaml").read_text())

    def validate(name: str, instance: dict) -> None:
        document = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
        errors = [str(e) for e in jsonschema_rs.validator_for(document).iter_errors(instance)]
        assert not errors, f"{name}: {errors[:5]}"

    validate("inference_request", v2_request(images["zidane"], parameters={"confidence": 0.3}))
    validate("inference_response", http.post(server.infer_url, json=v2_request(images["zidane"])).json())
    validate("metadata_model_response", http.get(f"{server.http_url}/v2/models/yolov7").json())
    validate("metadata_server_response", http.get(f"{server.http_url}/v2").json())
    validate("inference_error_response", http.post(server.infer_url, json=v2_request(b"nope")).json())
