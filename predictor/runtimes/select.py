"""Attach an engine to a Detector; ``auto`` = the fastest engine that passes parity here.

Parity (:func:`parity`) compares an engine's raw head output with the torch network's on a fixed probe
batch: box coordinates (input pixels) and probabilities, max absolute difference, within
:data:`TOLERANCES` for the precision. fp32 engines agree with torch to rounding (measured: <= 0.06 px,
<= 1e-4 on the random-weight fixtures); bf16 is not parity-checked (it is only ever an explicit choice,
and its agreement is reported by the benchmark instead).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import statistics
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from predictor.runtimes.base import Runtime, cpu_threads
from predictor.settings import ENGINES

__all__ = ["TOLERANCES", "attach", "build_runtime", "parity", "probe_batch"]

log = logging.getLogger(__name__)

CPU_ENGINES = ("openvino", "onnxruntime")  # tried by ``auto`` in this order (ties go to the first)
TOLERANCES = {"fp32": {"box_px": 0.5, "prob": 1e-3}}
AUTO_ROUNDS = 3


def build_runtime(engine: str, onnx_path: str | Path, *, precision: str = "fp32",
                  threads: int | None = None) -> Runtime:
    """A loaded ``onnxruntime`` or ``openvino`` engine for an exported model."""
    if engine == "onnxruntime":
        from predictor.runtimes.onnxruntime import OnnxRuntime

        return OnnxRuntime(onnx_path, precision=precision, threads=threads)
    if engine == "openvino":
        from predictor.runtimes.openvino import OpenVinoRuntime

        return OpenVinoRuntime(onnx_path, precision=precision, threads=threads, cache_dir=Path(onnx_path).parent)
    raise ValueError(f"not an exported-model engine: {engine!r} (one of {CPU_ENGINES})")


def probe_batch(input_size: int, seed: int = 0) -> np.ndarray:
    """A fixed ``[1, 3, S, S]`` float32 input in [0, 1]: smooth blobs with a letterbox-grey border."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((3, input_size // 32 + 1, input_size // 32 + 1), dtype=np.float32)
    image = np.repeat(np.repeat(coarse, 32, axis=1), 32, axis=2)[:, :input_size, :input_size]
    image[:, : input_size // 8] = 114 / 255.0
    return np.ascontiguousarray(image[None])


def parity(reference: np.ndarray, candidate: np.ndarray, precision: str = "fp32") -> dict[str, Any]:
    """Compare raw outputs ``[N, R, 5 + nc]``: worst box coordinate (px) and probability differences."""
    tol = TOLERANCES[precision]
    if reference.shape != candidate.shape:
        return {"ok": False, "reason": f"shape {candidate.shape} != {reference.shape}"}
    box = float(np.abs(reference[..., :4] - candidate[..., :4]).max())
    prob = float(np.abs(reference[..., 4:] - candidate[..., 4:]).max())
    ok = bool(np.isfinite(candidate).all() and box <= tol["box_px"] and prob <= tol["prob"])
    return {"ok": ok, "box_px": box, "prob": prob, "box_px_tol": tol["box_px"], "prob_tol": tol["prob"]}


def _installed(engine: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(engine) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook refusing it
        return False


def _machine_key(precision: str, threads: int) -> str:
    versions = {}
    if _installed("torch"):
        import torch

        versions["torch"] = torch.__version__
    for engine in CPU_ENGINES:
        if _installed(engine):
            versions[engine] = __import__(engine).__version__
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = json.dumps([cpu, precision, threads, versions], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _torch_forward(detector: Any, x: np.ndarray) -> np.ndarray:
    import torch

    batch = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return detector.model(batch).numpy()


def _choose(detector: Any, onnx_path: Path, precision: str, threads: int) -> tuple[str, dict[str, Any]]:
    """``auto`` on the CPU: parity-check each installed engine against torch, time the passing ones
    (and torch) interleaved, return the fastest and the evidence."""
    x = probe_batch(detector.input_size)
    reference = _torch_forward(detector, x)
    contenders: dict[str, Any] = {"torch": lambda: _torch_forward(detector, x)}
    report: dict[str, Any] = {"parity": {}, "median_ms": {}}
    runtimes: dict[str, Runtime] = {}
    for engine in CPU_ENGINES:
        if not _installed(engine):
            report["parity"][engine] = {"ok": False, "reason": "not installed"}
            continue
        try:
            runtime = build_runtime(engine, onnx_path, precision=precision, threads=threads)
            check = parity(reference, runtime.run(x), precision)
        except Exception as error:  # noqa: BLE001 - a broken engine is just not chosen
            check = {"ok": False, "reason": repr(error)}
        report["parity"][engine] = check
        if check["ok"]:
            runtimes[engine] = runtime
            contenders[engine] = lambda r=runtime: r.run(x)
    report["median_ms"] = _time_interleaved(contenders)
    best = min(report["median_ms"], key=report["median_ms"].__getitem__)
    return best, report


def _time_interleaved(contenders: dict[str, Any], rounds: int = AUTO_ROUNDS) -> dict[str, float]:
    """Median ms of each ``contenders[name]()`` over ``rounds`` rounds, the contenders taking turns."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(t) for name, t in times.items()}


def _cached_choice(decision: Path, choose: Any, allowed: Collection[str]) -> str:
    """The engine named in ``decision`` (JSON) when it is one of ``allowed``, else ``choose()`` → (engine,
    report), logged and written there (a stale, foreign or broken file is chosen again, never served)."""
    try:
        engine = json.loads(decision.read_text())["engine"]
        if isinstance(engine, str) and engine in allowed:
            return engine
    except (OSError, ValueError, KeyError, TypeError):
        pass
    engine, report = choose()
    log.info("engine auto chose %s: %s", engine, json.dumps(report))
    try:
        decision.write_text(json.dumps({"engine": engine, **report}, indent=1))
    except OSError:
        log.warning("could not cache the engine choice in %s", decision)
    return engine


def choose_exported(onnx_path: str | Path, installed: list[str], *, precision: str = "fp32",
                    threads: int | None = None) -> Runtime:
    """``auto`` without torch (the CPU image): the fastest of the ``installed`` exported-model engines on
    ``onnx_path``, timed interleaved on the probe batch. No torch reference to check parity against: an
    engine whose output is not finite or not the shape of the others' is not chosen. The choice is cached
    beside the export (or in the writable engine cache, :func:`predictor.runtimes.export.cache_dirs`)."""
    onnx_path = Path(onnx_path)
    threads = threads or cpu_threads()
    if len(installed) == 1:
        return build_runtime(installed[0], onnx_path, precision=precision, threads=threads)
    runtimes: dict[str, Runtime] = {}

    def choose() -> tuple[str, dict[str, Any]]:
        x = probe_batch(int(json.loads(Path(f"{onnx_path}.json").read_text())["input_size"]))
        outputs, report = {}, {"checks": {}}
        for engine in installed:
            try:
                runtimes[engine] = build_runtime(engine, onnx_path, precision=precision, threads=threads)
                outputs[engine] = runtimes[engine].run(x)
            except Exception as error:  # noqa: BLE001 - a broken engine is just not chosen
                report["checks"][engine] = {"ok": False, "reason": repr(error)}
        shapes = [out.shape for out in outputs.values()]
        usable = {e: r for e, r in runtimes.items() if e in outputs and np.isfinite(outputs[e]).all()
                  and shapes.count(outputs[e].shape) == len(shapes)}
        for engine in outputs:
            report["checks"][engine] = {"ok": engine in usable}
        if not usable:
            raise ValueError(f"{onnx_path}: no installed engine ({', '.join(installed)}) runs it: {report}")
        report["median_ms"] = _time_interleaved({e: (lambda r=r: r.run(x)) for e, r in usable.items()})
        return min(report["median_ms"], key=report["median_ms"].__getitem__), report

    from predictor.runtimes.export import _writable, cache_dirs

    folder = next((d for d in [onnx_path.parent, *cache_dirs(onnx_path)[1:]] if _writable(d)), onnx_path.parent)
    engine = _cached_choice(folder / f"auto-{onnx_path.stem}-{_machine_key(precision, threads)}.json", choose,
                            installed)
    if engine in runtimes:
        return runtimes[engine]
    return build_runtime(engine, onnx_path, precision=precision, threads=threads)


def attach(detector: Any, *, engine: str, weights: str | Path, precision: str = "fp32",
           cache: str | Path | None = None, threads: int | None = None) -> str:
    """Give ``detector`` the engine asked for (``detector.runtime``; None for torch) and return its name.

    ``precision``: ``fp32`` or ``bf16`` for the exported engines (the Detector's own torch network stays
    fp32 on the CPU); ``auto``/``fp16`` apply to torch only. Raises ``ValueError`` for a combination that
    cannot run (a CPU engine on CUDA, bf16 on an engine or CPU without it)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    cpu = detector.device.type == "cpu"
    if not cpu:
        if engine not in ("auto", "torch"):
            raise ValueError(f"engine {engine!r} runs on the CPU only; use 'torch' (or 'auto') on {detector.device}")
        engine = "torch"
    precision = "fp32" if precision in ("auto", "fp32") and cpu else precision
    if precision == "bf16":
        if engine == "auto":
            engine = "openvino"
        if engine != "openvino":
            raise ValueError(f"precision 'bf16' runs on engine 'openvino' only (got engine {engine!r})")
    detector.engine, detector.runtime = "torch", None
    if engine == "torch":
        return "torch"
    from predictor.runtimes.export import find_or_export, write_metadata

    threads = threads or cpu_threads()
    if engine == "auto" and not any(_installed(name) for name in CPU_ENGINES):
        return "torch"  # the predictor extra alone: nothing to choose from
    try:
        onnx_path = find_or_export(detector.model, weights, detector.input_size, cache=cache)
        write_metadata(onnx_path, detector)  # a torch-free restart serves it (predictor.runtimes.detector)
    except Exception:
        if engine != "auto":
            raise
        log.warning("engine auto: the export failed, serving with torch", exc_info=True)
        return "torch"
    if engine == "auto":
        decision = onnx_path.parent / f"auto-{onnx_path.stem}-{_machine_key(precision, threads)}.json"
        engine = _cached_choice(decision, lambda: _choose(detector, onnx_path, precision, threads),
                                ("torch", *CPU_ENGINES))
        if engine == "torch":
            return "torch"
    detector.runtime = build_runtime(engine, onnx_path, precision=precision, threads=threads)
    detector.engine = engine
    detector.precision = detector.runtime.precision
    return engine
