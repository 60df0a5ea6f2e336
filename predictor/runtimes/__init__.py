"""CPU inference engines behind the :class:`~predictor.engine.Detector`: ``--engine``.

* ``torch`` — our PyTorch network (fused, channels-last; on CUDA fp16 + CUDA graphs / compile).
* ``onnxruntime`` — ONNX Runtime's CPU provider on the network exported from our own weights (fp32).
* ``openvino`` — OpenVINO's CPU plugin on the same export, fp32 (or bf16 when asked for explicitly).
* ``auto`` — on CUDA: torch. On the CPU: every installed engine that passes the parity check against
  the torch network (:func:`predictor.runtimes.select.parity`) on this machine is timed, interleaved, on
  a probe batch; the fastest median wins (torch always qualifies). The decision is cached with the
  export, keyed by weights, input size, precision, threads, CPU model and engine versions, so a restart
  does not time again. With ``--precision bf16`` auto means openvino.

Only the forward changes: letterbox, batching, thresholds, NMS and every protocol are shared.
"""

from __future__ import annotations

from predictor.runtimes.select import attach

__all__ = ["attach"]
