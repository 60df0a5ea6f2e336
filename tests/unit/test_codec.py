"""predictor.codec: header probing, decoding limits, request parsing, parameters and response layout."""

from __future__ import annotations

import base64
import struct
import zlib

import cv2
import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, serialize_byte_tensor

from predictor import codec
from predictor.codec import DetectParams, Limits, PayloadTooLarge, RequestError

LIMITS = Limits(max_images=4, max_pixels=1_000_000, max_bytes=2_000_000)
NAMES = ["person", "bicycle", "car"]
DEFAULTS = DetectParams(confidence=0.25, iou=0.45, max_detections=300)


def _image(height: int = 48, width: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)


def _encode(ext: str, image: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return buffer.tobytes()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("ext", "params", "fmt"),
    [
        (".jpg", (), "jpeg"),
        (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "jpeg"),
        (".png", (), "png"),
        (".bmp", (), "bmp"),
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), "webp"),  # lossy: VP8
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), "webp"),  # lossless: VP8L
    ],
)
def test_probe_and_decode_every_format(ext, params, fmt):
    image = _image(37, 53)
    data = _encode(ext, image, params)
    info = codec.probe_image(data)
    assert (info.format, info.width, info.height) == (fmt, 53, 37)
    decoded = codec.decode_image(data, max_pixels=10_000)
    assert decoded.shape == (37, 53, 3) and decoded.dtype == np.uint8
    if fmt in ("png", "bmp") or params == (cv2.IMWRITE_WEBP_QUALITY, 101):
        np.testing.assert_array_equal(decoded, image)  # lossless, and RGB order preserved


def test_fixture_jpeg_dimensions_from_header(yolo_fixtures):
    data = (yolo_fixtures / "images" / "bus.jpg").read_bytes()
    info = codec.probe_image(data)
    assert (info.width, info.height) == (810, 1080)


def _with_exif_orientation(jpeg: bytes, orientation: int, order: str = "<") -> bytes:
    mark = b"II" if order == "<" else b"MM"
    entry = struct.pack(order + "HHI", 0x0112, 3, 1) + struct.pack(order + "H", orientation) + b"\0\0"
    tiff = mark + struct.pack(order + "HI", 42, 8) + struct.pack(order + "H", 1) + entry + struct.pack(order + "I", 0)
    payload = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.mark.parametrize("order", ["<", ">"])
def test_jpeg_exif_orientation_is_read_and_applied(order):
    plain = _encode(".jpg", _image(30, 50))
    jpeg = _with_exif_orientation(plain, 6, order)
    info = codec.probe_image(jpeg)
    assert (info.width, info.height, info.orientation) == (50, 30, 6)
    rotated = codec.decode_image(jpeg, max_pixels=10_000)
    assert rotated.shape == (50, 30, 3)
    # EXIF orientation 6: the stored image is shown turned 90° clockwise
    np.testing.assert_array_equal(rotated, np.rot90(codec.decode_image(plain, max_pixels=10_000), k=-1))
    assert codec.probe_image(plain).orientation == 1


def test_decompression_bomb_refused_from_the_header():
    bomb = _png_claiming(100_000, 100_000)
    assert len(bomb) < 200
    with pytest.raises(RequestError, match=r"100000x100000 = 10000000000 pixels is over the limit") as caught:
        codec.decode_image(bomb, max_pixels=40_000_000)
    assert caught.value.code == "too_many_pixels"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, this is not an image at all", "not a JPEG, PNG, BMP or WebP image"),
        (b"GIF89a" + b"\0" * 32, "not a JPEG, PNG, BMP or WebP image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated JPEG"),
        (b"\x89PNG\r\n\x1a\n\0\0", "truncated or corrupt PNG"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "truncated WebP"),
    ],
)
def test_bad_bytes_name_the_problem(data, message):
    with pytest.raises(RequestError, match=message):
        codec.decode_image(data, max_pixels=10_000)


def test_truncated_images_are_refused():
    image = _image(120, 160)
    jpeg = _encode(".jpg", image)
    with pytest.raises(RequestError, match="truncated JPEG|could not decode"):
        codec.decode_image(jpeg[: len(jpeg) * 2 // 3], max_pixels=100_000)
    png = _encode(".png", image)
    with pytest.raises(RequestError, match="truncated PNG|could not decode"):
        codec.decode_image(png[: len(png) // 2], max_pixels=100_000)


def test_errors_are_kserve_invalid_input():
    assert issubclass(RequestError, InvalidInput)
    assert issubclass(PayloadTooLarge, InvalidInput)


# ----- v2 ---------------------------------------------------------------------------------------------
def _v2(datatype: str, shape: list[int], data=None, raw: bytes | None = None, parameters=None) -> InferRequest:
    tensor = InferInput(name="images", shape=shape, datatype=datatype, data=data)
    if raw is not None:
        tensor._raw_data = raw
    return InferRequest(model_name="yolov7", infer_inputs=[tensor], parameters=parameters)


def test_parse_v2_base64_raw_and_binary_bytes():
    a, b = _encode(".jpg", _image()), _encode(".png", _image(20, 30))
    as_json = codec.parse_v2(_v2("BYTES", [2], [base64.b64encode(a).decode(), base64.b64encode(b).decode()]), LIMITS)
    as_bytes = codec.parse_v2(_v2("BYTES", [2], [a, b]), LIMITS)  # gRPC bytes_contents
    raw = serialize_byte_tensor(np.array([a, b], dtype=object)).item()
    as_raw = codec.parse_v2(_v2("BYTES", [2, 1], raw=raw), LIMITS)  # raw_input_contents / binary extension
    assert as_json == as_bytes == as_raw == [a, b]


def test_parse_v2_uint8_pixels():
    pixels = np.stack([_image(10, 12), _image(10, 12)[::-1]])
    parsed = codec.parse_v2(_v2("UINT8", [2, 10, 12, 3], pixels.flatten().tolist()), LIMITS)
    np.testing.assert_array_equal(np.stack(parsed), pixels)
    parsed_raw = codec.parse_v2(_v2("UINT8", [2, 10, 12, 3], raw=pixels.tobytes()), LIMITS)
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
        codec.parse_v2(request_, LIMITS)


def test_parse_v2_total_bytes_limit():
    big = b"\xff\xd8\xff" + b"\0" * 1_500_000
    with pytest.raises(PayloadTooLarge, match="over the limit of 2000000"):
        codec.parse_v2(_v2("BYTES", [2], [big, big]), LIMITS)


def test_binary_extension_request_keeps_bytes():
    a, b = _encode(".jpg", _image()), _encode(".bmp", _image(8, 8))
    raw = serialize_byte_tensor(np.array([a, b], dtype=object)).item()
    header = (
        b'{"inputs":[{"name":"images","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":'
        + str(len(raw)).encode()
        + b'}}],"parameters":{"confidence":0.5}}'
    )
    request = codec.infer_request_from_binary(header + raw, str(len(header)), "yolov7")
    assert codec.parse_v2(request, LIMITS) == [a, b]
    assert request.parameters == {"confidence": 0.5}
    with pytest.raises(RequestError, match="does not fit"):
        codec.infer_request_from_binary(header + raw[:-3], str(len(header)), "yolov7")
    with pytest.raises(RequestError, match="outside the"):
        codec.infer_request_from_binary(header, "999999", "yolov7")


# ----- v1 ---------------------------------------------------------------------------------------------
def test_parse_v1_forms():
    a = _encode(".jpg", _image())
    text = base64.b64encode(a).decode()
    body = {"instances": [{"image": {"b64": text}}, text, {"b64": text}], "parameters": {"iou": 0.3}}
    sources, params = codec.parse_v1(body, LIMITS)
    assert sources == [a, a, a] and params == {"iou": 0.3}
    for bad, message in [
        ({"inputs": []}, '"instances" to be a list'),
        ({"instances": [{"image": 5}]}, "instance 0"),
        ({"instances": [text] * 5}, "at most 4"),
        ([1, 2], "JSON object"),
    ]:
        with pytest.raises(RequestError, match=message):
            codec.parse_v1(bad, LIMITS)


# ----- parameters -------------------------------------------------------------------------------------
def test_resolve_params_overrides_and_defaults():
    assert codec.resolve_params(None, DEFAULTS, NAMES) == DEFAULTS
    params = codec.resolve_params(
        {"confidence": "0.05", "iou": 0.6, "max_detections": 7, "classes": "car,0", "agnostic": "true",
         "binary_data_output": False},
        DEFAULTS, NAMES,
    )
    assert params == DetectParams(confidence=0.05, iou=0.6, max_detections=7, classes=(0, 2), agnostic=True)
    assert codec.resolve_params({"classes": ["Person", 1]}, DEFAULTS, NAMES).classes == (0, 1)
    assert codec.resolve_params({"classes": ""}, DEFAULTS, NAMES).classes is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"confidence": 1.5}, "'confidence' must be in \\[0, 1\\]"),
        ({"iou": -0.1}, "'iou' must be in \\[0, 1\\]"),
        ({"confidence": "high"}, "'confidence' must be a number"),
        ({"max_detections": 0}, "'max_detections' must be in"),
        ({"max_detections": 2.5}, "must be an integer"),
        ({"classes": "person,unicorn"}, "unknown class name 'unicorn'"),
        ({"classes": [3]}, "class id 3 is out of range"),
        ({"agnostic": "maybe"}, "'agnostic' must be true or false"),
    ],
)
def test_resolve_params_errors(raw, message):
    with pytest.raises(RequestError, match=message):
        codec.resolve_params(raw, DEFAULTS, NAMES)


# ----- responses --------------------------------------------------------------------------------------
class _Det:
    def __init__(self, n: int, offset: float = 0.0):
        self.boxes = np.arange(n * 4, dtype=np.float32).reshape(n, 4) + offset
        self.scores = np.linspace(0.9, 0.5, n, dtype=np.float32) if n else np.zeros(0, np.float32)
        self.classes = np.arange(n, dtype=np.int64) % 3


def test_v2_output_arrays_are_padded_to_the_largest_count():
    arrays = codec.v2_output_arrays([_Det(2), _Det(0), _Det(3, 100.0)], [(10, 20), (30, 40), (50, 60)], NAMES)
    assert arrays["num_detections"].tolist() == [2, 0, 3]
    assert arrays["detection_boxes"].shape == (3, 3, 4) and arrays["detection_boxes"].dtype == np.float32
    assert arrays["detection_boxes"][0, 2].tolist() == [0, 0, 0, 0]
    assert arrays["detection_classes"].tolist() == [[0, 1, -1], [-1, -1, -1], [0, 1, 2]]
    assert arrays["detection_labels"].tolist() == [["person", "bicycle", ""], ["", "", ""], ["person", "bicycle", "car"]]
    assert arrays["detection_scores"][1].tolist() == [0, 0, 0]
    assert arrays["image_sizes"].tolist() == [[10, 20], [30, 40], [50, 60]]
    names = [name for name, _, _ in codec.V2_OUTPUTS]
    assert sorted(arrays) == sorted(names)


def test_v1_response_layout():
    response = codec.v1_response([_Det(1), _Det(0)], [(10, 20), (30, 40)], NAMES)
    assert response == {
        "predictions": [
            {"image_size": [10, 20],
             "detections": [{"box": [0.0, 1.0, 2.0, 3.0], "score": pytest.approx(0.9), "class_id": 0, "label": "person"}]},
            {"image_size": [30, 40], "detections": []},
        ]
    }
