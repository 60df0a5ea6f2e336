"""On the CPU, batch only where it pays: measure the engine at start-up, then keep batching or serve one at a time.

On a GPU a batch of images costs little more than one, so the dynamic batcher (:mod:`predictor.batching`)
always pays there. On the CPU the forward already takes every core at batch 1, and a batch often costs as
much per image as single images do (measured on the 2-core host: docs/cpu.md) — then batching buys no
throughput and only adds queueing (the batch delay, and a request waiting behind a batch of others).

The rule (:func:`plan_batching`), when the detector runs on the CPU and neither ``--max_batch_size`` nor
``--max_batch_delay_ms`` was given (flag or environment: :meth:`PredictorSettings.is_explicit`):

1. time the engine's forward per image at batch 1 and at :data:`PROBE_BATCH`, interleaved, a few rounds
   (as many as fit in :data:`MEASURE_BUDGET_S`, at least one, at most :data:`MAX_ROUNDS`), medians — unless
   one batch-1 forward says that even one round would not fit: then batch 1 without a probe (a model that
   slow on the CPU: yolov7 at 640 on 2 cores, ~0.5 s a forward, where batches measured flat too);
2. ``gain`` = per-image time at batch 1 / per-image time at :data:`PROBE_BATCH`;
3. ``gain >= MIN_GAIN`` (batches raise throughput by at least 20 %): batching stays as configured (the
   defaults: batches of up to 8, 5 ms delay); otherwise batch size 1 and no delay — each image is run as
   soon as the forward is free.

The decision is logged in one line with its figures, and shown in the model metadata
(``GET /v2/models/{name}`` → ``parameters.batching``). It is cached (JSON, keyed by the CPU model, thread
count, engine, its version and precision, the variant, classes and input size) in the first writable
engine cache folder, so a restart with a persistent cache does not measure again. Explicit flags always win.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predictor.settings import MEASURED_ON_CPU

__all__ = ["MIN_GAIN", "PROBE_BATCH", "BatchPlan", "decide", "measure_per_image", "plan_batching"]

log = logging.getLogger("predictor")

PROBE_BATCH = 4
MIN_GAIN = 1.2  # per-image time at batch 1 over per-image time at PROBE_BATCH: batches must be 20 % cheaper
MEASURE_BUDGET_S = 1.5  # start-up time the measurement may take (estimated from one batch-1 forward)
MAX_ROUNDS = 3


@dataclass(frozen=True)
class BatchPlan:
    """What the dynamic batcher is given, and why.

    ``source``: ``flags`` (given explicitly, or the GPU: as configured), ``measured`` / ``cached`` (the
    rule, figures in ``per_image_ms`` = {batch size: median ms per image}), ``not measured`` (no warm-up
    forward allowed, or a stub forward) or ``too slow to probe ...`` (``per_image_ms`` = {1: ms}): batch 1.
    """

    max_batch_size: int
    max_batch_delay_ms: float
    source: str
    per_image_ms: dict[int, float] = field(default_factory=dict)
    gain: float | None = None
    rounds: int = 0

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["per_image_ms"] = {str(k): v for k, v in self.per_image_ms.items()}
        out["min_gain"] = MIN_GAIN
        return out

    def log_line(self) -> str:
        if self.gain is None:
            figures = "".join(f", b{n} {ms:.1f} ms/image" for n, ms in sorted(self.per_image_ms.items()))
            return (f"batching: max batch {self.max_batch_size}, delay {self.max_batch_delay_ms:g} ms "
                    f"({self.source}{figures})")
        figures = ", ".join(f"b{n} {ms:.1f} ms/image" for n, ms in sorted(self.per_image_ms.items()))
        verdict = "batching pays" if self.max_batch_size > 1 else "batching does not pay: one image at a time"
        return (f"batching on the CPU ({self.source}, {self.rounds} rounds): {figures}, gain {self.gain:.2f}x "
                f"(needs >= {MIN_GAIN:g}x): {verdict}; max batch {self.max_batch_size}, "
                f"delay {self.max_batch_delay_ms:g} ms")


def measure_per_image(forward: Callable[[Any], Any], make_input: Callable[[int], Any], *,
                      sizes: tuple[int, ...] = (1, PROBE_BATCH), budget_s: float = MEASURE_BUDGET_S,
                      max_rounds: int = MAX_ROUNDS,
                      clock: Callable[[], float] | None = None) -> tuple[dict[int, float], int]:
    """Median milliseconds per image of ``forward(make_input(n))`` for each ``n`` in ``sizes``.

    One forward of the smallest size first (warm already: the start-up warm-up ran it) estimates the cost,
    linear in images. If warming the larger sizes (the first call at a new shape allocates, on some
    engines compiles) and one round do not fit in ``budget_s``, nothing more is run: ``({sizes[0]: ms}, 0)``
    (too slow to probe). Otherwise every larger size is warmed, then as many rounds as fit (at least one,
    at most ``max_rounds``) interleave the sizes (1, 4, 1, 4, ...). Returns ``({n: ms per image}, rounds)``.
    """
    clock = clock or time.perf_counter
    inputs = {n: make_input(n) for n in sizes}
    start = clock()
    forward(inputs[sizes[0]])
    first = clock() - start
    per_image = first / sizes[0]
    warm_rest, per_round = per_image * sum(sizes[1:]), per_image * sum(sizes)
    if first + warm_rest + per_round > budget_s:
        return {sizes[0]: round(per_image * 1000.0, 3)}, 0
    for n in sizes[1:]:
        forward(inputs[n])
    left = budget_s - first - warm_rest
    rounds = max(1, min(max_rounds, math.floor(left / per_round) if per_round > 0 else max_rounds))
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(rounds):
        for n in sizes:
            start = clock()
            forward(inputs[n])
            times[n].append((clock() - start) * 1000.0 / n)
    return {n: round(statistics.median(t), 3) for n, t in times.items()}, rounds


def decide(per_image_ms: dict[int, float], *, max_batch_size: int, max_batch_delay_ms: float,
           source: str = "measured", rounds: int = 0, min_gain: float = MIN_GAIN) -> BatchPlan:
    """The rule (module docstring): keep ``max_batch_size``/``max_batch_delay_ms`` if per-image time at the
    largest measured batch is at least ``min_gain`` times lower than at batch 1; else batch 1, no delay."""
    largest = max(per_image_ms)
    gain = per_image_ms[1] / per_image_ms[largest] if per_image_ms[largest] > 0 else math.inf
    if gain >= min_gain:
        return BatchPlan(max_batch_size, max_batch_delay_ms, source, dict(per_image_ms), round(gain, 3), rounds)
    return BatchPlan(1, 0.0, source, dict(per_image_ms), round(gain, 3), rounds)


def _blank_inputs(detector: Any) -> Callable[[int], Any]:
    """``n`` → the detector's network input for ``n`` letterbox-grey canvases with a textured middle
    (:meth:`stack`: a tensor for the torch Detector, an array for the exported one)."""
    size = detector.input_size
    canvas = np.full((size, size, 3), 114, np.uint8)
    rng = np.random.default_rng(0)
    canvas[size // 8: -size // 8] = rng.integers(0, 256, (size - 2 * (size // 8), size, 3), dtype=np.uint8)
    return lambda n: detector.stack([canvas] * n)


def _cache_key(detector: Any, threads: int) -> str:
    cpu = ""
    try:
        cpu = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    runtime = getattr(detector, "runtime", None)
    version = getattr(runtime, "version", "") if runtime is not None else ""
    if not version and getattr(detector, "engine", "torch") == "torch":
        import torch

        version = torch.__version__
    text = json.dumps([cpu, threads, detector.engine, version, detector.precision, detector.variant,
                       detector.num_classes, detector.input_size, PROBE_BATCH, MIN_GAIN])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_cached(folders: list[Path], name: str) -> dict[str, Any] | None:
    for folder in folders:
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
    return None


def _write_cached(folders: list[Path], name: str, data: dict[str, Any]) -> None:
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{name}.tmp"
            tmp.write_text(json.dumps(data))
            tmp.replace(folder / name)
            return
        except OSError:
            continue


def plan_batching(detector: Any, settings: Any, *, cache_folders: list[Path] | None = None,
                  measurable: bool = True) -> BatchPlan:
    """The batcher's size and delay for ``detector`` under ``settings`` (the rule: module docstring).

    ``measurable`` False (no warm-up allowed, or a stub forward): on the CPU, batch 1 and no delay
    unless given explicitly. ``cache_folders``: where a decision is looked up, then written (first
    writable)."""
    size, delay = settings.max_batch_size, settings.max_batch_delay_ms
    if detector.device.type != "cpu" or any(settings.is_explicit(name) for name in MEASURED_ON_CPU):
        return BatchPlan(size, delay, "flags")
    if not measurable:
        return BatchPlan(1, 0.0, "not measured")
    from predictor.runtimes.base import cpu_threads

    folders = list(cache_folders or [])
    name = f"batching-{_cache_key(detector, cpu_threads())}.json"
    cached = _read_cached(folders, name)
    if cached is not None:
        try:
            per_image = {int(k): float(v) for k, v in cached["per_image_ms"].items()}
            if 1 not in per_image or not all(math.isfinite(v) and v > 0 for v in per_image.values()):
                raise ValueError("not measured figures")
            return decide(per_image, max_batch_size=size, max_batch_delay_ms=delay, source="cached",
                          rounds=int(cached["rounds"]))
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError):
            pass  # a broken or foreign cache file: measure again
    per_image, rounds = measure_per_image(detector.forward, _blank_inputs(detector))
    if not rounds:  # a forward too slow to probe within the budget: one image at a time
        return BatchPlan(1, 0.0, f"too slow to probe in {MEASURE_BUDGET_S:g} s", per_image)
    _write_cached(folders, name, {"per_image_ms": {str(k): v for k, v in per_image.items()}, "rounds": rounds})
    plan = decide(per_image, max_batch_size=size, max_batch_delay_ms=delay, rounds=rounds)
    trim = getattr(getattr(detector, "runtime", None), "trim", None)
    if plan.max_batch_size < PROBE_BATCH and trim is not None:
        trim()  # the probe batch's activations are not needed again: give their memory back
    return plan
