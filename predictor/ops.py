"""Pre- and post-processing shared by the engine, the service and the tests.

Everything here follows the official YOLOv7 semantics (see ``docs/ops.md``):

* :func:`letterbox` — OpenCV resize + constant padding, bit-exact with the official letterbox.
* :func:`letterbox_tensor` — the same geometry on a torch tensor (GPU path); pixels may differ from
  OpenCV's fixed-point bilinear by a grey level or so (measured in ``docs/ops.md``);
  :func:`letterbox_batch_tensor` does a whole batch, one resize per distinct image shape.
* :func:`non_max_suppression` — candidate filtering (vectorised over the batch), best class only,
  class-aware NMS, ``max_det`` per image.
* :func:`scale_boxes` / :func:`clip_boxes` / :func:`xywh_to_xyxy` — box maths.

Box formats: ``xywh`` = (centre x, centre y, width, height); ``xyxy`` = (x1, y1, x2, y2), both in pixels.
Shapes are ``(height, width)`` unless a name says otherwise. Nothing is computed at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision

__all__ = [
    "LetterboxGeometry",
    "letterbox_geometry",
    "letterbox",
    "letterbox_tensor",
    "letterbox_batch_tensor",
    "xywh_to_xyxy",
    "clip_boxes",
    "scale_boxes",
    "non_max_suppression",
    "non_max_suppression_flat",
]

PAD_COLOR = (114, 114, 114)


# --------------------------------------------------------------------------------------------------
# letterbox
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LetterboxGeometry:
    """Where an image of ``shape`` lands inside the letterboxed canvas.

    ``resized`` is (height, width) after scaling; ``ratio`` is (ratio_w, ratio_h) (equal);
    ``pad`` is (pad_w, pad_h) — half of the total padding, possibly ``x.5``; ``borders`` is
    (top, bottom, left, right) in whole pixels; ``canvas`` is the output (height, width).
    """

    shape: tuple[int, int]
    resized: tuple[int, int]
    ratio: tuple[float, float]
    pad: tuple[float, float]
    borders: tuple[int, int, int, int]
    canvas: tuple[int, int]


def _as_hw(new_shape: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(new_shape, (int, np.integer)):
        h = w = int(new_shape)
    else:
        if len(new_shape) != 2:
            raise ValueError(f"new_shape must be an int or (height, width), got {new_shape!r}")
        h, w = (int(v) for v in new_shape)
    if h <= 0 or w <= 0:
        raise ValueError(f"new_shape must be positive, got {new_shape!r}")
    return h, w


def letterbox_geometry(
    shape: Sequence[int],
    new_shape: int | Sequence[int] = 640,
    *,
    auto: bool = False,
    stride: int = 32,
    scaleup: bool = True,
) -> LetterboxGeometry:
    """The official letterbox arithmetic for an image of ``shape`` = (h, w).

    ``r = min(H/h, W/w)`` (capped at 1 when ``scaleup`` is False); resized size
    ``(round(w·r), round(h·r))`` with Python's ``round``; padding ``dw = W − new_w``, ``dh = H − new_h``
    (reduced modulo ``stride`` when ``auto``), halved; borders ``top = round(dh/2 − 0.1)``,
    ``bottom = round(dh/2 + 0.1)``, likewise left/right.
    """
    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image shape must be positive, got {tuple(shape)!r}")
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    nh, nw = _as_hw(new_shape)
    r = min(nh / h, nw / w)
    if not scaleup:
        r = min(r, 1.0)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    dw, dh = nw - new_w, nh - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    canvas = (new_h + top + bottom, new_w + left + right)
    return LetterboxGeometry((h, w), (new_h, new_w), (r, r), (dw, dh), (top, bottom, left, right), canvas)


def letterbox(
    image: np.ndarray,
    new_shape: int | Sequence[int] = 640,
    color: Sequence[int] = PAD_COLOR,
    auto: bool = False,
    stride: int = 32,
    scaleup: bool = True,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize ``image`` keeping its aspect ratio and pad it to ``new_shape`` (official semantics).

    Args:
        image: ``uint8`` array ``[H, W, C]`` (any channel order; the operation is per channel).
        new_shape: target size, an int (square) or (height, width).
        color: padding value per channel.
        auto: minimal rectangle — pad only up to the next multiple of ``stride``.
        stride: see ``auto``.
        scaleup: allow enlarging small images (False: only shrink).

    Returns:
        ``(img, ratio, pad)``: the letterboxed ``[H', W', C]`` array (a new array), ``ratio`` =
        (ratio_w, ratio_h) and ``pad`` = (pad_w, pad_h) such that
        ``x_letterboxed = x_original · ratio_w + pad_w``.
    """
    import cv2  # heavy import kept out of module import time

    if not isinstance(image, np.ndarray) or image.ndim != 3:
        got = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"letterbox expects an HxWxC numpy array, got {got}")
    geo = letterbox_geometry(image.shape[:2], new_shape, auto=auto, stride=stride, scaleup=scaleup)
    new_h, new_w = geo.resized
    if (image.shape[0], image.shape[1]) != (new_h, new_w):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        if image.ndim == 2:  # cv2 drops a single channel axis
            image = image[:, :, None]
    top, bottom, left, right = geo.borders
    c = image.shape[2]
    out = np.empty((geo.canvas[0], geo.canvas[1], c), dtype=image.dtype)
    out[...] = np.resize(np.asarray(color, dtype=image.dtype), c)
    out[top : top + new_h, left : left + new_w] = image
    return out, geo.ratio, geo.pad


def letterbox_tensor(
    image: torch.Tensor,
    new_shape: int | Sequence[int] = 640,
    color: int | Sequence[int] = PAD_COLOR,
    auto: bool = False,
    stride: int = 32,
    scaleup: bool = True,
    *,
    channels_last: bool | None = None,
    dtype: torch.dtype = torch.uint8,
) -> tuple[torch.Tensor, tuple[float, float], tuple[float, float]]:
    """:func:`letterbox` on a torch tensor, on its own device (the GPU preprocessing path).

    Same geometry as :func:`letterbox`; the resize is ``F.interpolate(mode="bilinear",
    align_corners=False, antialias=False)`` in float32 — OpenCV's fixed-point INTER_LINEAR differs from
    it by at most a grey level or two (see ``docs/ops.md``).

    Args:
        image: ``uint8`` tensor ``[H, W, C]`` or ``[C, H, W]``.
        channels_last: True for HWC, False for CHW; ``None`` guesses (last dim 1/3/4 and first not).
        dtype: ``torch.uint8`` returns rounded grey levels; a float dtype returns values in [0, 1]
            (unrounded, ready for the network).

    Returns:
        ``(img [C, H', W'], ratio, pad)`` — always CHW.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        got = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"letterbox_tensor expects a 3-D tensor (HWC or CHW), got {got}")
    if channels_last is None:
        channels_last = image.shape[-1] in (1, 3, 4) and image.shape[0] not in (1, 3, 4)
    chw = image.permute(2, 0, 1) if channels_last else image
    c, h, w = chw.shape
    geo = letterbox_geometry((h, w), new_shape, auto=auto, stride=stride, scaleup=scaleup)
    new_h, new_w = geo.resized
    x = _resize_bilinear(chw.float()[None], (new_h, new_w))[0]
    if dtype == torch.uint8:
        x = x.round_().clamp_(0, 255)
        scale = 1.0
    elif dtype.is_floating_point:
        scale = 1.0 / 255.0
        x = x.mul_(scale)
    else:
        raise ValueError(f"dtype must be torch.uint8 or a floating dtype, got {dtype}")
    colors = np.resize(np.asarray(color, dtype=np.float32), c)
    fill = torch.from_numpy(colors).to(x.device).mul_(scale)
    out = fill.view(c, 1, 1).expand(c, geo.canvas[0], geo.canvas[1]).to(dtype).clone()
    top, _, left, _ = geo.borders
    out[:, top : top + new_h, left : left + new_w] = x.to(dtype)
    return out, geo.ratio, geo.pad


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
    """:func:`letterbox_tensor` for a whole batch, straight into the network input.

    Images of the same shape are resized together (one ``interpolate`` per distinct shape, not per
    image), so a batch from one camera or one upload form costs a handful of kernels. Per image the
    values equal :func:`letterbox_tensor` with a float ``dtype``.

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
    if _per_row(shape):
        limits = shape.to(boxes.dtype)  # type: ignore[union-attr]
        for column, limit in ((0, 1), (1, 0), (2, 1), (3, 0)):
            boxes[:, column].clamp_(min=0).clamp_(max=limits[:, limit])
        return boxes
    h, w = int(shape[0]), int(shape[1])
    boxes[..., 0].clamp_(0, w)
    boxes[..., 1].clamp_(0, h)
    boxes[..., 2].clamp_(0, w)
    boxes[..., 3].clamp_(0, h)
    return boxes


def _per_row(shape: Sequence[int] | torch.Tensor) -> bool:
    return isinstance(shape, torch.Tensor) and shape.ndim == 2


def scale_boxes(
    boxes: torch.Tensor,
    input_shape: Sequence[int],
    original_shape: Sequence[int] | torch.Tensor,
    ratio_pad: tuple[Sequence[float], Sequence[float]] | None = None,
) -> torch.Tensor:
    """Map xyxy boxes from the letterboxed input back to the original image, clipped.

    Args:
        boxes: ``[K, 4]`` xyxy in letterboxed pixels (not modified).
        input_shape: (h, w) of the letterboxed network input.
        original_shape: (h0, w0) of the original image; or a ``[K, 2]`` tensor with each row's own
            (h0, w0), to map the boxes of a whole batch at once (then without ``ratio_pad``).
        ratio_pad: ``((ratio_w, ratio_h), (pad_w, pad_h))`` as returned by :func:`letterbox`; when
            ``None`` they are recomputed (official): gain = min(h/h0, w/w0),
            pad = ((w − w0·gain)/2, (h − h0·gain)/2).

    Returns:
        ``[K, 4]`` xyxy in original pixels, clipped to (h0, w0); a new tensor.
    """
    rows = _per_row(original_shape)
    if rows and ratio_pad is not None:
        raise ValueError("ratio_pad describes one image; give per-row original shapes without it")
    out = boxes[..., :4].clone()
    if ratio_pad is None:
        # float64 arithmetic, as Python's on one image; per row it becomes a column of the boxes' dtype
        shapes = original_shape if rows else torch.tensor([[int(original_shape[0]), int(original_shape[1])]])
        h0, w0 = shapes.to(torch.float64).unbind(1)  # type: ignore[union-attr]
        gain = torch.minimum(input_shape[0] / h0, input_shape[1] / w0)
        pad_w, pad_h = (input_shape[1] - w0 * gain) / 2, (input_shape[0] - h0 * gain) / 2
        values = (pad_w, pad_h, gain, gain)
        pad_w, pad_h, gx, gy = (v.to(out.dtype)[:, None] if rows else v.item() for v in values)
    else:
        (gx, gy), (pad_w, pad_h) = ratio_pad
    out[..., 0::2] -= pad_w
    out[..., 1::2] -= pad_h
    out[..., 0::2] /= gx
    out[..., 1::2] /= gy
    if rows:
        return clip_boxes(out, original_shape)  # type: ignore[arg-type]
    return clip_boxes(out, (int(original_shape[0]), int(original_shape[1])))


# --------------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------------
def _check_threshold(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return v


def non_max_suppression(
    pred: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    max_det: int = 300,
    max_candidates: int = 30000,
) -> list[torch.Tensor]:
    """Official YOLOv7 NMS (``multi_label=False``) on decoded head outputs.

    Args:
        pred: ``[N, R, 5 + nc]`` rows of (cx, cy, w, h, objectness, class probs…), any float dtype,
            any device. Boxes in input (letterboxed) pixels.
        conf_thres: a row is a candidate if objectness > conf_thres; its score is
            objectness × best class probability and it is kept if score > conf_thres.
        iou_thres: boxes of the same class overlapping more than this (IoU) are suppressed.
        classes: keep only these class ids (``None``: all).
        agnostic: suppress across classes too.
        max_det: keep at most this many detections per image (highest scores first).
        max_candidates: at most this many candidates (by score) enter NMS per image.

    Returns:
        ``N`` float32 tensors ``[k, 6]``: (x1, y1, x2, y2, score, class), sorted by descending score,
        on ``pred``'s device.
    """
    det, image = non_max_suppression_flat(pred, conf_thres, iou_thres, classes=classes, agnostic=agnostic,
                                          max_det=max_det, max_candidates=max_candidates)
    counts = torch.bincount(image, minlength=pred.shape[0]).tolist()
    return list(torch.split(det, counts))


def non_max_suppression_flat(
    pred: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    max_det: int = 300,
    max_candidates: int = 30000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`non_max_suppression` without the per-image split (fewer host round trips for a batch).

    Returns:
        ``det`` float32 ``[K, 6]`` (x1, y1, x2, y2, score, class) for the whole batch, grouped by image
        in order, by descending score within each image; ``image`` int64 ``[K]``, each row's image.
    """
    if not isinstance(pred, torch.Tensor) or pred.ndim != 3 or pred.shape[-1] < 6:
        got = getattr(pred, "shape", type(pred).__name__)
        raise ValueError(f"pred must be a tensor [N, R, 5 + num_classes] with num_classes >= 1, got {got}")
    conf_thres = _check_threshold("conf_thres", conf_thres)
    iou_thres = _check_threshold("iou_thres", iou_thres)
    if int(max_det) < 1:
        raise ValueError(f"max_det must be >= 1, got {max_det}")
    if int(max_candidates) < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
    n, _, width = pred.shape
    nc = width - 5
    class_filter = None
    if classes is not None:
        ids = [int(c) for c in classes]
        bad = [c for c in ids if not 0 <= c < nc]
        if bad:
            raise ValueError(f"class ids must be in [0, {nc - 1}], got {bad}")
        class_filter = torch.tensor(ids, dtype=torch.long, device=pred.device)

    # Candidate filtering for the whole batch at once: objectness first (cheap, drops most rows),
    # then score = obj × cls on the survivors only, in float32.
    img_idx, row_idx = (pred[..., 4] > conf_thres).nonzero(as_tuple=True)
    x = pred[img_idx, row_idx].float()
    score, cls = (x[:, 5:] * x[:, 4:5]).max(dim=1)
    keep = score > conf_thres
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
    group = img_idx if agnostic else img_idx * nc + det[:, 5].long()
    shift = (group.double() * (high - low + 1.0))[:, None]
    kept = torchvision.ops.nms(det[:, :4].double() + shift, det[:, 4].double(), iou_thres)
    kept = kept[torch.argsort(img_idx[kept], stable=True)]
    counts = torch.bincount(img_idx[kept], minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(kept.numel(), device=kept.device) - starts[img_idx[kept]]
    kept = kept[rank < int(max_det)]
    return det[kept], img_idx[kept]
