"""A front-end process (``--workers`` > 1): KServe's REST + gRPC servers and our model wrapper, with the
batch stages replaced by a link to the model process (:mod:`predictor.dataplane`).

Everything up to the network input happens here, on this process's core: parsing, validation, limits,
admission, decoding and letterboxing (in this process's thread pool). The letterboxed pixels go into
the shared slots (:mod:`predictor.slots`); the detections come back over the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from predictor.dataplane import NUDGE, remove_if_stale
from predictor.images import decoder_pool
from predictor.pipeline import DetectionPipeline, PreparedImage, for_gpu_decode, letterbox_source, settle
from predictor.slots import SlotPool

__all__ = ["ModelLink", "run_front_end"]

log = logging.getLogger("predictor")

EXIT_MODEL_GONE = 70  # EX_SOFTWARE: the model process went away
STALE_WAIT_S = 2.0  # for the dead model process's run-folder lock to be released (it closes its files in turn)


class ModelLink:
    """Stands where :class:`~predictor.pipeline.DetectionPipeline` stands in one process: ``prepare`` (decode
    + letterbox here) and ``detect`` (the model process's batcher), ``server_timing``, ``summary``."""

    def __init__(self, spec: Any, limits: Any, metrics: Any):
        from predictor.boxes import letterbox

        self.spec, self.limits, self.metrics = spec, limits, metrics
        self.slots = spec.slots  # mapped at spawn (predictor.slots)
        self.pool = SlotPool(spec.slot_count)
        self.gpu_decode = bool(spec.summary.get("gpu_decode"))  # the model process decodes JPEGs (nvJPEG)
        size = spec.input_size
        self._letterbox = lambda image, where: letterbox(image, size)
        self._decoders = decoder_pool()
        self._waiting: dict[int, tuple[asyncio.Future, list[int]]] = {}
        self._next_key = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn = spec.conn

    def summary(self) -> dict[str, Any]:
        return dict(self.spec.summary)

    server_timing = staticmethod(DetectionPipeline.server_timing)

    # ----- decode here ------------------------------------------------------------------------------
    async def prepare(self, sources: Sequence[Any], params: Any) -> list[Any]:
        tasks = [self._decoders.run(self._prepare_one, source, params, f"image {index}")
                 for index, source in enumerate(sources)]
        self.slots.preparing[0] += len(tasks)  # the model process's batcher waits for these
        try:
            prepared = await settle(tasks)
        except BaseException:
            self.slots.preparing[0] -= len(tasks)
            with contextlib.suppress(OSError):  # (a broken pipe: _read ends this process)
                self._conn.send(NUDGE)  # a batch waiting for these images runs now
            raise
        self.slots.preparing[0] -= len(tasks)
        return prepared

    def _prepare_one(self, source: Any, params: Any, where: str) -> Any:
        if isinstance(source, bytes) and self.gpu_decode and len(source) <= self.slots.slot_bytes \
                and for_gpu_decode(source, where, self.limits.max_pixels):
            return PreparedImage(params=params, jpeg=source, where=where)  # nvJPEG in the model process
        item = PreparedImage(params=params, where=where)
        item.letterboxed, item.geometry = letterbox_source(
            source, where, item.timings, max_pixels=self.limits.max_pixels, letterbox=self._letterbox,
            metrics=self.metrics)
        return item

    # ----- the model process ------------------------------------------------------------------------
    async def detect(self, prepared: Sequence[Any]) -> list[Any]:
        """Copy the images into shared slots, hand them to the model process, await the detections. The
        slots are freed when the answer comes back (never earlier: the model process may still read them,
        even if this request was cancelled meanwhile)."""
        assert self._loop is not None, "watch_model() first"
        slots = await self.pool.take(len(prepared))
        key = self._next_key = self._next_key + 1
        try:
            entries = []
            for slot, item in zip(slots, prepared, strict=True):
                if item.jpeg is not None:  # the encoded bytes, for nvJPEG
                    self.slots.slot(slot).reshape(-1)[:len(item.jpeg)] = np.frombuffer(item.jpeg, np.uint8)
                    entries.append((slot, None, item.params, len(item.jpeg)))
                    item.jpeg = None
                else:
                    np.copyto(self.slots.slot(slot), item.letterboxed)
                    item.letterboxed = None
                    entries.append((slot, item.geometry, item.params, 0))
            future = self._loop.create_future()
            self._waiting[key] = (future, slots)
            self._conn.send((key, entries))
        except BaseException:  # nothing reached the model process: no answer will free the slots
            self._waiting.pop(key, None)
            self.pool.give(slots)
            raise
        detections, timings, geometries = await future
        for item, times, geometry in zip(prepared, timings, geometries, strict=True):
            item.timings.update(times)
            item.geometry = geometry  # known in the model process when it decoded the JPEG
        return detections

    def _read(self) -> None:
        """On the event loop: answers from the model process; the pipe's end (the model process died) ends
        this process at once: no request may wait for an answer that cannot come."""
        try:
            while self._conn.poll():
                self._answer(*self._conn.recv())
        except (EOFError, OSError):
            log.error("front end %d: the model process is gone; exiting", self.spec.index)
            remove_if_stale(self.spec.run_dir, wait_s=STALE_WAIT_S)  # nothing outlives the pod's processes
            os._exit(EXIT_MODEL_GONE)

    def _answer(self, key: int, detections: Any, timings: Any, geometries: Any) -> None:
        future, slots = self._waiting.pop(key)  # every key sent is answered once
        self.pool.give(slots)
        if future.done():
            return
        if isinstance(detections, str):
            future.set_exception(RuntimeError(f"model process: {detections}"))
        elif isinstance(detections, tuple):  # a ServiceError of the request's own: (type name, reason, code)
            future.set_exception(service_error(*detections))
        else:
            future.set_result((detections, timings, geometries))

    def watch_model(self) -> None:
        """Start reading the pipe on the running event loop (called once the server's loop runs)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._conn.fileno(), self._read)


def service_error(name: str, reason: str, code: str) -> Exception:
    """A :class:`~predictor.errors.ServiceError` raised in the model process, rebuilt here by its type name."""
    from predictor import errors

    kind = getattr(errors, name, None)
    if not (isinstance(kind, type) and issubclass(kind, errors.ServiceError)):
        kind = errors.RequestError
    error = kind.__new__(kind)
    errors.ServiceError.__init__(error, reason, code)
    return error


def run_front_end(spec: Any) -> None:
    """The front-end process's entry (``multiprocessing`` spawn target)."""
    import argparse

    from predictor.__main__ import serve
    from predictor.malloc import keep_freed_memory
    from predictor.metrics import service_metrics
    from predictor.model import YoloV7Model

    keep_freed_memory()  # (a spawned interpreter: its own malloc)
    args = argparse.Namespace(**spec.args)
    model = YoloV7Model(args.model_name, spec.settings)
    link = ModelLink(spec, model.limits(), service_metrics())
    model.serve_through(link, spec.names)
    model.ready = True
    serve(args, spec.settings, model, front_end=link)
