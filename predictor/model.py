"""The KServe model: wiring only. ``load`` builds the pipeline; the three KServe steps call it.

* ``preprocess``: parse the request (v1 dict, v2 REST or gRPC ``InferRequest``) with :mod:`predictor.wire`,
  resolve the request's thresholds (:mod:`predictor.params`), decode + letterbox in the thread pool.
* ``predict``: the dynamic batcher (:mod:`predictor.batching`) runs the forward and NMS.
* ``postprocess``: detections → v1 JSON or v2 tensors.

Admission (``--max_queued_images``): ``preprocess`` takes one slot per image once the request is parsed,
before any image is decoded; a request that does not fit gets :class:`~predictor.errors.Overloaded` (503,
gRPC ``UNAVAILABLE``) at once. ``__call__`` (KServe's entry for every protocol) gives the slots back when
the request ends — answered, failed or cancelled.

Errors: a rejected request is counted (``yolo_request_errors_total{protocol, code}``) and logged in one
line with its id by :func:`predictor.errors.log_rejection`; anything else that escapes ``preprocess`` is
our bug, counted as ``code="internal"`` and left to KServe (500 / INTERNAL, with its traceback).
"""

from __future__ import annotations

import logging
import os
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kserve
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.utils.numpy_codec import from_np_dtype

from predictor import images, wire
from predictor.errors import Overloaded, RequestError, ServiceError, log_rejection, request_id
from predictor.params import grpc_parameters, resolve_classes, resolve_params
from predictor.settings import DetectParams, PredictorSettings

__all__ = ["WEIGHT_SUFFIXES", "YoloV7Model", "resolve_weights"]

log = logging.getLogger("predictor")

WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")
# Test and benchmark hook (not a flag): the forward sleeps this many ms and finds nothing, so that a benchmark
# measures the front end alone (its CPU cost per request) with a device-like, CPU-free forward.
STUB_FORWARD_ENV = "YOLO_TEST_STUB_FORWARD_MS"


class _Output(InferOutput):
    """KServe's ``InferOutput``, whose JSON data is made in one pass (``ndarray.tolist``) instead of one
    ``.item()`` per element (KServe's way: ~0.3 ms for 139 detections): the same Python values. Every
    other case (binary data, a shape or datatype that does not match) is KServe's own."""

    def set_data_from_numpy(self, output_tensor: Any, binary_data: bool = True) -> None:
        dtype = getattr(output_tensor, "dtype", None)
        kind = getattr(dtype, "kind", None)
        numbers = kind in ("b", "i", "u", "f") and from_np_dtype(dtype) == self.datatype
        text = kind == "O" and self.datatype == "BYTES"
        if binary_data or not (numbers or text) or list(output_tensor.shape) != list(self.shape):
            super().set_data_from_numpy(output_tensor, binary_data)  # KServe's own, its errors included
            return
        if self._parameters:
            self._parameters.pop("binary_data_size", None)
        self._raw_data = None
        values = output_tensor.ravel().tolist()
        if kind == "O":
            try:
                values = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
            except UnicodeDecodeError:  # KServe's error for it
                super().set_data_from_numpy(output_tensor, binary_data)
                return
        self._data = values


def stub_forward(detector: Any, milliseconds: float) -> None:
    """Replace ``detector.forward`` by a sleep of ``milliseconds`` returning zeros of the real output's shape."""
    import torch

    size = detector.input_size
    columns = detector.forward(torch.zeros(1, 3, size, size)).shape[2]
    log.warning("%s=%s: the forward is a stub (%g ms sleep, no detections)", STUB_FORWARD_ENV, milliseconds,
                milliseconds)

    def forward(batch: Any) -> Any:
        time.sleep(milliseconds / 1000.0)
        return torch.zeros(batch.shape[0], 1, columns)  # one empty candidate row: the NMS costs ~nothing

    detector.forward = forward


def resolve_weights(path: str | Path) -> Path:
    """A checkpoint file, or a directory holding exactly one ``.pt``/``.pth``/``.safetensors`` file — or, with no
    checkpoint, exactly one exported ``.onnx`` with its metadata ``.onnx.json`` (served by the CPU engines)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
        if not found:
            found = sorted(p for p in path.glob("*.onnx") if p.is_file() and Path(f"{p}.json").is_file())
        if len(found) == 1:
            return found[0]
        if not found:
            raise FileNotFoundError(
                f"--weights {path}: the directory holds no checkpoint ({', '.join(WEIGHT_SUFFIXES)} file) and no "
                "exported model (.onnx with its .onnx.json)"
            )
        raise ValueError(
            f"--weights {path}: the directory holds {len(found)} checkpoints ({', '.join(p.name for p in found)}); "
            "pass the file itself"
        )
    raise FileNotFoundError(f"--weights {path}: no such file or directory")


@dataclass(eq=False)
class _Slots:
    """Admission slots held by the request being served (in this task's context), released at its end."""

    count: int = 0


_SLOTS: ContextVar[_Slots | None] = ContextVar("yolo_admission_slots", default=None)


@dataclass(eq=False)
class _Job:
    """One request between the KServe steps."""

    protocol: str  # "v1", "v2" or "grpc"
    request: Any
    prepared: list[Any]
    outputs: list[str]  # v2 output names to answer with
    detections: list[Any] | None = None


def warmup_batch_sizes(accel: str, device_type: str, max_batch_size: int) -> list[int]:
    """Batch sizes run (and on CUDA captured as graphs) before the model reports ready.

    ``compile``: powers of two and the largest batch (each size is a compilation of ~10 s; other sizes
    are padded up to the next one). ``cudagraph``: every size up to 16 (a capture takes milliseconds),
    then the same powers of two: a larger batch run eagerly would launch hundreds of kernels, each
    needing the GIL that the event loop holds under load (measured on an H200 at concurrency 64: 42 ms
    per eager forward of ~8-32 images, against 4-16 ms replayed). CPU: one forward.
    """
    if device_type != "cuda":
        return [1]
    doubling = {1 << k for k in range(max_batch_size.bit_length()) if 1 << k < max_batch_size} | {max_batch_size}
    if accel == "compile":
        return sorted(doubling)
    return sorted(set(range(1, min(max_batch_size, 16) + 1)) | doubling)


class YoloV7Model(kserve.Model):
    def __init__(self, name: str, settings: PredictorSettings):
        super().__init__(name, return_response_headers=True)
        self.settings = settings
        self.pipeline: Any = None
        self.names: list[str] = []
        self.defaults: DetectParams | None = None
        self.metrics: Any = None
        self.admission: Any = None
        self.batch_plan: Any = None  # predictor.batch_plan.BatchPlan, set by load

    # ----- lifecycle ----------------------------------------------------------------------------------
    def load(self) -> bool:
        from predictor.batch_plan import plan_batching
        from predictor.metrics import service_metrics
        from predictor.pipeline import DetectionPipeline
        from predictor.runtimes.detector import torch_free_detector
        from predictor.runtimes.export import cache_dirs

        s = self.settings
        weights = resolve_weights(s.weights)
        start = time.perf_counter()
        detector = torch_free_detector(s, weights)  # an exported model on a CPU engine: no torch imported
        if detector is None:
            from predictor.engine import Detector
            from predictor.runtimes import attach

            detector = Detector.from_weights(
                weights,
                variant=s.variant or None,
                device=s.device,
                precision="fp32" if s.precision == "bf16" else s.precision,  # bf16: the CPU engine's only
                input_size=s.input_size or None,
                accel=s.accel,
            )
            attach(detector, engine=s.engine, weights=weights, precision=s.precision, cache=s.engine_cache or None)
        stub_ms = os.environ.get(STUB_FORWARD_ENV)
        if stub_ms:
            stub_forward(detector, float(stub_ms))
        if s.warmup:
            detector.warmup(warmup_batch_sizes(detector.accel, detector.device.type, s.max_batch_size))
        self.batch_plan = plan_batching(detector, s, measurable=s.warmup and not stub_ms,
                                        cache_folders=cache_dirs(weights, s.engine_cache or None))
        log.info("%s", self.batch_plan.log_line())
        pipeline = DetectionPipeline(
            detector,
            limits=self.limits(),
            max_batch_size=self.batch_plan.max_batch_size,
            max_batch_delay_s=self.batch_plan.max_batch_delay_ms / 1000.0,
            metrics=service_metrics(),
            batching=self.batch_plan.describe(),
        )
        self.serve_through(pipeline, detector.names)
        log.info(
            "model %r ready: weights %s, variant %s, device %s, engine %s, precision %s, input size %d, "
            "%d classes, accel %s, max batch %d, max delay %.1f ms (loaded in %.1f s)",
            self.name, weights, detector.variant, detector.device, detector.engine, detector.precision,
            detector.input_size, detector.num_classes, detector.accel, self.batch_plan.max_batch_size,
            self.batch_plan.max_batch_delay_ms, time.perf_counter() - start,
        )
        self.ready = True
        return self.ready

    def limits(self) -> wire.Limits:
        s = self.settings
        return wire.Limits(s.max_images_per_request, s.max_image_pixels, s.max_request_bytes)

    def serve_through(self, pipeline: Any, names: list[str]) -> None:
        """Serve through ``pipeline`` (a :class:`~predictor.pipeline.DetectionPipeline`, or a front end's
        link to the model process), whose model has these class ``names``."""
        from predictor.batching import Admission

        s = self.settings
        self.names = list(names)
        self.defaults = DetectParams(
            confidence=s.conf_threshold,
            iou=s.iou_threshold,
            max_detections=s.max_detections,
            classes=resolve_classes(list(s.classes), self.names, "--classes") if s.classes else None,
        )
        self.pipeline = pipeline
        self.metrics = pipeline.metrics
        self.admission = Admission(s.max_queued_images, on_change=self.metrics.in_flight.set)

    # ----- metadata -----------------------------------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [{"name": "images", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": name, "datatype": dtype, "shape": shape} for name, dtype, shape in wire.V2_OUTPUTS]

    def describe(self) -> dict[str, Any]:
        """Extra model metadata (REST ``GET /v2/models/{name}`` → ``parameters``); the batcher's size and delay
        and why (``batching``: :class:`predictor.batch_plan.BatchPlan`) come from the pipeline's summary."""
        defaults = self.defaults
        return {
            **self.pipeline.summary(),
            "class_names": list(self.names),
            "confidence": defaults.confidence,
            "iou": defaults.iou,
            "max_detections": defaults.max_detections,
            "classes": None if defaults.classes is None else list(defaults.classes),
            "max_images_per_request": self.settings.max_images_per_request,
            "max_queued_images": self.settings.max_queued_images,
            "max_image_pixels": self.settings.max_image_pixels,
            "max_request_bytes": self.settings.max_request_bytes,
            "input_datatypes": ["BYTES", "UINT8"],
            "image_formats": list(images.FORMAT_NAMES),
            "min_image_side": images.MIN_IMAGE_SIDE,
            "max_aspect_ratio": images.MAX_ASPECT_RATIO,
        }

    # ----- admission ---------------------------------------------------------------------------------
    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """KServe's preprocess → predict → postprocess, giving back the request's admission slots when it
        ends, however it ends (answer, error, or cancellation when the client goes away)."""
        slots = _Slots()
        token = _SLOTS.set(slots)
        try:
            return await super().__call__(*args, **kwargs)
        finally:
            _SLOTS.reset(token)
            if slots.count:
                self.admission.release(slots.count)

    def _admit(self, count: int, protocol: str) -> None:
        """Take ``count`` slots for this request, or refuse it: 400 if it can never fit, else 503."""
        slots = _SLOTS.get()
        if slots is None:  # not called through __call__: nothing would give the slots back
            return
        admission = self.admission
        if count > admission.limit:
            raise RequestError(
                f"the request holds {count} images; at most {admission.limit} are admitted at once "
                "(--max_queued_images)",
                "too_many_images",
            )
        if not admission.try_acquire(count):
            self.metrics.errors.labels(protocol, "overloaded").inc()
            raise Overloaded(
                f"server busy: {admission.in_flight} images in flight, {count} more would exceed the limit of "
                f"{admission.limit} (--max_queued_images); retry later"
            )
        slots.count += count

    # ----- the three steps ----------------------------------------------------------------------------
    def validate(self, payload: Any) -> Any:
        return payload  # preprocess validated it already and returns a _Job

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> _Job:
        limits = self.pipeline.limits
        if isinstance(payload, InferRequest):
            protocol = "grpc" if payload.from_grpc else "v2"
        else:
            protocol = "v1"
        self.metrics.requests.labels(protocol).inc()
        try:
            if protocol == "v1":
                sources, raw_params = wire.parse_v1(payload, limits)
                outputs: list[str] = []
            else:
                sources = wire.parse_v2(payload, limits)
                raw_params = grpc_parameters(payload.parameters)
                outputs = wire.requested_outputs(payload)
            params = resolve_params(raw_params, self.defaults, self.names)
            self._admit(len(sources), protocol)  # before decoding: decoded images are what takes memory
            prepared = await self.pipeline.prepare(sources, params)
        except ServiceError as error:
            if not isinstance(error, Overloaded):  # _admit counted it
                self.metrics.errors.labels(protocol, error.code).inc()
            given = payload.id if isinstance(payload, InferRequest) else None
            log_rejection(error, protocol, request_id(headers, given))
            raise
        except Exception:
            self.metrics.errors.labels(protocol, "internal").inc()
            raise
        self.metrics.images.inc(len(prepared))
        return _Job(protocol=protocol, request=payload, prepared=prepared, outputs=outputs)

    async def predict(
        self, job: _Job, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None
    ) -> _Job:
        job.detections = await self.pipeline.detect(job.prepared)
        return job

    async def postprocess(
        self, job: _Job, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None
    ) -> Any:
        if response_headers is not None:
            response_headers["Server-Timing"] = self.pipeline.server_timing(job.prepared)
        sizes = [item.size for item in job.prepared]
        if job.protocol == "v1":
            return wire.v1_response(job.detections, sizes, self.names)
        request: InferRequest = job.request
        arrays = wire.v2_output_arrays(job.detections, sizes, self.names)
        outputs = []
        for name, datatype, _ in wire.V2_OUTPUTS:
            if name not in job.outputs:
                continue
            array = arrays[name]
            output = _Output(name=name, shape=list(array.shape), datatype=datatype)
            if request.from_grpc:  # typed contents, or raw_output_contents when the inputs came raw
                output.set_data_from_numpy(array, binary_data=request.use_binary_outputs)
            else:  # REST: KServe's encoder converts numpy data once (JSON lists or binary)
                output.data = array
            outputs.append(output)
        return InferResponse(
            response_id=request.id or "",
            model_name=self.name,
            infer_outputs=outputs,
            from_grpc=request.from_grpc,
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )

    def stop(self) -> None:
        self.ready = False
