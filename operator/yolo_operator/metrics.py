"""The operator's own Prometheus metrics, served on ``/metrics`` (``config.metrics_port``; 0 = off).

* ``yolo_operator_reconciles_total{result}`` — reconciles by outcome: ``ok``, ``invalid`` (Valid=False),
  ``retry`` (a transient failure, kopf retries) and ``error`` (the API server refused a manifest);
* ``yolo_operator_reconcile_errors_total{kind}`` — failed reconciles by exception type;
* ``yolo_operator_reconcile_seconds`` — how long a reconcile took (histogram).

Created in their own registry by ``operator_metrics()`` on first use (not at import time).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class OperatorMetrics:
    registry: CollectorRegistry
    reconciles: Counter
    errors: Counter
    duration: Histogram

    def serve(self, port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - a pod's metrics port
        """Serve ``/metrics`` on ``port`` from a daemon thread (prometheus_client's own server)."""
        start_http_server(port, addr=address, registry=self.registry)


@functools.cache
def operator_metrics() -> OperatorMetrics:
    registry = CollectorRegistry()
    return OperatorMetrics(
        registry=registry,
        reconciles=Counter("yolo_operator_reconciles", "YoloDetector reconciles, by outcome", ["result"],
                           registry=registry),
        errors=Counter("yolo_operator_reconcile_errors", "Failed YoloDetector reconciles, by error type", ["kind"],
                       registry=registry),
        duration=Histogram("yolo_operator_reconcile_seconds", "Duration of a YoloDetector reconcile",
                           buckets=_BUCKETS, registry=registry),
    )
