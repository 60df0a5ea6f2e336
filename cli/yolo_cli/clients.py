"""Where detections come from: a running predictor over REST or gRPC (Open Inference Protocol v2), or
the model in-process (``--local``). Every client has the same small surface:

* ``names`` — the model's class names (None when the server does not publish them);
* ``detect(frames, params) -> list[Result]`` — one result per frame, in order; thread-safe for the
  remote clients (``pipeline`` keeps several requests in flight so the server's dynamic batcher can
  coalesce them);
* ``close()``.

Transport failures become :class:`PredictorUnreachable` ("cannot reach the predictor at …") and error
answers :class:`PredictorRejected` carrying the server's own message.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .errors import CliError, PredictorRejected, PredictorUnreachable
from .sources import Frame

INPUT_NAME = "images"


@dataclass(frozen=True)
class Params:
    """Per-request thresholds, named as the request parameters (and ``predictor.settings.DetectParams``);
    ``None`` leaves the predictor's default; ``classes`` holds ids, or names to be resolved by the server."""

    confidence: float | None = None
    iou: float | None = None
    max_detections: int | None = None
    classes: tuple[int | str, ...] | None = None
    agnostic: bool = False

    def chosen(self) -> dict[str, float | int]:
        """The thresholds given (not left to the predictor's default), by name."""
        values = {"confidence": self.confidence, "iou": self.iou, "max_detections": self.max_detections}
        return {name: value for name, value in values.items() if value is not None}

    def as_request_parameters(self) -> dict[str, Any]:
        parameters: dict[str, Any] = dict(self.chosen())
        if self.classes:
            parameters["classes"] = ",".join(str(item) for item in self.classes)
        if self.agnostic:
            parameters["agnostic"] = True
        return parameters


@dataclass
class Result:
    """Detections for one image: boxes float32 [K, 4] (x1, y1, x2, y2, original pixels), scores float32
    [K], classes int64 [K], labels (K names), and the image's (height, width)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    labels: list[str]
    height: int
    width: int
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _label(names: Sequence[str] | None, index: int) -> str:
    return names[index] if names is not None and 0 <= index < len(names) else str(index)


# ------------------------------------------------------------------------------------------------------
# in-process
# ------------------------------------------------------------------------------------------------------
class LocalClient:
    """The model in this process (``predictor.engine.Detector``): one forward at a time, batches of
    ``--batch`` frames."""

    needs_bytes = False
    max_workers = 1  # torch uses the cores itself; a second thread would only contend
    description: str

    def __init__(self, weights: str, *, device: str = "auto", input_size: int | None = None,
                 variant: str | None = None) -> None:
        try:
            from predictor.engine import Detector
        except ImportError as error:  # the [predictor] extra is not installed
            raise CliError(
                f"--local needs the predictor package and torch (pip install 'yolo-v7[predictor]'): {error}"
            ) from None
        try:
            self.detector = Detector.from_weights(weights, variant=variant, device=device,
                                                  input_size=input_size or None)
        except FileNotFoundError as error:
            raise CliError(str(error)) from None
        except (ValueError, RuntimeError, OSError) as error:
            raise CliError(f"cannot load the weights {weights}: {error}") from None
        self.names = list(self.detector.names)
        self.description = f"local {self.detector.variant} ({weights}, {self.detector.device})"
        self._lock = threading.Lock()

    def detect(self, frames: Sequence[Frame], params: Params) -> list[Result]:
        from predictor.settings import DetectParams  # the predictor's own defaults where none is given

        classes = None
        if params.classes:
            classes = tuple(resolve_class(item, self.names) for item in params.classes)
        try:
            chosen = DetectParams(**params.chosen(), classes=classes, agnostic=params.agnostic)
        except ValueError as error:
            raise CliError(str(error)) from None
        images = [cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB) for frame in frames]
        with self._lock:
            detections = self.detector.detect(images, chosen)
        results = []
        for image, det in zip(images, detections, strict=True):
            classes_ = np.asarray(det.classes, np.int64)
            results.append(Result(
                boxes=np.asarray(det.boxes, np.float32).reshape(-1, 4),
                scores=np.asarray(det.scores, np.float32),
                classes=classes_,
                labels=[_label(self.names, int(c)) for c in classes_],
                height=int(image.shape[0]),
                width=int(image.shape[1]),
            ))
        return results

    def close(self) -> None:
        pass


def resolve_class(item: int | str, names: Sequence[str] | None) -> int:
    """A class id or name → id (case-insensitive names); CliError naming the problem otherwise."""
    if isinstance(item, int) or (isinstance(item, str) and item.strip().isdigit()):
        index = int(item)
        if names is not None and not 0 <= index < len(names):
            raise CliError(f"--classes: class id {index} is out of range (the model has {len(names)} classes)")
        return index
    if names is None:
        raise CliError(f"--classes: cannot resolve the name {item!r}: the model's class names are unknown")
    folded = {name.lower(): index for index, name in enumerate(names)}
    index = folded.get(str(item).strip().lower())
    if index is None:
        raise CliError(f"--classes: unknown class name {item!r} (the model knows: {', '.join(names)})")
    return index


# ------------------------------------------------------------------------------------------------------
# REST (v2)
# ------------------------------------------------------------------------------------------------------
def _outputs_to_results(outputs: dict[str, np.ndarray], count: int, names: Sequence[str] | None) -> list[Result]:
    try:
        num = np.asarray(outputs["num_detections"]).reshape(-1).astype(np.int64)
        boxes = np.asarray(outputs["detection_boxes"], np.float32)
        scores = np.asarray(outputs["detection_scores"], np.float32)
        classes = np.asarray(outputs["detection_classes"]).astype(np.int64)
        labels = outputs.get("detection_labels")
        sizes = np.asarray(outputs["image_sizes"]).reshape(-1, 2).astype(np.int64)
    except KeyError as error:
        raise PredictorRejected(f"the predictor's answer lacks the output {error.args[0]!r}") from None
    if num.shape[0] != count:
        raise PredictorRejected(f"the predictor answered {num.shape[0]} results for {count} images")
    k = scores.shape[1] if scores.ndim == 2 else 0
    boxes = boxes.reshape(count, k, 4)
    scores = scores.reshape(count, k)
    classes = classes.reshape(count, k)
    if labels is not None:
        labels = np.asarray(labels, dtype=object).reshape(count, k)
    results = []
    for index in range(count):
        n = int(num[index])
        image_classes = classes[index, :n].copy()
        if labels is not None:
            image_labels = [item.decode() if isinstance(item, bytes) else str(item) for item in labels[index, :n]]
        else:
            image_labels = [_label(names, int(c)) for c in image_classes]
        results.append(Result(
            boxes=boxes[index, :n].copy(),
            scores=scores[index, :n].copy(),
            classes=image_classes,
            labels=image_labels,
            height=int(sizes[index, 0]),
            width=int(sizes[index, 1]),
        ))
    return results


_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64,
           "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "FP16": np.float16, "BOOL": np.bool_}


def _deserialize_bytes(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        items.append(bytes(raw[offset:offset + length]))
        offset += length
    return items


def _serialize_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


class RestClient:
    """REST v2: ``POST {url}/v2/models/{model}/infer`` with a BYTES input ``images`` (base64 strings in
    JSON, the encoding every v2 JSON client can produce)."""

    needs_bytes = True

    def __init__(self, url: str, model: str, *, timeout: float = 60.0, max_workers: int = 1) -> None:
        import httpx

        self._httpx = httpx
        self.url = url.rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        self.model = model
        self.max_workers = max_workers
        self.description = f"{self.url} (REST v2, model {model})"
        limits = httpx.Limits(max_connections=max(4, max_workers * 2), max_keepalive_connections=max(4, max_workers * 2))
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0), limits=limits)
        metadata = self._call("GET", f"/v2/models/{model}")
        self.metadata = metadata
        self.names = class_names_from_metadata(metadata)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        httpx = self._httpx
        try:
            response = self.client.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as error:
            raise PredictorUnreachable(f"cannot reach the predictor at {self.url}: {_reason(error)}") from None
        except httpx.TimeoutException:
            raise PredictorUnreachable(
                f"the predictor at {self.url} did not answer in time (--timeout {self.client.timeout.read:g} s)"
            ) from None
        except httpx.HTTPError as error:
            raise PredictorUnreachable(f"cannot reach the predictor at {self.url}: {_reason(error)}") from None
        if response.status_code >= 400:
            raise PredictorRejected(
                f"the predictor at {self.url} answered HTTP {response.status_code}: {_error_message(response)}"
            )
        try:
            return response.json()
        except ValueError:
            raise PredictorRejected(f"the predictor at {self.url} answered something that is not JSON") from None

    def detect(self, frames: Sequence[Frame], params: Params) -> list[Result]:
        body = {
            "inputs": [{
                "name": INPUT_NAME,
                "shape": [len(frames)],
                "datatype": "BYTES",
                "data": [base64.b64encode(frame.data).decode("ascii") for frame in frames],
            }],
            "parameters": params.as_request_parameters(),
        }
        answer = self._call(
            "POST", f"/v2/models/{self.model}/infer",
            content=json.dumps(body).encode(), headers={"content-type": "application/json"},
        )
        outputs: dict[str, np.ndarray] = {}
        for output in answer.get("outputs", []):
            shape = [int(dim) for dim in output.get("shape", [])]
            data = output.get("data", [])
            if output.get("datatype") == "BYTES":
                outputs[output["name"]] = np.asarray(data, dtype=object).reshape(shape)
            else:
                outputs[output["name"]] = np.asarray(data, dtype=_DTYPES.get(output.get("datatype"), np.float32)).reshape(shape)
        return _outputs_to_results(outputs, len(frames), self.names)

    def close(self) -> None:
        self.client.close()


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text or type(error).__name__


def _error_message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if key in body:
                value = body[key]
                return value if isinstance(value, str) else json.dumps(value)
    return json.dumps(body)[:500]


def class_names_from_metadata(metadata: Any) -> list[str] | None:
    """Class names from ``GET /v2/models/{name}``: ``parameters.names``/``class_names``/``labels`` (a list,
    a JSON list or a {id: name} map), at the top level or under ``parameters``."""
    if not isinstance(metadata, dict):
        return None
    places = [metadata.get("parameters") or {}, metadata]
    for place in places:
        if not isinstance(place, dict):
            continue
        for key in ("names", "class_names", "classes", "labels"):
            value = place.get(key)
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    value = [item.strip() for item in value.split(",")]
            if isinstance(value, dict):
                try:
                    value = [value[k] for k in sorted(value, key=lambda k: int(k))]
                except (TypeError, ValueError):
                    continue
            if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
                return value
    return None


# ------------------------------------------------------------------------------------------------------
# gRPC (v2)
# ------------------------------------------------------------------------------------------------------
def _grpc_stubs() -> tuple[Any, Any]:
    """KServe's generated v2 stubs. Importing ``kserve`` parses ``sys.argv`` at import time (its model
    server's argument parser), which would trip over this command's own options: hide them meanwhile."""
    import sys

    saved = sys.argv
    sys.argv = saved[:1]
    try:
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
    finally:
        sys.argv = saved
    return pb, pb_grpc


class GrpcClient:
    """gRPC v2 ``ModelInfer`` with a BYTES input ``images`` sent as raw length-prefixed contents."""

    needs_bytes = True

    def __init__(self, target: str, model: str, *, timeout: float = 60.0, max_workers: int = 1,
                 names: list[str] | None = None) -> None:
        import grpc

        pb, pb_grpc = _grpc_stubs()
        self._grpc, self._pb = grpc, pb
        self.target = target.split("://", 1)[-1].rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_workers = max_workers
        self.description = f"{self.target} (gRPC v2, model {model})"
        options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
        self.channel = grpc.insecure_channel(self.target, options=options)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.names = names
        try:
            grpc.channel_ready_future(self.channel).result(timeout=min(timeout, 10.0))
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise PredictorUnreachable(f"cannot reach the predictor at {self.target} (gRPC): connection failed") from None
        try:
            ready = self.stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None
        if not ready.ready:
            raise PredictorRejected(f"the predictor at {self.target} says model {model!r} is not ready")

    def _error(self, error: Any) -> CliError:
        grpc = self._grpc
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else str(error)
        if code in (grpc.StatusCode.UNAVAILABLE,):
            return PredictorUnreachable(f"cannot reach the predictor at {self.target} (gRPC): {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return PredictorUnreachable(f"the predictor at {self.target} did not answer in time (--timeout {self.timeout:g} s)")
        name = code.name if code is not None else "error"
        return PredictorRejected(f"the predictor at {self.target} answered {name}: {details}")

    def detect(self, frames: Sequence[Frame], params: Params) -> list[Result]:
        pb = self._pb
        request = pb.ModelInferRequest(model_name=self.model)
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = INPUT_NAME, "BYTES"
        tensor.shape.append(len(frames))
        request.raw_input_contents.append(_serialize_bytes([frame.data for frame in frames]))
        for key, value in params.as_request_parameters().items():
            if isinstance(value, bool):
                request.parameters[key].bool_param = value
            elif isinstance(value, int):
                request.parameters[key].int64_param = value
            else:  # floats travel as strings: InferParameter has no double field in KServe's proto
                request.parameters[key].string_param = repr(value) if isinstance(value, float) else str(value)
        try:
            response = self.stub.ModelInfer(request, timeout=self.timeout)
        except self._grpc.RpcError as error:
            raise self._error(error) from None
        outputs: dict[str, np.ndarray] = {}
        raw = list(response.raw_output_contents)
        for position, output in enumerate(response.outputs):
            shape = [int(dim) for dim in output.shape]
            if raw:
                if output.datatype == "BYTES":
                    array = np.asarray(_deserialize_bytes(raw[position]), dtype=object)
                else:
                    array = np.frombuffer(raw[position], dtype=_DTYPES[output.datatype])
            else:
                contents = output.contents
                if output.datatype == "BYTES":
                    array = np.asarray(list(contents.bytes_contents), dtype=object)
                elif output.datatype == "FP32":
                    array = np.asarray(contents.fp32_contents, np.float32)
                elif output.datatype in ("INT64",):
                    array = np.asarray(contents.int64_contents, np.int64)
                else:
                    array = np.asarray(contents.int_contents, np.int32)
            outputs[output.name] = array.reshape(shape)
        return _outputs_to_results(outputs, len(frames), self.names)

    def close(self) -> None:
        self.channel.close()
