"""ONNX Runtime (CPU execution provider) running our exported network (see :mod:`.export`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from predictor.runtimes.base import Runtime, cpu_threads

__all__ = ["OnnxRuntime"]


class OnnxRuntime(Runtime):
    """An ``onnxruntime.InferenceSession`` on the CPU, fp32 only.

    ``threads`` intra-op threads (default: the cores this process may use); one inter-op thread (the
    graph is a chain). Spinning is off: a spinning pool burns the cores that the decode threads and the
    event loop need between forwards (see docs/cpu.md). ``session.run`` is thread-safe.
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, *, precision: str = "fp32", threads: int | None = None):
        import onnxruntime as ort

        if precision != "fp32":
            raise ValueError(f"engine 'onnxruntime' runs fp32 only (got precision {precision!r}); "
                             "bf16 needs --engine openvino")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.version = ort.__version__
        self.threads = options.intra_op_num_threads
        self._run_options: ort.RunOptions | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        options, self._run_options = self._run_options, None
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}, options)[0]

    def trim(self) -> None:
        """The next run shrinks ONNX Runtime's CPU memory arena at its end: the chunks a larger batch grew it
        by go back to the system (measured, yolov7-tiny at 640: RSS 237 MB after a batch of 4, 115 MB after
        the shrinking batch-1 run, 147 MB serving batch 1 afterwards)."""
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._run_options = options
