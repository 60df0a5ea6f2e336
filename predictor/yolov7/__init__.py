"""YOLOv7 in plain PyTorch: variants, network, fusion and a safe checkpoint loader.

Public names are imported lazily, so ``import predictor.yolov7`` does no work (not even ``import torch``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "YOLOv7",
    "VARIANTS",
    "fuse_model",
    "load_checkpoint",
    "build_model",
    "Checkpoint",
    "CheckpointError",
    "save_export",
]

_HOMES = {
    "YOLOv7": ".network",
    "VARIANTS": ".variants",
    "fuse_model": ".fuse",
    "load_checkpoint": ".checkpoint",
    "build_model": ".checkpoint",
    "Checkpoint": ".checkpoint",
    "CheckpointError": ".checkpoint",
    "save_export": ".checkpoint",
}

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint import Checkpoint, CheckpointError, build_model, load_checkpoint, save_export
    from .fuse import fuse_model
    from .network import YOLOv7
    from .variants import VARIANTS


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
