"""OpenVINO (CPU plugin) running our exported network (see :mod:`.export`), fp32 or bf16."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from predictor.runtimes.base import Runtime, cpu_threads

__all__ = ["OpenVinoRuntime", "cpu_supports_bf16"]

_HINTS = {"fp32": "f32", "bf16": "bf16"}


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin reports native bf16 (AVX-512 BF16 / AMX) on this machine."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoRuntime(Runtime):
    """A model compiled for OpenVINO's CPU plugin.

    ``precision`` is an explicit inference precision hint: ``fp32`` (default; OpenVINO's own default on a
    bf16-capable CPU would silently be bf16) or ``bf16`` (refused where the CPU lacks it). Latency hint,
    ``threads`` inference threads, not pinned to cores, one infer request guarded by a lock (requests are not thread-safe; the
    service runs one forward at a time on the CPU anyway). ``model_path`` is an ONNX file or an IR ``.xml``;
    ``cache_dir``: where OpenVINO caches the compiled model (``openvino/`` inside it).
    """

    name = "openvino"

    def __init__(self, model_path: str | Path, *, precision: str = "fp32", threads: int | None = None,
                 cache_dir: str | Path | None = None):
        import openvino as ov

        if precision not in _HINTS:
            raise ValueError(f"engine 'openvino' runs {tuple(_HINTS)} (got precision {precision!r})")
        core = ov.Core()
        if cache_dir is not None:  # OpenVINO's compiled-blob cache: a restart skips compilation
            try:
                (Path(cache_dir) / "openvino").mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": str(Path(cache_dir) / "openvino")})
            except OSError:
                pass
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise ValueError("precision 'bf16' needs a CPU with native bf16 (AVX-512 BF16 or AMX); use fp32")
        self.threads = threads or cpu_threads()
        config = {
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": self.threads,
            # OpenVINO pins its threads to cores by default: on a shared node (a pod's CPU quota, neighbours,
            # this process's own decode threads) a pinned thread waits for its busy core instead of moving.
            # Measured on the 2-core host at load 5-6, interleaved: yolov7-tiny b1 121-184 ms unpinned against
            # 142-236 pinned, yolov7 823 against 1189 ms (docs/cpu.md).
            "ENABLE_CPU_PINNING": False,
        }
        self.compiled = core.compile_model(_read_model(core, model_path), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()
        self.precision = precision
        self.version = ov.get_version()

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            self._request.infer({0: x})
            return self._request.get_output_tensor(0).data.copy()  # the request reuses its buffer


def _read_model(core: Any, model_path: str | Path) -> Any:
    """The model of an ONNX file through OpenVINO's ONNX front end alone, else ``core.read_model`` (IR).
    ``read_model`` tries every front end on a file ONNX cannot parse, and TensorFlow's writes its own
    parse errors to stderr: a broken ``.onnx`` then logs lines that are not ours beside our one-line error."""
    if str(model_path).endswith(".onnx"):
        from openvino.frontend import FrontEndManager

        front_end = FrontEndManager().load_by_framework("onnx")
        return front_end.convert(front_end.load(str(model_path)))
    return core.read_model(str(model_path))
