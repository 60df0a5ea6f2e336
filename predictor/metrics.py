"""The predictor's own Prometheus metrics, served by KServe's ``/metrics`` next to KServe's histograms.

With several front ends (``--workers``) every process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode) and ``/metrics`` sums them
(:func:`multiprocess_exposition`).

Created once per process by :func:`service_metrics` (not at import time), in the default registry,
which is the one KServe's ``/metrics`` handler exposes.

* ``yolo_batch_size`` — images per forward (histogram).
* ``yolo_batch_queue_seconds`` — how long the oldest image of a batch waited for the batch to form.
* ``yolo_stage_seconds{stage}`` — per-stage latency: ``decode`` (per image), ``preprocess`` (letterbox,
  per image), ``forward`` (per batch), ``postprocess`` (NMS + scaling, per batch).
* ``yolo_requests_total{protocol}`` — requests that reached the model (protocol: v1, v2, grpc).
* ``yolo_images_total`` — images detected on.
* ``yolo_request_errors_total{protocol, code}`` — rejected requests by cause (``decode``,
  ``too_many_pixels``, ``payload_too_large``, ``parameter``, ``overloaded``, ...).
* ``yolo_images_in_flight`` — images admitted now (decoding, queued or in a batch); at most
  ``--max_queued_images``.

Prometheus' process metrics (``process_resident_memory_bytes``, ``process_cpu_seconds_total``,
``process_open_fds``, ``process_max_fds``, ``process_virtual_memory_bytes``, ``process_start_time_seconds``)
come, with several front ends, once per process of the pod, labelled ``process="model"`` or
``process="front-end-<i>"`` (:class:`PodProcesses`): ``sum(process_resident_memory_bytes)`` is the pod's,
as it is the one process's with ``--workers 1``. A front end started again keeps its label (its counters
start again from zero, as a restarted process's do).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

__all__ = ["PodProcesses", "ServiceMetrics", "multiprocess_exposition", "record_processes", "service_metrics"]

PROCESSES_FILE = "processes.json"  # in that folder: {process label: pid}, written by the model process

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


@dataclass(frozen=True)
class ServiceMetrics:
    batch_size: Histogram
    batch_queue: Histogram
    stage: Histogram
    requests: Counter
    images: Counter
    errors: Counter
    in_flight: Gauge


_lock = threading.Lock()
_by_registry: dict[int, ServiceMetrics] = {}


def service_metrics(registry: CollectorRegistry = REGISTRY) -> ServiceMetrics:
    """The metrics registered in ``registry`` (created on first use; the same object afterwards)."""
    with _lock:
        metrics = _by_registry.get(id(registry))
        if metrics is None:
            metrics = ServiceMetrics(
                batch_size=Histogram(
                    "yolo_batch_size", "Images per model forward (dynamic batching)",
                    buckets=_BATCH_BUCKETS, registry=registry,
                ),
                batch_queue=Histogram(
                    "yolo_batch_queue_seconds", "Time the oldest image of a batch waited for the batch to form",
                    buckets=_LATENCY_BUCKETS, registry=registry,
                ),
                stage=Histogram(
                    "yolo_stage_seconds", "Latency of each predictor stage",
                    ["stage"], buckets=_LATENCY_BUCKETS, registry=registry,
                ),
                requests=Counter(
                    "yolo_requests", "Inference requests that reached the model", ["protocol"], registry=registry
                ),
                images=Counter("yolo_images", "Images detected on", registry=registry),
                errors=Counter(
                    "yolo_request_errors", "Rejected inference requests, by cause", ["protocol", "code"],
                    registry=registry,
                ),
                in_flight=Gauge(
                    "yolo_images_in_flight", "Images admitted now: decoding, queued or in a batch",
                    registry=registry, multiprocess_mode="livesum",  # summed over live front ends
                ),
            )
            _by_registry[id(registry)] = metrics
        return metrics


def multiprocess_exposition(accept: str | None) -> tuple[bytes, str]:
    """``/metrics`` over every process of the pod (front ends and the model process): counters and histograms
    summed, ``yolo_images_in_flight`` summed over live processes. ``(body, content type)``."""
    from prometheus_client import exposition, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(PodProcesses(recorded_processes()))
    encoder, content_type = exposition.choose_encoder(accept)
    return encoder(registry), content_type


def record_processes(processes: Mapping[str, int]) -> None:
    """The model process: the pod's processes, by label (``model``, ``front-end-<i>``), for every front end's
    ``/metrics`` (written whole, then renamed: a reader never sees half of it)."""
    from predictor.dataplane import MULTIPROC_ENV

    folder = os.environ[MULTIPROC_ENV]
    path = os.path.join(folder, PROCESSES_FILE)
    with open(f"{path}.new", "w") as out:
        json.dump(dict(processes), out)
    os.replace(f"{path}.new", path)


def recorded_processes() -> dict[str, int]:
    from predictor.dataplane import MULTIPROC_ENV

    try:
        with open(os.path.join(os.environ[MULTIPROC_ENV], PROCESSES_FILE)) as recorded:
            return {str(label): int(pid) for label, pid in json.load(recorded).items()}
    except (KeyError, OSError, ValueError):
        return {}


class PodProcesses:
    """A collector: Prometheus' process metrics (read from ``/proc/<pid>``, as its ``ProcessCollector`` does
    for one process) for each of ``processes`` ({label: pid}), labelled ``process=<label>``. A process gone
    meanwhile is left out."""

    def __init__(self, processes: Mapping[str, int]):
        self.processes = dict(processes)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client import ProcessCollector

        families: dict[str, Metric] = {}
        for label, pid in self.processes.items():
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "process": label}, sample.value)
        yield from families.values()
