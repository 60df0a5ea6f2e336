"""predictor.wire: v1/v2/gRPC/REST-binary request parsing and the response layouts."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest, serialize_byte_tensor

from predictor import wire
from predictor.errors import PayloadTooLarge, RequestError
from tests.tools.images import encode, gradient

LIMITS = wire.Limits(max_images=4, max_pixels=1_000_000, max_bytes=2_000_000)
NAMES = ["person", "bicycle", "car"]


# ----- v2 ---------------------------------------------------------------------------------------------
def _v2(datatype: str, shape: list[int], data=None, raw: bytes | None = None, parameters=None) -> InferRequest:
    tensor = InferInput(name="images", shape=shape, datatype=datatype, data=data)
    if raw is not None:
        tensor._raw_data = raw
    return InferRequest(model_name="yolov7", infer_inputs=[tensor], parameters=parameters)


def test_parse_v2_base64_raw_and_binary_bytes():
    a, b = encode(".jpg", gradient()), encode(".png", gradient(20, 30))
    as_json = wire.parse_v2(_v2("BYTES", [2], [base64.b64encode(a).decode(), base64.b64encode(b).decode()]), LIMITS)
    as_bytes = wire.parse_v2(_v2("BYTES", [2], [a, b]), LIMITS)  # gRPC bytes_contents
    raw = serialize_byte_tensor(np.array([a, b], dtype=object)).item()
    as_raw = wire.parse_v2(_v2("BYTES", [2, 1], raw=raw), LIMITS)  # raw_input_contents / binary extension
    assert as_json == as_bytes == as_raw == [a, b]


def test_parse_v2_uint8_pixels():
    pixels = np.stack([gradient(10, 12), gradient(10, 12)[::-1]])
    parsed = wire.parse_v2(_v2("UINT8", [2, 10, 12, 3], pixels.flatten().tolist()), LIMITS)
    np.testing.assert_array_equal(np.stack(parsed), pixels)
    parsed_raw = wire.parse_v2(_v2("UINT8", [2, 10, 12, 3], raw=pixels.tobytes()), LIMITS)
    np.testing.assert_array_equal(np.stack(parsed_raw), pixels)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_v2("FP32", [1, 4], [0.0, 1.0, 2.0, 3.0]), "datatype FP32; expected BYTES"),
        (_v2("BYTES", [2], ["aGVsbG8="]), "shape \\[2\\] says 2 elements but 1 were sent"),
        (_v2("BYTES", [1], ["@@not base64@@"]), "invalid base64"),
        (_v2("BYTES", [5], ["aGk="] * 5), "holds 5 images; at most 4"),
        (_v2("BYTES", [0], []), "no images"),
        (_v2("UINT8", [1, 4, 4], list(range(48))), "shape \\[N, H, W, 3\\]"),
        (_v2("UINT8", [1, 2, 2, 3], [300] * 12), "integers 0..255"),
        (_v2("UINT8", [1, 2, 2, 3], [1] * 5), "needs 12 values, got 5"),
        (_v2("UINT8", [1, 2000, 2000, 3], [0]), "over the limit of 1000000"),
    ],
)
def test_parse_v2_errors(request_, message):
    with pytest.raises(RequestError, match=message):
        wire.parse_v2(request_, LIMITS)


def test_parse_v2_total_bytes_limit():
    big = b"\xff\xd8\xff" + b"\0" * 1_500_000
    with pytest.raises(PayloadTooLarge, match="over the limit of 2000000"):
        wire.parse_v2(_v2("BYTES", [2], [big, big]), LIMITS)


def test_binary_extension_request_keeps_bytes():
    a, b = encode(".jpg", gradient()), encode(".bmp", gradient(8, 8))
    raw = serialize_byte_tensor(np.array([a, b], dtype=object)).item()
    header = (
        b'{"inputs":[{"name":"images","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":'
        + str(len(raw)).encode()
        + b'}}],"parameters":{"confidence":0.5}}'
    )
    request = wire.infer_request_from_binary(header + raw, str(len(header)), "yolov7")
    assert wire.parse_v2(request, LIMITS) == [a, b]
    assert request.parameters == {"confidence": 0.5}
    with pytest.raises(RequestError, match="does not fit"):
        wire.infer_request_from_binary(header + raw[:-3], str(len(header)), "yolov7")
    with pytest.raises(RequestError, match="outside the"):
        wire.infer_request_from_binary(header, "999999", "yolov7")


# ----- v1 ---------------------------------------------------------------------------------------------
def test_parse_v1_forms():
    a = encode(".jpg", gradient())
    text = base64.b64encode(a).decode()
    body = {"instances": [{"image": {"b64": text}}, text, {"b64": text}], "parameters": {"iou": 0.3}}
    sources, params = wire.parse_v1(body, LIMITS)
    assert sources == [a, a, a] and params == {"iou": 0.3}
    for bad, message in [
        ({"inputs": []}, '"instances" to be a list'),
        ({"instances": [{"image": 5}]}, "instance 0"),
        ({"instances": [text] * 5}, "at most 4"),
        ([1, 2], "JSON object"),
    ]:
        with pytest.raises(RequestError, match=message):
            wire.parse_v1(bad, LIMITS)


# ----- responses --------------------------------------------------------------------------------------
class _Det:
    def __init__(self, n: int, offset: float = 0.0):
        self.boxes = np.arange(n * 4, dtype=np.float32).reshape(n, 4) + offset
        self.scores = np.linspace(0.9, 0.5, n, dtype=np.float32) if n else np.zeros(0, np.float32)
        self.classes = np.arange(n, dtype=np.int64) % 3


def test_v2_output_arrays_are_padded_to_the_largest_count():
    arrays = wire.v2_output_arrays([_Det(2), _Det(0), _Det(3, 100.0)], [(10, 20), (30, 40), (50, 60)], NAMES)
    assert arrays["num_detections"].tolist() == [2, 0, 3]
    assert arrays["detection_boxes"].shape == (3, 3, 4) and arrays["detection_boxes"].dtype == np.float32
    assert arrays["detection_boxes"][0, 2].tolist() == [0, 0, 0, 0]
    assert arrays["detection_classes"].tolist() == [[0, 1, -1], [-1, -1, -1], [0, 1, 2]]
    assert arrays["detection_labels"].tolist() == [["person", "bicycle", ""], ["", "", ""], ["person", "bicycle", "car"]]
    assert arrays["detection_scores"][1].tolist() == [0, 0, 0]
    assert arrays["image_sizes"].tolist() == [[10, 20], [30, 40], [50, 60]]
    names = [name for name, _, _ in wire.V2_OUTPUTS]
    assert sorted(arrays) == sorted(names)


def test_v1_response_layout():
    response = wire.v1_response([_Det(1), _Det(0)], [(10, 20), (30, 40)], NAMES)
    assert response == {
        "predictions": [
            {"image_size": [10, 20],
             "detections": [{"box": [0.0, 1.0, 2.0, 3.0], "score": pytest.approx(0.9), "class_id": 0, "label": "person"}]},
            {"image_size": [30, 40], "detections": []},
        ]
    }


# ----- issue 12.8: base64 variants, v1 bodies of any content type, gzip, requested outputs ------------
def test_base64_variants_are_accepted():
    data = bytes(range(256)) * 3  # every byte value: '+' and '/' in standard base64
    standard = base64.b64encode(data).decode()
    variants = {
        "url-safe": base64.urlsafe_b64encode(data).decode(),
        "MIME (76-char lines)": base64.encodebytes(data).decode().replace("\n", "\r\n"),
        "unpadded": base64.b64encode(data[:-1]).decode().rstrip("="),
        "data URL": "data:image/png;base64," + standard,
    }
    assert "-" in variants["url-safe"] and "\r\n" in variants["MIME (76-char lines)"]
    for name, text in variants.items():
        expected = data[:-1] if name == "unpadded" else data
        assert wire.parse_v1({"instances": [text]}, LIMITS)[0] == [expected], name
    with pytest.raises(RequestError, match=r"invalid base64 \(character '\*' at position 0\)"):
        wire.parse_v1({"instances": ["*abc"]}, LIMITS)
    with pytest.raises(RequestError, match="not a whole number of bytes"):
        wire.parse_v1({"instances": ["abcde"]}, LIMITS)


def test_the_strict_base64_fast_path_decodes_as_the_lenient_path():
    """Canonical base64 takes one strict C pass; everything it refuses (variants, junk) the lenient path,
    so every text decodes to what the lenient path alone gives, or is refused with the same message."""
    data = bytes(range(256)) * 3
    texts = [base64.b64encode(data).decode(), base64.b64encode(data[:-1]).decode(), "", "ab==cd==", "YQ===",
             base64.urlsafe_b64encode(data).decode(), " " + base64.b64encode(data).decode(), "é" + "A" * 7,
             "QUJD====", "QR==", "QQ==QQ==", "=QUJD", "*abc"]

    def decode(function, text):
        try:
            return function(text, "image 0")
        except RequestError as error:
            return str(error)

    fast = [decode(wire._b64decode, text) for text in texts]
    assert fast == [decode(wire._b64decode_lenient, text) for text in texts]
    assert fast[0] == data and "invalid base64" in fast[-1]


def test_parse_v1_reads_a_json_body_of_any_content_type():
    """KServe hands a non-JSON content type (text/plain) to the model as bytes: v1 refused it, v2 did not."""
    text = base64.b64encode(encode(".png", gradient(8, 8))).decode()
    sources, parameters = wire.parse_v1(b'{"instances": ["' + text.encode() + b'"], "parameters": {"iou": 0.5}}',
                                        LIMITS)
    assert len(sources) == 1 and parameters == {"iou": 0.5}
    with pytest.raises(RequestError, match="the v1 request body is not valid JSON"):
        wire.parse_v1(b"\x1f\x8b\x08 gzip bytes", LIMITS)


def test_gunzip_is_bounded_by_the_limit():
    import gzip

    body = b'{"instances": []}'
    assert wire.gunzip(gzip.compress(body), 1000) == body
    with pytest.raises(PayloadTooLarge, match="decodes to more than 1000 bytes"):
        wire.gunzip(gzip.compress(bytes(10_000_000)), 1000)  # 10 kB that inflates to 10 MB
    with pytest.raises(RequestError, match="not valid gzip data"):
        wire.gunzip(b"not gzip at all", 1000)
    with pytest.raises(RequestError, match="truncated"):
        wire.gunzip(gzip.compress(body)[:-6], 1000)


def test_requested_outputs_are_checked_and_kept():
    """Issue 12.8: gRPC answered every output whatever the request named."""
    from kserve.protocol.infer_type import RequestedOutput

    request = _v2("BYTES", [1], ["aGk="])
    assert wire.requested_outputs(request) == [name for name, _, _ in wire.V2_OUTPUTS]
    request.request_outputs = [RequestedOutput(name="num_detections"), RequestedOutput(name="image_sizes")]
    assert wire.requested_outputs(request) == ["num_detections", "image_sizes"]
    request.request_outputs = [RequestedOutput(name="masks")]
    with pytest.raises(RequestError, match="unknown output 'masks'"):
        wire.requested_outputs(request)


def test_deeply_nested_data_is_flattened_without_recursion():
    nested: list = ["aGk="]
    for _ in range(100_000):
        nested = [nested]
    assert wire.parse_v2(_v2("BYTES", [1], nested), LIMITS) == [b"hi"]  # no RecursionError


def _detections(counts: list[int]):
    from predictor.boxes import Detections

    rng = np.random.default_rng(7)
    return [Detections(boxes=(rng.random((n, 4)) * 500).astype(np.float32), scores=rng.random(n).astype(np.float32),
                       classes=rng.integers(0, len(NAMES) + 2, n)) for n in counts]  # + 2: ids without a name


@pytest.mark.parametrize("counts", [[0], [3], [5, 0, 2], [200]])
def test_model_outputs_carry_the_same_data_as_kserves_own(counts):
    """The model's InferOutput makes its JSON data in one pass: the same values (and types) as KServe's
    element-by-element conversion, in REST JSON and gRPC; binary data is KServe's own."""
    from kserve.protocol.infer_type import InferOutput, InferResponse

    from predictor.model import _Output

    arrays = wire.v2_output_arrays(_detections(counts), [(480, 640)] * len(counts), NAMES)
    for name, datatype, _ in wire.V2_OUTPUTS:
        array = arrays[name]
        for binary in (False, True):
            ours, theirs = (cls(name=name, shape=list(array.shape), datatype=datatype) for cls in (_Output, InferOutput))
            ours.set_data_from_numpy(array, binary_data=binary)
            theirs.set_data_from_numpy(array, binary_data=binary)
            assert ours.data == theirs.data and ours._raw_data == theirs._raw_data, (name, binary)
            assert [type(v) for v in ours.data or []] == [type(v) for v in theirs.data or []]
            assert ours.parameters == theirs.parameters
        responses = []
        for cls in (_Output, InferOutput):  # through KServe's encoders, as the server sends them
            output = cls(name=name, shape=list(array.shape), datatype=datatype)
            output.data = array
            rest, _ = InferResponse(model_name="m", infer_outputs=[output], response_id="1").to_rest()
            typed = cls(name=name, shape=list(array.shape), datatype=datatype)
            typed.set_data_from_numpy(array, binary_data=False)
            grpc = InferResponse(model_name="m", infer_outputs=[typed], response_id="1", from_grpc=True).to_grpc()
            responses.append((rest, grpc.SerializeToString()))
        assert responses[0] == responses[1], name


def test_model_outputs_keep_kserves_errors():
    from kserve.errors import InferenceError

    from predictor.model import _Output

    with pytest.raises(InferenceError, match="datatype"):
        _Output(name="x", shape=[2], datatype="INT32").set_data_from_numpy(np.zeros(2, np.float32), binary_data=False)
    with pytest.raises(InferenceError, match="shape"):
        _Output(name="x", shape=[3], datatype="FP32").set_data_from_numpy(np.zeros(2, np.float32), binary_data=False)
    with pytest.raises(InferenceError, match="UTF-8"):
        _Output(name="x", shape=[1], datatype="BYTES").set_data_from_numpy(np.array([b"\xff"], object), binary_data=False)
