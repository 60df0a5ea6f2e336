"""The request pipeline between the wire and the :class:`~predictor.engine.Detector`.

    encoded bytes / pixels ──(thread pool: header check, decode, letterbox)──▶ prepared images
    prepared images of concurrent requests ──(DynamicBatcher, one worker thread)──▶ one forward
    raw output ──(per request thresholds: NMS, boxes back to each original image)──▶ Detections

Decoding and letterboxing run in a thread pool (OpenCV releases the GIL), never on the event loop; the
forward runs in the batcher's single worker thread. The full-size decoded image is dropped as soon as it
is letterboxed, so memory per in-flight image is bounded by the network input, not by the upload.

On CUDA, JPEGs are decoded on the GPU in batches (``torchvision.io.decode_jpeg(device="cuda")``) and
letterboxed there (:func:`predictor.ops.letterbox_tensor`); any failure falls back to the CPU path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from predictor import codec, ops
from predictor.batching import DynamicBatcher
from predictor.codec import DetectParams, ImageSource, Limits
from predictor.engine import Detections, Detector, LetterboxInfo
from predictor.metrics import ServiceMetrics

__all__ = ["DetectionPipeline", "PreparedImage"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class PreparedImage:
    """One image ready for the batcher: letterboxed pixels (CPU path) or JPEG bytes (GPU decode path)."""

    params: DetectParams
    letterboxed: np.ndarray | None = None  # uint8 [S, S, 3]
    info: LetterboxInfo | None = None
    jpeg: bytes | None = None
    where: str = "image"
    # seconds spent on this image per stage; "forward"/"postprocess" are its batch's, "batch" its id
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the original image; known after decoding."""
        assert self.info is not None
        return self.info.original_shape


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
    ):
        self.detector = detector
        self.limits = limits
        self.metrics = metrics
        self.input_size = detector.input_size
        # One decoder per core (at most 8): more would only take cores from the forward on small hosts.
        threads = decode_threads or max(2, min(8, os.cpu_count() or 2))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="yolo-decode")
        cuda = detector.device.type == "cuda"
        self.gpu_decode = cuda if gpu_decode is None else (gpu_decode and cuda)
        self._preparing = 0  # images being decoded now: they will reach the batcher shortly
        self._batch_id = 0
        self.batcher: DynamicBatcher[PreparedImage, Detections] = DynamicBatcher(
            self._process_batch,
            max_batch_size=max_batch_size,
            max_delay_s=max_batch_delay_s,
            on_batch=self._observe_batch,
            incoming=lambda: self._preparing,
            name="yolo-forward",
        )

    # ----- event loop side --------------------------------------------------------------------------
    async def prepare(self, sources: Sequence[ImageSource], params: DetectParams) -> list[PreparedImage]:
        """Check, decode and letterbox every image of a request in the thread pool."""
        loop = asyncio.get_running_loop()
        tasks = [
            loop.run_in_executor(self._pool, self._prepare_one, source, params, f"image {index}")
            for index, source in enumerate(sources)
        ]
        self._preparing += len(tasks)
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._preparing -= len(tasks)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results)  # type: ignore[arg-type]

    async def detect(self, prepared: Sequence[PreparedImage]) -> list[Detections]:
        """Queue the prepared images for batched inference; results in order."""
        return await self.batcher.submit(prepared)

    async def close(self) -> None:
        await self.batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ----- thread pool side -------------------------------------------------------------------------
    def _prepare_one(self, source: ImageSource, params: DetectParams, where: str) -> PreparedImage:
        timings: dict[str, float] = {}
        if isinstance(source, bytes):
            if self.gpu_decode:
                info = codec.probe_image(source, where)
                codec.check_pixels(info.width, info.height, self.limits.max_pixels, where)
                if info.format == "jpeg" and info.orientation == 1:  # nvJPEG ignores EXIF orientation
                    return PreparedImage(params=params, jpeg=source, where=where)
            start = time.perf_counter()
            image = codec.decode_image(source, self.limits.max_pixels, where)
            timings["decode"] = time.perf_counter() - start
            self.metrics.stage.labels("decode").observe(timings["decode"])
        else:
            image = codec.check_pixel_array(source, self.limits.max_pixels, where)
        start = time.perf_counter()
        letterboxed, ratio, pad = ops.letterbox(image, self.input_size)
        info = LetterboxInfo((int(image.shape[0]), int(image.shape[1])), ratio, pad)
        timings["preprocess"] = time.perf_counter() - start
        self.metrics.stage.labels("preprocess").observe(timings["preprocess"])
        return PreparedImage(params=params, letterboxed=letterboxed, info=info, where=where, timings=timings)

    # ----- worker thread side -----------------------------------------------------------------------
    def _observe_batch(self, size: int, waited: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_queue.observe(waited)

    def _process_batch(self, items: list[PreparedImage]) -> list[Detections | Exception]:
        """One forward for the batch; NMS per group of items sharing thresholds. An item whose image
        fails to decode here (GPU path only) gets its own error; the others are unaffected."""
        detector = self.detector
        results: list[Detections | Exception | None] = [None] * len(items)
        if any(item.jpeg is not None for item in items):
            batch, kept = self._gpu_batch(items, results)
            if not kept:
                return results  # type: ignore[return-value]
        else:
            batch = self._stack([item.letterboxed for item in items])
            kept = list(range(len(items)))
        start = time.perf_counter()
        raw = detector.forward(batch)
        if raw.device.type == "cuda":
            torch.cuda.synchronize(raw.device)
        forward = time.perf_counter() - start
        self.metrics.stage.labels("forward").observe(forward)
        self._batch_id += 1

        start = time.perf_counter()
        groups: dict[DetectParams, list[int]] = {}  # thresholds -> rows of ``raw``
        for row, index in enumerate(kept):
            groups.setdefault(items[index].params, []).append(row)
        for params, rows in groups.items():
            select = raw if len(rows) == raw.shape[0] else raw[torch.as_tensor(rows, device=raw.device)]
            infos = [items[kept[row]].info for row in rows]
            for row, det in zip(rows, detector.postprocess(select, infos, **params.as_kwargs()), strict=True):
                results[kept[row]] = det
        postprocess = time.perf_counter() - start
        self.metrics.stage.labels("postprocess").observe(postprocess)
        for index in kept:
            items[index].timings.update(forward=forward, postprocess=postprocess, batch=self._batch_id)
        return results  # type: ignore[return-value]

    def _gpu_batch(
        self, items: list[PreparedImage], results: list[Any]
    ) -> tuple[torch.Tensor | None, list[int]]:
        """CUDA path: decode the batch's JPEGs with nvJPEG, letterbox on the GPU, stack with the rest.

        If nvJPEG refuses the batch, its JPEGs are decoded on the CPU one by one; an image that cannot be
        decoded at all gets its error in ``results``. Returns the batch and the indices it holds."""
        detector = self.detector
        size = self.input_size
        jpeg_indices = [i for i, item in enumerate(items) if item.jpeg is not None]
        start = time.perf_counter()
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:  # a torchvision without image decoding: CPU decoding from now on
            log.warning("torchvision.io.decode_jpeg is unavailable; decoding JPEGs on the CPU from now on")
            self.gpu_decode = False
            decode_jpeg = None
        try:
            data = [torch.frombuffer(bytearray(items[i].jpeg), dtype=torch.uint8) for i in jpeg_indices]
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=detector.device) if decode_jpeg else None
        except Exception:  # noqa: BLE001 - nvJPEG refused the data: decode this batch on the CPU
            log.warning("GPU JPEG decoding failed; decoding this batch on the CPU", exc_info=True)
            decoded = None
        tensors: list[torch.Tensor | None] = [None] * len(items)
        for position, index in enumerate(jpeg_indices):
            item = items[index]
            try:
                if decoded is not None:
                    image = decoded[position]  # [3, H, W] uint8 on the GPU
                    letterboxed, ratio, pad = ops.letterbox_tensor(
                        image, size, channels_last=False, dtype=detector.dtype
                    )
                    item.info = LetterboxInfo((int(image.shape[1]), int(image.shape[2])), ratio, pad)
                    tensors[index] = letterboxed
                else:
                    rgb = codec.decode_image(item.jpeg, self.limits.max_pixels, item.where)
                    letterboxed_np, ratio, pad = ops.letterbox(rgb, size)
                    item.info = LetterboxInfo((int(rgb.shape[0]), int(rgb.shape[1])), ratio, pad)
                    item.letterboxed = letterboxed_np
            except Exception as error:  # noqa: BLE001 - this image's own failure
                results[index] = error
            item.jpeg = None
        decode = time.perf_counter() - start
        self.metrics.stage.labels("decode").observe(decode)
        for index in jpeg_indices:  # one batched decode, shared out evenly
            items[index].timings["decode"] = decode / len(jpeg_indices)
        kept = [i for i in range(len(items)) if results[i] is None]
        cpu_indices = [i for i in kept if tensors[i] is None]
        if cpu_indices:
            uploaded = self._stack([items[i].letterboxed for i in cpu_indices])
            for position, index in enumerate(cpu_indices):
                tensors[index] = uploaded[position]
        if not kept:
            return None, kept
        batch = torch.stack([tensors[i].to(detector.device, detector.dtype) for i in kept])  # type: ignore[union-attr]
        return batch.contiguous(memory_format=torch.channels_last), kept

    def _stack(self, letterboxed: list[np.ndarray]) -> torch.Tensor:
        """Letterboxed ``uint8 [S, S, 3]`` images → the network input ``[N, 3, S, S]`` in [0, 1].

        On the CPU: one stack and one conversion (NHWC permuted to NCHW is channels-last memory; the
        network's output is the same). On CUDA the detector's own preprocess does the pinned, non-blocking
        upload; the images are already S x S, so its letterbox geometry is the identity."""
        detector = self.detector
        if detector.device.type != "cpu":
            batch, _ = detector.preprocess(letterboxed)
            return batch
        return torch.from_numpy(np.stack(letterboxed)).permute(0, 3, 1, 2).to(detector.dtype).div_(255.0)

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
        }
