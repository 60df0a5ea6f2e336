"""What every CPU engine offers the :class:`~predictor.engine.Detector`: ``run(x) -> raw``.

``x`` is a float32 ``[N, 3, S, S]`` array in [0, 1] (NCHW, C-contiguous); ``raw`` is the decoded head
output ``[N, R, 5 + nc]`` float32 (cx, cy, w, h in input pixels, objectness, class probabilities) — the
same contract as our PyTorch network, so NMS and box mapping are shared by every engine. numpy only:
the torch-free runtime uses :meth:`Runtime.run` directly; the Detector calls the object with a tensor.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["Runtime", "cpu_threads"]


def cpu_threads() -> int:
    """The cores this process may run on (cgroup CPU quotas aside): the engines' intra-op threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Runtime:
    """One loaded engine. Subclasses set ``name``, ``precision``, ``version`` and implement :meth:`run`."""

    name = "runtime"
    precision = "fp32"
    version = ""

    def run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def trim(self) -> None:
        """Give back memory held for batches larger than those to come (after the start-up batching probe,
        :mod:`predictor.batch_plan`); a no-op where the engine holds none."""

    def __call__(self, batch: Any) -> Any:
        """The Detector's hook: a ``torch.Tensor`` batch (any memory format) in, a tensor out."""
        import torch

        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.run(x))

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "precision": self.precision, "engine_version": self.version}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r}, version={self.version!r})"
