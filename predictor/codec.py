"""Request decoding and response encoding for the predictor: the wire formats, nothing else.

* request → images: v2 (Open Inference Protocol) ``BYTES`` tensors of encoded images (base64 strings in
  JSON, raw bytes in the binary tensor extension or gRPC) or ``UINT8 [N, H, W, 3]`` RGB pixels; v1
  ``{"instances": [...]}`` with ``{"image": {"b64": ...}}`` or bare base64 strings.
* images are checked *before* decoding: the format and the dimensions are read from the header (PNG
  IHDR, JPEG SOF, BMP info header, WebP VP8/VP8L/VP8X), so a decompression bomb is refused without
  allocating its pixels.
* per-request parameters (``confidence``, ``iou``, ``max_detections``, ``classes``, ``agnostic``, the
  fields of :class:`~predictor.settings.DetectParams`) are read over the server defaults, class names
  resolved with the model's; ``DetectParams`` checks the values, once.
* detections → v2 outputs (``num_detections``, ``detection_boxes``, ``detection_scores``,
  ``detection_classes``, ``detection_labels``, ``image_sizes``) or the v1 ``predictions`` JSON.

Every problem is raised as :class:`RequestError` (a ``kserve.errors.InvalidInput`` → HTTP 400, gRPC
INVALID_ARGUMENT) or :class:`PayloadTooLarge` (HTTP 413) with a message that names the problem.
Nothing here touches torch; nothing is computed at import time.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
from kserve.errors import InvalidInput, ServerNotReady

from predictor.settings import DetectParams

__all__ = [
    "DetectParams",
    "ImageInfo",
    "Limits",
    "Overloaded",
    "PayloadTooLarge",
    "RequestError",
    "V2_OUTPUTS",
    "check_pixel_array",
    "check_pixels",
    "decode_image",
    "grpc_parameters",
    "infer_request_from_binary",
    "parse_v1",
    "parse_v2",
    "probe_image",
    "resolve_classes",
    "resolve_params",
    "v1_response",
    "v2_output_arrays",
]

SUPPORTED_FORMATS = "JPEG, PNG, BMP or WebP"

# name, datatype, shape (-1 = variable) — the v2 response layout, also published in the model metadata.
V2_OUTPUTS: tuple[tuple[str, str, list[int]], ...] = (
    ("num_detections", "INT32", [-1]),
    ("detection_boxes", "FP32", [-1, -1, 4]),
    ("detection_scores", "FP32", [-1, -1]),
    ("detection_classes", "INT32", [-1, -1]),
    ("detection_labels", "BYTES", [-1, -1]),
    ("image_sizes", "INT32", [-1, 2]),
)


class RequestError(InvalidInput):
    """A client error (HTTP 400, gRPC INVALID_ARGUMENT). ``code`` is a short label for the error metric."""

    def __init__(self, reason: str, code: str = "invalid_input"):
        super().__init__(reason)
        self.code = code


class PayloadTooLarge(RequestError):
    """The request body is over ``--max_request_bytes`` (HTTP 413, gRPC INVALID_ARGUMENT)."""

    def __init__(self, reason: str):
        super().__init__(reason, code="payload_too_large")


class Overloaded(ServerNotReady):
    """Too many images in flight (``--max_queued_images``): retry later (HTTP 503, gRPC UNAVAILABLE).

    A :class:`kserve.errors.ServerNotReady` so that KServe's gRPC interceptor answers ``UNAVAILABLE`` with
    ``reason``; REST answers come from :func:`predictor.server.overloaded_handler` (503, ``Retry-After``).
    """

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason
        self.error_msg = reason
        self.code = "overloaded"


@dataclass(frozen=True)
class Limits:
    max_images: int
    max_pixels: int
    max_bytes: int


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "jpeg", "png", "bmp", "webp"
    width: int
    height: int
    orientation: int = 1  # EXIF orientation of a JPEG (1 = as stored)


# ------------------------------------------------------------------------------------------------------
# image headers (no decoding)
# ------------------------------------------------------------------------------------------------------
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}


def _exif_orientation(segment: bytes) -> int:
    """The orientation tag (0x0112) of an APP1 Exif segment's IFD0; 1 when absent or unreadable."""
    if not segment.startswith(b"Exif\0\0") or len(segment) < 14:
        return 1
    tiff = segment[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (entries,) = struct.unpack_from(order + "H", tiff, ifd)
        for index in range(min(entries, 256)):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", tiff, ifd + 2 + 12 * index)
            if tag == 0x0112 and kind == 3:
                (orientation,) = struct.unpack_from(order + "H", value)
                return orientation if 1 <= orientation <= 8 else 1
    except struct.error:
        return 1
    return 1


def _jpeg_info(data: bytes, where: str) -> ImageInfo:
    pos, size = 2, len(data)
    orientation = 1
    while pos < size:
        if data[pos] != 0xFF:
            raise RequestError(f"{where}: corrupt JPEG (bad marker at byte {pos})", "decode")
        while pos < size and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= size:
            break
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            raise RequestError(f"{where}: corrupt JPEG (no frame header before the image data)", "decode")
        if pos + 2 > size:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if marker in _JPEG_SOF:
            if pos + 7 > size:
                break
            height, width = struct.unpack_from(">HH", data, pos + 3)
            if not height or not width:
                raise RequestError(f"{where}: JPEG without dimensions in its frame header", "decode")
            # A JPEG ends with the EOI marker after its scans. In entropy-coded data 0xFF is always
            # stuffed or a restart marker, so a missing FFD9 after the frame header means truncation.
            if data.rfind(b"\xff\xd9", pos) < 0:
                raise RequestError(f"{where}: truncated JPEG (no end-of-image marker)", "decode")
            return ImageInfo("jpeg", width, height, orientation)
        if length < 2:
            raise RequestError(f"{where}: corrupt JPEG (segment length {length})", "decode")
        if marker == 0xE1 and orientation == 1:
            orientation = _exif_orientation(data[pos + 2 : pos + length])
        pos += length
    raise RequestError(f"{where}: truncated JPEG (ends before its frame header)", "decode")


def _png_info(data: bytes, where: str) -> ImageInfo:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise RequestError(f"{where}: truncated or corrupt PNG (no IHDR header)", "decode")
    width, height = struct.unpack_from(">II", data, 16)
    if not width or not height:
        raise RequestError(f"{where}: PNG with zero width or height", "decode")
    if data.rfind(b"IEND", 24) < 0:
        raise RequestError(f"{where}: truncated PNG (no IEND chunk)", "decode")
    return ImageInfo("png", width, height)


def _bmp_info(data: bytes, where: str) -> ImageInfo:
    if len(data) < 26:
        raise RequestError(f"{where}: truncated BMP header", "decode")
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:
        width, height = struct.unpack_from("<HH", data, 18)
    elif header_size >= 40:
        width, height = struct.unpack_from("<ii", data, 18)
    else:
        raise RequestError(f"{where}: unsupported BMP header (size {header_size})", "decode")
    width, height = abs(width), abs(height)
    if not width or not height:
        raise RequestError(f"{where}: BMP with zero width or height", "decode")
    return ImageInfo("bmp", width, height)


def _webp_info(data: bytes, where: str) -> ImageInfo:
    if len(data) < 30:
        raise RequestError(f"{where}: truncated WebP header", "decode")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise RequestError(f"{where}: corrupt WebP (bad VP8 start code)", "decode")
        width, height = struct.unpack_from("<HH", data, 26)
        width, height = width & 0x3FFF, height & 0x3FFF
    elif chunk == b"VP8L":
        if data[20] != 0x2F:
            raise RequestError(f"{where}: corrupt WebP (bad VP8L signature)", "decode")
        (bits,) = struct.unpack_from("<I", data, 21)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    else:
        raise RequestError(f"{where}: unsupported WebP chunk {chunk!r}", "decode")
    if not width or not height:
        raise RequestError(f"{where}: WebP with zero width or height", "decode")
    return ImageInfo("webp", width, height)


def probe_image(data: bytes, where: str = "image") -> ImageInfo:
    """Format and dimensions from the header alone; raises :class:`RequestError` for anything else."""
    if not data:
        raise RequestError(f"{where}: empty (0 bytes); expected an encoded {SUPPORTED_FORMATS} image", "decode")
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_info(data, where)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_info(data, where)
    if data[:2] == b"BM":
        return _bmp_info(data, where)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_info(data, where)
    raise RequestError(
        f"{where}: not a {SUPPORTED_FORMATS} image ({len(data)} bytes starting {data[:8]!r})", "decode"
    )


def check_pixels(width: int, height: int, max_pixels: int, where: str) -> None:
    if width * height > max_pixels:
        raise RequestError(
            f"{where}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels} "
            "(--max_image_pixels)",
            "too_many_pixels",
        )


def decode_image(data: bytes, max_pixels: int, where: str = "image") -> np.ndarray:
    """Encoded bytes → ``uint8 [H, W, 3]`` RGB, checking the pixel count from the header first."""
    info = probe_image(data, where)
    check_pixels(info.width, info.height, max_pixels, where)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        raise RequestError(f"{where}: could not decode the {info.format.upper()} data (corrupt or truncated)", "decode")
    if _IMREAD_RGB is None:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def check_pixel_array(array: np.ndarray, max_pixels: int, where: str = "image") -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise RequestError(f"{where}: expected uint8 [H, W, 3] RGB pixels, got {array.dtype} {list(array.shape)}")
    height, width = array.shape[:2]
    if not height or not width:
        raise RequestError(f"{where}: image with zero width or height")
    check_pixels(width, height, max_pixels, where)
    return np.ascontiguousarray(array)


# ------------------------------------------------------------------------------------------------------
# requests
# ------------------------------------------------------------------------------------------------------
ImageSource = bytes | np.ndarray


def _b64decode(text: str, where: str) -> bytes:
    if text.startswith("data:") and "," in text[:100]:  # data URL
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"{where}: invalid base64 ({error})", "base64") from None


def _check_count(count: int, limits: Limits) -> None:
    if count == 0:
        raise RequestError("the request holds no images")
    if count > limits.max_images:
        raise RequestError(
            f"the request holds {count} images; at most {limits.max_images} are accepted "
            "(--max_images_per_request)",
            "too_many_images",
        )


def _check_total_bytes(sources: Sequence[ImageSource], limits: Limits) -> None:
    total = sum(len(item) if isinstance(item, bytes) else item.nbytes for item in sources)
    if total > limits.max_bytes:
        raise PayloadTooLarge(
            f"the request's images total {total} bytes, over the limit of {limits.max_bytes} (--max_request_bytes)"
        )


def _flatten(items: Any) -> Iterable[Any]:
    for item in items:
        if isinstance(item, list | tuple):
            yield from _flatten(item)
        else:
            yield item


def parse_v2(request: Any, limits: Limits) -> list[ImageSource]:
    """A kserve ``InferRequest`` (REST JSON, REST binary extension or gRPC) → encoded images or pixel arrays."""
    inputs = list(request.inputs or [])
    if len(inputs) != 1:
        raise RequestError(
            f"expected exactly one input tensor (e.g. 'images', BYTES of encoded images), got {len(inputs)}"
        )
    tensor = inputs[0]
    name, datatype = tensor.name, tensor.datatype
    shape = [int(dim) for dim in tensor.shape]
    if any(dim < 0 for dim in shape):
        raise RequestError(f"input '{name}': negative dimension in shape {shape}", "shape")
    if datatype == "BYTES":
        count = int(np.prod(shape)) if shape else 0
        _check_count(count, limits)
        if tensor._raw_data is not None:  # binary extension / gRPC raw_input_contents
            items = _deserialize_bytes(tensor._raw_data, name)
        else:
            items = list(_flatten(tensor.data or []))
        if len(items) != count:
            raise RequestError(f"input '{name}': shape {shape} says {count} elements but {len(items)} were sent", "shape")
        sources: list[ImageSource] = []
        for index, item in enumerate(items):
            where = f"input '{name}' element {index}"
            if isinstance(item, str):
                sources.append(_b64decode(item, where))
            elif isinstance(item, bytes | bytearray | memoryview):
                sources.append(bytes(item))
            else:
                raise RequestError(f"{where}: expected an encoded image (base64 string or bytes), got {type(item).__name__}")
        _check_total_bytes(sources, limits)
        return sources
    if datatype == "UINT8":
        if len(shape) == 3:
            shape = [1, *shape]
        if len(shape) != 4 or shape[3] != 3:
            raise RequestError(f"input '{name}': UINT8 pixels must have shape [N, H, W, 3] (RGB), got {shape}", "shape")
        count, height, width = shape[0], shape[1], shape[2]
        _check_count(count, limits)
        if not height or not width:
            raise RequestError(f"input '{name}': image with zero width or height in shape {shape}", "shape")
        check_pixels(width, height, limits.max_pixels, f"input '{name}'")
        expected = count * height * width * 3
        if expected > limits.max_bytes:
            raise PayloadTooLarge(f"input '{name}': {expected} bytes of pixels, over the limit of {limits.max_bytes}")
        if tensor._raw_data is not None:
            raw = bytes(tensor._raw_data)
            if len(raw) != expected:
                raise RequestError(f"input '{name}': shape {shape} needs {expected} bytes, got {len(raw)}", "shape")
            array = np.frombuffer(raw, np.uint8)
        else:
            flat = list(_flatten(tensor.data or []))
            if len(flat) != expected:
                raise RequestError(f"input '{name}': shape {shape} needs {expected} values, got {len(flat)}", "shape")
            try:
                array = np.asarray(flat, dtype=np.int64)
            except (TypeError, ValueError, OverflowError):
                raise RequestError(f"input '{name}': UINT8 data must be integers 0..255") from None
            if array.size and (array.min() < 0 or array.max() > 255):
                raise RequestError(f"input '{name}': UINT8 data must be integers 0..255")
            array = array.astype(np.uint8)
        return list(array.reshape(count, height, width, 3))
    raise RequestError(
        f"input '{name}' has datatype {datatype}; expected BYTES (encoded {SUPPORTED_FORMATS} images) "
        "or UINT8 [N, H, W, 3] RGB pixels",
        "datatype",
    )


def _deserialize_bytes(raw: bytes, name: str) -> list[bytes]:
    """The v2 binary BYTES layout: each element is a little-endian uint32 length, then its bytes."""
    items, offset, size = [], 0, len(raw)
    view = memoryview(raw)
    while offset < size:
        if offset + 4 > size:
            raise RequestError(f"input '{name}': malformed BYTES tensor (truncated length prefix)", "shape")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > size:
            raise RequestError(f"input '{name}': malformed BYTES tensor (element longer than the data)", "shape")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def parse_v1(body: Any, limits: Limits) -> tuple[list[ImageSource], Mapping[str, Any]]:
    """``{"instances": [...], "parameters": {...}}`` → encoded images and the raw parameters."""
    if not isinstance(body, Mapping):
        raise RequestError('expected a JSON object {"instances": [...]}')
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise RequestError('expected "instances" to be a list of images ({"image": {"b64": ...}} or base64 strings)')
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise RequestError('"parameters" must be a JSON object')
    _check_count(len(instances), limits)
    sources: list[ImageSource] = []
    for index, instance in enumerate(instances):
        where = f"instance {index}"
        value = instance
        if isinstance(value, Mapping):
            value = value.get("image", value.get("image_bytes", value))
        if isinstance(value, Mapping):
            value = value.get("b64")
        if not isinstance(value, str):
            raise RequestError(f'{where}: expected {{"image": {{"b64": "<base64>"}}}} or a base64 string')
        sources.append(_b64decode(value, where))
    _check_total_bytes(sources, limits)
    return sources, parameters


# ------------------------------------------------------------------------------------------------------
# parameters
# ------------------------------------------------------------------------------------------------------
def _as_float(name: str, value: Any) -> float:
    """A number (its range is :class:`DetectParams`' to check)."""
    if isinstance(value, bool):
        raise RequestError(f"parameter '{name}' must be a number in [0, 1], got {value!r}", "parameter")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RequestError(f"parameter '{name}' must be a number in [0, 1], got {value!r}", "parameter") from None


def _as_int(name: str, value: Any) -> int:
    """An integer, or a float without a fraction (its range is :class:`DetectParams`' to check)."""
    if isinstance(value, bool):
        raise RequestError(f"parameter '{name}' must be an integer, got {value!r}", "parameter")
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise RequestError(f"parameter '{name}' must be an integer, got {value!r}", "parameter")
    return number


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise RequestError(f"parameter '{name}' must be true or false, got {value!r}", "parameter")


def resolve_classes(value: Any, names: Sequence[str], source: str = "parameter 'classes'") -> tuple[int, ...] | None:
    """Class ids or names (a list, or a comma-separated string) → sorted ids; empty → None (all)."""
    if value is None:
        return None
    if isinstance(value, str):
        items: list[Any] = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise RequestError(f"{source} must be class ids or names (a list or a comma-separated string)", "parameter")
    if not items:
        return None
    lookup = {name: index for index, name in enumerate(names)}
    folded = {name.lower(): index for index, name in enumerate(names)}
    ids: set[int] = set()
    for item in items:
        if isinstance(item, str) and item.strip().lstrip("-").isdigit():
            item = int(item)
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < len(names):
                raise RequestError(f"{source}: class id {item} is out of range (the model has {len(names)} classes, 0..{len(names) - 1})", "parameter")
            ids.add(item)
        elif isinstance(item, str):
            index = lookup.get(item.strip(), folded.get(item.strip().lower()))
            if index is None:
                raise RequestError(f"{source}: unknown class name {item!r} (see the model metadata for the class names)", "parameter")
            ids.add(index)
        else:
            raise RequestError(f"{source}: {item!r} is neither a class id nor a class name", "parameter")
    return tuple(sorted(ids))


def resolve_params(raw: Mapping[str, Any] | None, defaults: DetectParams, names: Sequence[str]) -> DetectParams:
    """Request parameters over the server defaults. Unknown names are ignored (clients add their own)."""
    raw = dict(raw or {})
    values: dict[str, Any] = {}
    for name, parse in (("confidence", _as_float), ("iou", _as_float), ("max_detections", _as_int),
                        ("agnostic", _as_bool)):
        if raw.get(name) is not None:
            values[name] = parse(name, raw[name])
    if "classes" in raw:
        values["classes"] = resolve_classes(raw["classes"], names)
    try:
        return replace(defaults, **values)
    except ValueError as error:  # out of bounds: DetectParams names the parameter
        raise RequestError(f"parameter {error}", "parameter") from None


def grpc_parameters(parameters: Any) -> dict[str, Any]:
    """gRPC ``InferParameter`` map (or a dict) → plain values."""
    out: dict[str, Any] = {}
    for key, value in (parameters or {}).items():
        if hasattr(value, "WhichOneof"):
            field = value.WhichOneof("parameter_choice")
            out[key] = getattr(value, field) if field else None
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------------------------
# responses
# ------------------------------------------------------------------------------------------------------
def v2_output_arrays(
    detections: Sequence[Any], sizes: Sequence[tuple[int, int]], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-image detections → the padded v2 arrays (K = the largest count in the request)."""
    count = len(detections)
    k = max((len(det.scores) for det in detections), default=0)
    num = np.zeros(count, np.int32)
    boxes = np.zeros((count, k, 4), np.float32)
    scores = np.zeros((count, k), np.float32)
    classes = np.full((count, k), -1, np.int32)
    labels = np.full((count, k), "", dtype=object)
    for index, det in enumerate(detections):
        n = len(det.scores)
        num[index] = n
        if n:
            boxes[index, :n] = det.boxes
            scores[index, :n] = det.scores
            classes[index, :n] = det.classes
            labels[index, :n] = [_label(names, int(c)) for c in det.classes]
    return {
        "num_detections": num,
        "detection_boxes": boxes,
        "detection_scores": scores,
        "detection_classes": classes,
        "detection_labels": labels,
        "image_sizes": np.asarray(sizes, np.int32).reshape(count, 2),
    }


def v1_response(detections: Sequence[Any], sizes: Sequence[tuple[int, int]], names: Sequence[str]) -> dict[str, Any]:
    predictions = []
    for det, (height, width) in zip(detections, sizes, strict=True):
        boxes = np.asarray(det.boxes, np.float32).tolist()
        scores = np.asarray(det.scores, np.float32).tolist()
        classes = np.asarray(det.classes).tolist()
        predictions.append(
            {
                "image_size": [int(height), int(width)],
                "detections": [
                    {"box": box, "score": score, "class_id": int(cls), "label": _label(names, int(cls))}
                    for box, score, cls in zip(boxes, scores, classes, strict=True)
                ],
            }
        )
    return {"predictions": predictions}


def _label(names: Sequence[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


def infer_request_from_binary(body: bytes, json_length: Any, model_name: str) -> Any:
    """A v2 REST request in the binary tensor extension → kserve ``InferRequest``, keeping BYTES raw.

    (KServe 0.21's own parser converts binary BYTES tensors to UTF-8 strings, which fails for images.)
    """
    import orjson
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    try:
        header_size = int(json_length)
    except (TypeError, ValueError):
        raise RequestError(f"Inference-Header-Content-Length must be an integer, got {json_length!r}") from None
    if not 0 < header_size <= len(body):
        raise RequestError(
            f"Inference-Header-Content-Length {header_size} is outside the {len(body)}-byte request body"
        )
    try:
        header = orjson.loads(body[:header_size])
    except orjson.JSONDecodeError as error:
        raise RequestError(f"the JSON header of the binary request is not valid JSON: {error}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise RequestError('the JSON header of the binary request must be an object with an "inputs" list')
    offset = header_size
    inputs = []
    for index, spec in enumerate(header["inputs"]):
        if not isinstance(spec, dict) or not {"name", "shape", "datatype"} <= spec.keys():
            raise RequestError(f"input {index}: needs name, shape and datatype")
        if not isinstance(spec["shape"], list) or not all(isinstance(d, int) for d in spec["shape"]):
            raise RequestError(f"input '{spec['name']}': shape must be a list of integers", "shape")
        parameters = dict(spec.get("parameters") or {})
        tensor = InferInput(name=str(spec["name"]), shape=spec["shape"], datatype=str(spec["datatype"]),
                            parameters=parameters)
        if "data" in spec:
            tensor.data = spec["data"]
        elif "binary_data_size" in parameters:
            size = parameters["binary_data_size"]
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise RequestError(
                    f"input '{tensor.name}': binary_data_size {size!r} does not fit the {len(body) - offset} "
                    "bytes left in the request body", "shape",
                )
            tensor._raw_data = body[offset : offset + size]
            offset += size
        else:
            raise RequestError(f"input '{tensor.name}': neither 'data' nor a 'binary_data_size' parameter")
        inputs.append(tensor)
    if offset != len(body):
        raise RequestError(f"{len(body) - offset} bytes after the last binary input are unaccounted for")
    outputs = header.get("outputs")
    requested = (
        [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in outputs if isinstance(o, dict)]
        if isinstance(outputs, list) and outputs
        else None
    )
    parameters = header.get("parameters")
    return InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=header.get("id"),
        parameters=parameters if isinstance(parameters, dict) else None,
        request_outputs=requested,
    )
