"""The request pipeline between the wire and the :class:`~predictor.engine.Detector`.

    encoded bytes / pixels ──(thread pool: header check, decode, Detector.letterbox)──▶ prepared images
    prepared images of concurrent requests ──(DynamicBatcher)──▶ batches, each through three stages:
        load         Detector.stack: the batch as the network input (CUDA: decode its JPEGs with nvJPEG
                     and Detector.letterbox_tensors them on the GPU, one resize per distinct image size)
        forward      Detector.forward: one forward pass
        postprocess  Detector.postprocess per request's DetectParams: NMS, boxes back to each original
                     image with the geometry its letterbox applied → Detections

Every pixel-geometry step is the :class:`~predictor.engine.Detector`'s (one home for pre-processing
on every path); each image's :class:`~predictor.ops.LetterboxGeometry` travels with it from the
letterbox to the box mapping. Images are decoded in one place, :meth:`DetectionPipeline._letterbox_source`
(nvJPEG's batch decode aside), whichever path they take.

Decoding and letterboxing run in a thread pool (OpenCV releases the GIL), never on the event loop —
except at low load on the CPU: when batches are of one image (the CPU's usual plan, see
:mod:`predictor.batch_plan`) and the model is idle, a one-image request is decoded in the forward thread
and run there at once (:meth:`~predictor.batching.DynamicBatcher.run_alone`), sparing it two round trips
through the event loop; requests that come meanwhile take the usual path and queue behind it. On
CUDA each batch stage runs in a thread and on a CUDA stream of its own, so batch ``k + 1`` is loaded
and run while batch ``k``'s NMS runs (see :mod:`predictor.batching`); on the CPU, where the forward
takes every core, the three run in turn in one worker thread. The full-size decoded image is dropped as
soon as it is letterboxed, so memory per in-flight image is bounded by the network input, not by the
upload.

On CUDA, JPEGs are decoded on the GPU in batches (``torchvision.io.decode_jpeg(device="cuda")``) and
letterboxed there (:func:`predictor.ops.letterbox_batch_tensor`); any failure falls back to the CPU path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from predictor import images
from predictor.batching import DynamicBatcher
from predictor.boxes import Detections, LetterboxGeometry
from predictor.metrics import ServiceMetrics
from predictor.settings import DetectParams
from predictor.wire import ImageSource, Limits

if TYPE_CHECKING:  # torch is imported where CUDA is used: the CPU engines' server runs without it
    import torch

    from predictor.engine import Detector

__all__ = ["DetectionPipeline", "PreparedImage", "for_gpu_decode", "letterbox_source", "settle"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class PreparedImage:
    """One image ready for the batcher: letterboxed pixels (CPU path) or JPEG bytes (GPU decode path)."""

    params: DetectParams
    letterboxed: np.ndarray | None = None  # uint8 [S, S, 3]
    geometry: LetterboxGeometry | None = None  # known once letterboxed (GPU path: in the load stage)
    jpeg: bytearray | None = None
    where: str = "image"
    # seconds spent on this image per stage; "forward"/"postprocess" are its batch's, "batch" its id
    timings: dict[str, float] = field(default_factory=dict)
    # its Detections (or its own exception) when it was run alone right after decoding (DynamicBatcher.run_alone)
    result: Any = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the original image; known after decoding."""
        assert self.geometry is not None
        return self.geometry.original_shape


def for_gpu_decode(source: bytes, where: str, max_pixels: int) -> bool:
    """Whether encoded ``source`` goes to nvJPEG as it is: a JPEG without EXIF rotation (nvJPEG ignores
    it); its pixel count is checked here first (header only), as the CPU path checks before decoding."""
    info = images.probe_image(source, where)
    images.check_dimensions(info.width, info.height, max_pixels, where)
    return info.format == "jpeg" and info.orientation == 1


async def settle(tasks: Sequence[Awaitable[Any]]) -> list[Any]:
    """Every task's result, in order, once all have ended; then the first exception (in order), if any.
    A single task is awaited as it is: gathering one cost ~10 % of the event loop's Python time per
    one-image request (py-spy, gRPC at concurrency 64)."""
    if len(tasks) == 1:
        return [await tasks[0]]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)


def letterbox_source(
    source: ImageSource, where: str, timings: dict[str, float], *, max_pixels: int,
    letterbox: Any, metrics: ServiceMetrics,
) -> tuple[np.ndarray, LetterboxGeometry]:
    """Encoded bytes (decoded here, pixel count checked first) or an RGB pixel array → ``letterbox`` of it
    (:meth:`Detector.letterbox`, or the same function in a front-end process); the stage times go to
    ``timings`` and the metrics. The decoded image is dropped on return."""
    if isinstance(source, bytes):
        start = time.perf_counter()
        image = images.decode_image(source, max_pixels, where)
        timings["decode"] = time.perf_counter() - start
        metrics.stage.labels("decode").observe(timings["decode"])
    else:
        image = images.check_pixel_array(source, max_pixels, where)
    start = time.perf_counter()
    letterboxed = letterbox(image, where)
    timings["preprocess"] = time.perf_counter() - start
    metrics.stage.labels("preprocess").observe(timings["preprocess"])
    return letterboxed


@dataclass(eq=False)
class _Batch:
    """One batch between the stages."""

    items: list[PreparedImage]
    results: list[Any]  # per item: Detections, or the item's own exception, or None (not yet)
    kept: list[int] = field(default_factory=list)  # items (indices) that are rows of ``inputs``/``raw``
    inputs: torch.Tensor | None = None  # [len(kept), 3, S, S]
    raw: torch.Tensor | None = None  # [len(kept), R, 5 + nc]
    forward_s: float = 0.0
    batch_id: int = 0


class DetectionPipeline:
    """Decode → letterbox → batch → forward → NMS for one :class:`Detector`."""

    def __init__(
        self,
        detector: Detector,
        *,
        limits: Limits,
        max_batch_size: int,
        max_batch_delay_s: float,
        metrics: ServiceMetrics,
        decode_threads: int | None = None,
        gpu_decode: bool | None = None,
        batching: dict[str, Any] | None = None,
    ):
        self.detector = detector
        self.batching = batching  # how the batch size and delay were chosen (predictor.batch_plan), for metadata
        self.limits = limits
        self.metrics = metrics
        self._pool = images.decoder_pool(decode_threads)
        cuda = detector.device.type == "cuda"
        self.gpu_decode = cuda if gpu_decode is None else (gpu_decode and cuda)
        self._preparing = 0  # images being decoded now: they will reach the batcher shortly
        # images being decoded in other processes (front ends, --workers): set by the model process
        self.preparing_elsewhere: Any = None
        self._batch_id = 0
        # One CUDA stream per batch stage: their GPU work overlaps (decode/letterbox, forward, NMS).
        if cuda:
            import torch
        self._streams = (
            {stage: torch.cuda.Stream(detector.device) for stage in ("load", "forward", "postprocess")}
            if cuda else None
        )
        # On the CPU the forward takes every core: overlapping stages would gain nothing and only split
        # the batches (the next one would form as soon as this one enters its forward).
        stages = (self._load_batch, self._forward_batch, self._postprocess_batch)
        self.batcher: DynamicBatcher[PreparedImage, Detections] = DynamicBatcher(
            stages if cuda else self._run_stages_in_turn,
            max_batch_size=max_batch_size,
            max_delay_s=max_batch_delay_s,
            on_batch=self._observe_batch,
            incoming=self._incoming,
            name="yolo-forward",
        )

    def _incoming(self) -> int:
        elsewhere = self.preparing_elsewhere
        return self._preparing + (elsewhere() if elsewhere is not None else 0)

    # ----- event loop side --------------------------------------------------------------------------
    async def prepare(self, sources: Sequence[ImageSource], params: DetectParams) -> list[PreparedImage]:
        """Check, decode and letterbox every image of a request in the thread pool — or, for a one-image
        request when batches are of one image and the model is idle (the CPU's usual case at low load),
        decode it and run it at once in the forward thread (:meth:`DynamicBatcher.run_alone`): its
        result is then ready for :meth:`detect`."""
        if len(sources) == 1:  # (not counted in _preparing: with batches of one no batch waits for company)
            alone = await self.batcher.run_alone(lambda: self._prepare_one(sources[0], params, "image 0"))
            if alone is not None:
                item, item.result = alone
                return [item]
        tasks = [self._pool.run(self._prepare_one, source, params, f"image {index}")
                 for index, source in enumerate(sources)]
        self._preparing += len(tasks)
        try:
            return await settle(tasks)
        finally:
            self._preparing -= len(tasks)
            self.batcher.nudge()  # if these fail, a batch waiting for them need not wait out its delay

    async def detect(self, prepared: Sequence[PreparedImage]) -> list[Detections]:
        """Queue the prepared images for batched inference; results in order (at once for an image that
        :meth:`prepare` already ran alone)."""
        if len(prepared) == 1 and prepared[0].result is not None:
            result = prepared[0].result
            if isinstance(result, BaseException):
                raise result
            return [result]
        return await self.batcher.submit(prepared)

    async def close(self) -> None:
        await self.batcher.close()
        self._pool.shutdown(cancel_queued=True)

    # ----- thread pool side -------------------------------------------------------------------------
    def _prepare_one(self, source: ImageSource, params: DetectParams, where: str) -> PreparedImage:
        if isinstance(source, bytes) and self.gpu_decode and for_gpu_decode(source, where, self.limits.max_pixels):
            # a writable copy, made here in the pool: torch.frombuffer then wraps it as it is
            return PreparedImage(params=params, jpeg=bytearray(source), where=where)
        item = PreparedImage(params=params, where=where)
        item.letterboxed, item.geometry = self._letterbox_source(source, where, item.timings)
        return item

    def _letterbox_source(
        self, source: ImageSource, where: str, timings: dict[str, float]
    ) -> tuple[np.ndarray, LetterboxGeometry]:
        return letterbox_source(source, where, timings, max_pixels=self.limits.max_pixels,
                                letterbox=self.detector.letterbox, metrics=self.metrics)

    # ----- batch stages (each in its own worker thread) -----------------------------------------------
    def _observe_batch(self, size: int, waited: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_queue.observe(waited)

    def _stage_stream(self, stage: str) -> Any:
        """The stage's own CUDA stream as a context (its work overlaps the other stages'); a no-op on the CPU."""
        if self._streams is None:
            return contextlib.nullcontext()
        import torch

        return torch.cuda.stream(self._streams[stage])

    def _sync_stage(self) -> None:
        """Wait (GIL released) until the GPU work this stage queued on its stream is done: the next stage
        then takes finished tensors (and records its own stream on them for the caching allocator)."""
        if self._streams is None:
            return
        import torch

        torch.cuda.current_stream(self.detector.device).synchronize()

    def _run_stages_in_turn(self, items: list[PreparedImage]) -> list[Detections | Exception]:
        return self._postprocess_batch(self._forward_batch(self._load_batch(items)))

    def _load_batch(self, items: list[PreparedImage]) -> _Batch:
        """Stage 1: the network input of the batch. An item whose image fails to decode here (GPU path
        only) gets its own error; the others are unaffected."""
        batch = _Batch(items=items, results=[None] * len(items))
        with self._stage_stream("load"):
            if any(item.jpeg is not None for item in items):
                batch.inputs, batch.kept = self._gpu_inputs(items, batch.results)
            else:
                # one batch at a time on the CPU (stages in turn): the detector's input buffer is reused
                batch.inputs = self.detector.stack([item.letterboxed for item in items], reuse=self._streams is None)
                batch.kept = list(range(len(items)))
            self._sync_stage()
        return batch

    def _forward_batch(self, batch: _Batch) -> _Batch:
        """Stage 2: one forward pass (timed to the end of its GPU work)."""
        if not batch.kept:
            return batch
        assert batch.inputs is not None
        with self._stage_stream("forward"):
            if self._streams is not None:
                batch.inputs.record_stream(self._streams["forward"])
            start = time.perf_counter()
            batch.raw = self.detector.forward(batch.inputs)
            self._sync_stage()
            batch.forward_s = time.perf_counter() - start
        batch.inputs = None
        self.metrics.stage.labels("forward").observe(batch.forward_s)
        self._batch_id += 1
        batch.batch_id = self._batch_id
        return batch

    def _postprocess_batch(self, batch: _Batch) -> list[Detections | Exception]:
        """Stage 3: NMS per group of items sharing thresholds, boxes back to each original image."""
        if not batch.kept:
            return batch.results  # type: ignore[return-value]
        raw, items, kept, results = batch.raw, batch.items, batch.kept, batch.results
        assert raw is not None
        start = time.perf_counter()
        with self._stage_stream("postprocess"):
            if self._streams is not None:
                raw.record_stream(self._streams["postprocess"])
            groups: dict[DetectParams, list[int]] = {}  # thresholds -> rows of ``raw``
            for row, index in enumerate(kept):
                groups.setdefault(items[index].params, []).append(row)
            for params, rows in groups.items():
                select = raw if len(rows) == raw.shape[0] else raw[rows]
                geometries = [items[kept[row]].geometry for row in rows]
                detections = self.detector.postprocess(select, geometries, params)
                for row, det in zip(rows, detections, strict=True):
                    results[kept[row]] = det
        postprocess = time.perf_counter() - start
        self.metrics.stage.labels("postprocess").observe(postprocess)
        for index in kept:
            items[index].timings.update(forward=batch.forward_s, postprocess=postprocess, batch=batch.batch_id)
        return results  # type: ignore[return-value]

    def _gpu_inputs(self, items: list[PreparedImage], results: list[Any]) -> tuple[torch.Tensor | None, list[int]]:
        """CUDA path: decode the batch's JPEGs with nvJPEG, letterbox them on the GPU, add the rest.

        If nvJPEG refuses the batch, its JPEGs are decoded on the CPU one by one; an image that cannot be
        decoded at all gets its error in ``results``. Returns the network input and the indices it holds."""
        import torch

        detector = self.detector
        jpeg_indices = [i for i, item in enumerate(items) if item.jpeg is not None]
        start = time.perf_counter()
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:  # a torchvision without image decoding: CPU decoding from now on
            log.warning("torchvision.io.decode_jpeg is unavailable; decoding JPEGs on the CPU from now on")
            self.gpu_decode = False
            decode_jpeg = None
        try:
            data = [torch.frombuffer(items[i].jpeg, dtype=torch.uint8) for i in jpeg_indices]
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=detector.device) if decode_jpeg else None
        except Exception:  # noqa: BLE001 - nvJPEG refused the data: decode this batch on the CPU
            log.warning("GPU JPEG decoding failed; decoding this batch on the CPU", exc_info=True)
            decoded = None
        on_gpu: list[int] = []  # items letterboxed on the GPU, in the order of ``decoded_letterboxed``
        decoded_letterboxed = None
        if decoded is not None:
            on_gpu = jpeg_indices
            decoded_letterboxed, geometries = detector.letterbox_tensors(decoded)
            for index, geometry in zip(on_gpu, geometries, strict=True):
                items[index].geometry = geometry
        else:
            for index in jpeg_indices:
                item = items[index]
                try:
                    item.letterboxed, item.geometry = self._letterbox_source(bytes(item.jpeg), item.where, item.timings)
                except Exception as error:  # noqa: BLE001 - this image's own failure
                    results[index] = error
        for index in jpeg_indices:
            items[index].jpeg = None
        decode = time.perf_counter() - start
        self.metrics.stage.labels("decode").observe(decode)
        for index in jpeg_indices:  # one batched decode, shared out evenly
            items[index].timings["decode"] = decode / len(jpeg_indices)
        kept = [i for i in range(len(items)) if results[i] is None]
        if not kept:
            return None, kept
        letterboxed_on_gpu = set(on_gpu)
        on_cpu = [i for i in kept if i not in letterboxed_on_gpu]
        if not on_cpu:
            return decoded_letterboxed, kept
        uploaded = detector.stack([items[i].letterboxed for i in on_cpu])
        if decoded_letterboxed is None:
            return uploaded, kept
        size = detector.input_size
        inputs = torch.empty((len(kept), 3, size, size), dtype=detector.dtype, device=detector.device)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        position = {index: row for row, index in enumerate(kept)}
        inputs[torch.as_tensor([position[i] for i in on_gpu], device=detector.device)] = decoded_letterboxed
        inputs[torch.as_tensor([position[i] for i in on_cpu], device=detector.device)] = uploaded
        return inputs, kept

    @staticmethod
    def server_timing(prepared: Sequence[PreparedImage]) -> str:
        """A ``Server-Timing`` header value for one request: per stage, milliseconds summed over its
        images (forward and NMS once per batch its images were in)."""
        totals = {"decode": 0.0, "preprocess": 0.0, "forward": 0.0, "postprocess": 0.0}
        seen_batches: set[float] = set()
        for item in prepared:
            totals["decode"] += item.timings.get("decode", 0.0)
            totals["preprocess"] += item.timings.get("preprocess", 0.0)
            batch = item.timings.get("batch")
            if batch is not None and batch not in seen_batches:
                seen_batches.add(batch)
                totals["forward"] += item.timings.get("forward", 0.0)
                totals["postprocess"] += item.timings.get("postprocess", 0.0)
        return ", ".join(f"{name};dur={1000 * seconds:.3f}" for name, seconds in totals.items())

    # ----- direct use (warm-up, benchmarks) ---------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        d = self.detector
        return {
            "variant": d.variant,
            "device": str(d.device),
            "precision": d.precision,
            "input_size": d.input_size,
            "num_classes": d.num_classes,
            "gpu_decode": self.gpu_decode,
            "accel": d.accel,
            "engine": d.engine,
            "max_batch_size": self.batcher.max_batch_size,
            "max_batch_delay_ms": round(self.batcher.max_delay_s * 1000.0, 3),
            **({"batching": self.batching} if self.batching is not None else {}),
        }
