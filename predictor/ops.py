"""Pre- and post-processing arithmetic shared by the engine, the service and the tests.

Everything here follows the official YOLOv7 semantics (see ``docs/ops.md``):

* :func:`letterbox_geometry` (from :mod:`predictor.boxes`, the torch-free half) — where an image lands in the letterboxed canvas: a
  :class:`LetterboxGeometry`, the one description of a letterbox, built only here and carried from the
  letterbox to the box mapping.
* :func:`letterbox` — OpenCV resize + constant padding, bit-exact with the official letterbox.
* :func:`letterbox_batch_tensor` — the same geometry for a batch of torch tensors on their own device
  (the GPU path), one resize per distinct image shape; pixels may differ from OpenCV's fixed-point
  bilinear by a grey level or so (measured in ``docs/ops.md``).
* :func:`non_max_suppression` — candidate filtering (vectorised over the batch), best class only,
  class-aware NMS, at most ``max_detections`` per image; thresholds come whole as a
  :class:`~predictor.settings.DetectParams`.
* :func:`scale_boxes` / :func:`clip_boxes` / :func:`xywh_to_xyxy` — box maths.

Box formats: ``xywh`` = (centre x, centre y, width, height); ``xyxy`` = (x1, y1, x2, y2), both in pixels.
Shapes are ``(height, width)`` unless a name says otherwise. Nothing is computed at import time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision

from predictor import boxes as _np_boxes
from predictor.boxes import PAD_COLOR, LetterboxGeometry, letterbox, letterbox_geometry
from predictor.settings import DetectParams

__all__ = [
    "LetterboxGeometry",
    "letterbox_geometry",
    "letterbox",
    "letterbox_batch_tensor",
    "xywh_to_xyxy",
    "clip_boxes",
    "scale_boxes",
    "non_max_suppression",
    "PAD_COLOR",
]


def _resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, C, H, W]`` float → ``[N, C, *size]`` (bilinear, half-pixel centres, no antialiasing: the GPU
    letterbox's resize); returned as is when it already has that size."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def letterbox_batch_tensor(
    images: Sequence[torch.Tensor],
    size: int,
    *,
    dtype: torch.dtype,
    color: int | Sequence[int] = PAD_COLOR,
) -> tuple[torch.Tensor, list[LetterboxGeometry]]:
    """:func:`letterbox` for a batch of tensors on their own device (the GPU path), straight into the
    network input.

    Same geometry as :func:`letterbox`; the resize is ``F.interpolate(mode="bilinear",
    align_corners=False, antialias=False)`` in float32 — OpenCV's fixed-point INTER_LINEAR differs from
    it by at most a grey level or two (see ``docs/ops.md``). Images of the same shape are resized
    together (one ``interpolate`` per distinct shape, not per image), so a batch from one camera or one
    upload form costs a handful of kernels; each image's values do not depend on the others.

    Args:
        images: ``N`` ``uint8`` tensors ``[3, H, W]`` (CHW), all on one device, any sizes.
        size: the square canvas ``S`` (no ``auto`` padding: the batch needs one shape).
        dtype: a floating dtype; values are in [0, 1].

    Returns:
        ``([N, 3, S, S]`` in channels-last memory on the images' device, one geometry per image).
    """
    if not images:
        raise ValueError("images is empty")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    device = images[0].device
    geometries = []
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
            got = getattr(image, "shape", type(image).__name__)
            raise ValueError(f"image {index} must be a uint8 tensor [3, H, W], got {got}")
        geometries.append(letterbox_geometry(tuple(image.shape[1:]), size))
        groups.setdefault(tuple(image.shape[1:]), []).append(index)
    fill = torch.from_numpy(np.resize(np.asarray(color, dtype=np.float32), 3)).mul_(1.0 / 255.0).to(dtype)
    batch = torch.empty((len(images), size, size, 3), dtype=dtype, device=device)
    batch[:] = fill.to(device)  # NHWC storage: the channels-last layout of [N, 3, S, S]
    batch = batch.permute(0, 3, 1, 2)
    for indices in groups.values():
        geo = geometries[indices[0]]
        new_h, new_w = geo.resized
        top, _, left, _ = geo.borders
        x = _resize_bilinear(torch.stack([images[i] for i in indices]).float(), (new_h, new_w))
        x = x.mul_(1.0 / 255.0).to(dtype)
        if len(indices) == len(images):
            batch[:, :, top : top + new_h, left : left + new_w] = x
        else:
            rows = torch.as_tensor(indices, device=device)
            batch[rows, :, top : top + new_h, left : left + new_w] = x
    return batch, geometries


# --------------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------------
def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` (cx, cy, w, h) → ``[..., 4]`` (x1, y1, x2, y2); a new tensor."""
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 values in the last dimension, got shape {tuple(boxes.shape)}")
    xy, wh = boxes[..., :2], boxes[..., 2:] / 2
    return torch.cat((xy - wh, xy + wh), dim=-1)


def clip_boxes(boxes: torch.Tensor, shape: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Clip xyxy ``boxes [..., 4]`` in place to an image of ``shape`` = (h, w); returns ``boxes``.

    ``shape`` may also be a ``[K, 2]`` tensor holding each row's own (h, w), for ``boxes [K, 4]`` of
    several images at once."""
    if isinstance(shape, torch.Tensor) and shape.ndim == 2:
        limits = shape.to(boxes.device, boxes.dtype)
        for column, limit in ((0, 1), (1, 0), (2, 1), (3, 0)):
            boxes[:, column].clamp_(min=0).clamp_(max=limits[:, limit])
        return boxes
    h, w = int(shape[0]), int(shape[1])
    boxes[..., 0].clamp_(0, w)
    boxes[..., 1].clamp_(0, h)
    boxes[..., 2].clamp_(0, w)
    boxes[..., 3].clamp_(0, h)
    return boxes


def scale_boxes(
    boxes: torch.Tensor, geometries: Sequence[LetterboxGeometry], image: torch.Tensor
) -> torch.Tensor:
    """:func:`predictor.boxes.scale_boxes` for tensors: ``boxes [K, 4]`` xyxy letterboxed, ``image`` int64
    ``[K]`` (each row's index into ``geometries``) → a new ``[K, 4]`` tensor of original-image xyxy, clipped,
    on ``boxes``' device (computed on the host by the one implementation)."""
    host = boxes[:, :4].detach().cpu().numpy()
    out = _np_boxes.scale_boxes(host, geometries, image.to(torch.long).cpu().numpy())  # one implementation
    return torch.from_numpy(out).to(boxes.device)


# --------------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------------
def non_max_suppression(
    pred: torch.Tensor, params: DetectParams, *, max_candidates: int = 30000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official YOLOv7 NMS (``multi_label=False``) on decoded head outputs, for a whole batch at once.

    Args:
        pred: ``[N, R, 5 + nc]`` rows of (cx, cy, w, h, objectness, class probs…), any float dtype,
            any device. Boxes in input (letterboxed) pixels.
        params: the request's :class:`~predictor.settings.DetectParams` (checked when it was built): a
            row is a candidate if objectness > ``confidence``; its score is objectness × best class
            probability and it is kept if score > ``confidence`` (and its class is in ``classes``);
            boxes of one class (of any, if ``agnostic``) overlapping more than ``iou`` are suppressed;
            at most ``max_detections`` per image, highest scores first.
        max_candidates: at most this many candidates (by score) enter NMS per image.

    Returns:
        ``det`` float32 ``[K, 6]`` (x1, y1, x2, y2, score, class) for the whole batch, grouped by image
        in order, by descending score within each image; ``image`` int64 ``[K]``, each row's image; both
        on ``pred``'s device.
    """
    if not isinstance(pred, torch.Tensor) or pred.ndim != 3 or pred.shape[-1] < 6:
        got = getattr(pred, "shape", type(pred).__name__)
        raise ValueError(f"pred must be a tensor [N, R, 5 + num_classes] with num_classes >= 1, got {got}")
    if int(max_candidates) < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
    confidence, max_detections = params.confidence, params.max_detections
    n, _, width = pred.shape
    nc = width - 5
    class_filter = None
    if params.classes is not None:
        ids = list(params.classes)
        bad = [c for c in ids if c >= nc]
        if bad:
            raise ValueError(f"class ids must be in [0, {nc - 1}], got {bad}")
        class_filter = torch.tensor(ids, dtype=torch.long, device=pred.device)

    # Candidate filtering for the whole batch at once: objectness first (cheap, drops most rows),
    # then score = obj × cls on the survivors only, in float32.
    img_idx, row_idx = (pred[..., 4] > confidence).nonzero(as_tuple=True)
    x = pred[img_idx, row_idx].float()
    score, cls = (x[:, 5:] * x[:, 4:5]).max(dim=1)
    keep = score > confidence
    if class_filter is not None:
        keep &= torch.isin(cls, class_filter)
    keep = keep.nonzero().squeeze(1)  # one host round trip for the four selections below
    img_idx, x, score, cls = img_idx[keep], x[keep], score[keep], cls[keep]
    boxes = xywh_to_xyxy(x[:, :4])
    det = torch.cat((boxes, score[:, None], cls[:, None].float()), dim=1)
    counts = torch.bincount(img_idx, minlength=n)
    # the largest candidate count and the coordinate range, in one host round trip
    if det.shape[0]:
        most, low, high = torch.stack((counts.max().double(), *torch.aminmax(det[:, :4].double()))).tolist()
    else:
        most, low, high = 0, 0.0, 0.0

    # Per image at most max_candidates (by score) enter NMS: trimmed here only where an image has more.
    if most > max_candidates:
        order = torch.argsort(score, descending=True, stable=True)
        order = order[torch.argsort(img_idx[order], stable=True)]  # by image, by score within each
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.numel(), device=order.device) - starts[img_idx[order]]
        trimmed = order[rank < max_candidates].sort().values  # back to row-major (grouped by image)
        img_idx, det = img_idx[trimmed], det[trimmed]

    # One NMS for the whole batch: boxes of different images (and classes, unless agnostic) are moved
    # apart so they never overlap — in float64, where that shift costs no precision. torchvision returns
    # the kept rows by descending score; a stable sort by image keeps that order within each image.
    group = img_idx if params.agnostic else img_idx * nc + det[:, 5].long()
    shift = (group.double() * (high - low + 1.0))[:, None]
    kept = torchvision.ops.nms(det[:, :4].double() + shift, det[:, 4].double(), params.iou)
    kept = kept[torch.argsort(img_idx[kept], stable=True)]
    counts = torch.bincount(img_idx[kept], minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(kept.numel(), device=kept.device) - starts[img_idx[kept]]
    kept = kept[rank < max_detections]
    return det[kept], img_idx[kept]
