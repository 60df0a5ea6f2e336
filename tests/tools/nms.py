"""Test helper: :func:`predictor.ops.non_max_suppression` split per image, with thresholds as keywords."""

from __future__ import annotations

import torch

from predictor import ops
from predictor.settings import DetectParams


def per_image_nms(
    pred: torch.Tensor, confidence: float = 0.25, iou: float = 0.45, *, max_candidates: int = 30000, **params
) -> list[torch.Tensor]:
    """``N`` float32 tensors ``[k, 6]`` (x1, y1, x2, y2, score, class), one per image of ``pred``;
    ``params`` are the other :class:`~predictor.settings.DetectParams` fields."""
    det, image = ops.non_max_suppression(pred, DetectParams(confidence=confidence, iou=iou, **params),
                                         max_candidates=max_candidates)
    return list(torch.split(det, torch.bincount(image, minlength=pred.shape[0]).tolist()))
