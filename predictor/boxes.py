"""The torch-free half of the pre- and post-processing: letterbox (OpenCV), numpy NMS, box mapping.

The CPU engines' server (:mod:`predictor.runtimes.detector`) runs on these alone, so that a CPU image
needs no torch; the torch paths call the same functions where the operation is the same
(:mod:`predictor.ops` re-exports the letterbox and maps boxes with :func:`scale_boxes`).

* :class:`LetterboxGeometry`, :func:`letterbox_geometry`, :func:`letterbox` — the official letterbox
  (see ``docs/ops.md``); the one description of a letterbox, carried to the box mapping.
* :func:`non_max_suppression` — numpy twin of :func:`predictor.ops.non_max_suppression`: same
  :class:`~predictor.settings.DetectParams` semantics (candidate if objectness > confidence, score =
  objectness × best class probability > confidence, ``classes`` filter, class-aware unless ``agnostic``,
  IoU > ``iou`` suppressed, at most ``max_detections`` per image by descending score).
* :func:`scale_boxes` — letterboxed xyxy → original pixels with the geometry each letterbox applied.
* :class:`Detections` — one image's answer.

Box formats: ``xywh`` = (centre x, centre y, width, height); ``xyxy`` = (x1, y1, x2, y2), pixels.
Nothing here imports torch; nothing is computed at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from predictor.settings import DetectParams

__all__ = ["PAD_COLOR", "Detections", "LetterboxGeometry", "letterbox", "letterbox_geometry", "letterbox_rgb",
           "non_max_suppression", "scale_boxes", "split_detections"]


@dataclass
class Detections:
    """Detections for one image, highest score first.

    ``boxes``: float32 ``[K, 4]`` (x1, y1, x2, y2) in original image pixels, clipped to the image;
    ``scores``: float32 ``[K]`` (objectness × class probability); ``classes``: int64 ``[K]``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


# --------------------------------------------------------------------------------------------------
# letterbox
# --------------------------------------------------------------------------------------------------
PAD_COLOR = (114, 114, 114)


# --------------------------------------------------------------------------------------------------
# letterbox
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LetterboxGeometry:
    """Where an image of ``original_shape`` (h0, w0) lands inside the letterboxed canvas.

    ``resized`` is (height, width) after scaling; ``ratio`` is (ratio_w, ratio_h) (equal); ``pad`` is
    (pad_w, pad_h), half of the total padding, possibly ``x.5`` — with ``ratio`` the official
    ``ratio_pad``: ``x_letterboxed = x_original · ratio_w + pad_w``; ``borders`` is (top, bottom, left,
    right) in whole pixels as painted; ``canvas`` is the output (height, width).
    """

    original_shape: tuple[int, int]
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


def letterbox_rgb(image: np.ndarray, size: int, where: str = "image") -> tuple[np.ndarray, LetterboxGeometry]:
    """A decoded RGB ``uint8 [H, W, 3]`` image, checked (``ValueError`` naming ``where``), letterboxed to the
    square network input ``size``: the detectors' pre-processing of one image."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{where} is a {type(image).__name__}, expected a numpy array")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"{where} must be an HxWx3 uint8 RGB array, got {image.dtype} {image.shape}")
    return letterbox(image, size)


def letterbox(
    image: np.ndarray,
    new_shape: int | Sequence[int] = 640,
    color: Sequence[int] = PAD_COLOR,
    auto: bool = False,
    stride: int = 32,
    scaleup: bool = True,
) -> tuple[np.ndarray, LetterboxGeometry]:
    """Resize ``image`` keeping its aspect ratio and pad it to ``new_shape`` (official semantics).

    Args:
        image: ``uint8`` array ``[H, W, C]`` (any channel order; the operation is per channel).
        new_shape: target size, an int (square) or (height, width).
        color: padding value per channel.
        auto: minimal rectangle — pad only up to the next multiple of ``stride``.
        stride: see ``auto``.
        scaleup: allow enlarging small images (False: only shrink).

    Returns:
        ``(img, geometry)``: the letterboxed ``[H', W', C]`` array (a new array) and its
        :class:`LetterboxGeometry` (``geometry.ratio``, ``geometry.pad``: the official ``ratio_pad``).
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
    fill = np.resize(np.asarray(color, dtype=image.dtype), c)
    if image.dtype == np.uint8 and c in (3, 4):  # one pass: the pixels copied, only the borders painted
        image = np.ascontiguousarray(image)  # (a no-op after a resize)
        out = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=fill.tolist())
        return out, geo
    out = np.empty((geo.canvas[0], geo.canvas[1], c), dtype=image.dtype)
    out[...] = fill
    out[top : top + new_h, left : left + new_w] = image
    return out, geo


# --------------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------------
def scale_boxes(boxes: np.ndarray, geometries: Sequence[LetterboxGeometry], image: np.ndarray) -> np.ndarray:
    """Map xyxy boxes from letterboxed inputs back to their original images, clipped.

    Each row is mapped with the geometry its image's letterbox *applied*: ``x0 = (x − pad_w) / ratio_w``,
    ``y0 = (y − pad_h) / ratio_h`` — the official evaluation's mapping (``test.py`` passes the letterbox's
    ``ratio_pad``), not ``detect.py``'s, which recomputes the pad from the gain (0.098 px off on a
    451×300 image). In the boxes' dtype, as the official arithmetic on a float32 tensor.

    Args:
        boxes: ``[K, 4]`` xyxy in letterboxed pixels (not modified).
        geometries: one :class:`LetterboxGeometry` per image of the batch.
        image: int ``[K]``, the image (index into ``geometries``) of each row.

    Returns:
        ``[K, 4]`` xyxy in original pixels, each row clipped to its image; a new array.
    """
    table = np.array([(*g.ratio, *g.pad, *g.original_shape) for g in geometries], dtype=np.float64)
    table = table.reshape(-1, 6)[np.asarray(image, dtype=np.int64)].astype(boxes.dtype)
    out = np.array(boxes[:, :4], copy=True)
    out[:, 0::2] -= table[:, 2:3]
    out[:, 1::2] -= table[:, 3:4]
    out[:, 0::2] /= table[:, 0:1]
    out[:, 1::2] /= table[:, 1:2]
    np.clip(out, 0, None, out=out)
    out[:, 0::2] = np.minimum(out[:, 0::2], table[:, 5:6])  # width
    out[:, 1::2] = np.minimum(out[:, 1::2], table[:, 4:5])  # height
    return out


def _nms_indices(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int,
                 groups: np.ndarray | None = None) -> np.ndarray:
    """Greedy NMS (torchvision's rule: a box overlapping a kept, higher-scored one by IoU > ``iou`` is
    dropped) on float64 xyxy ``boxes [K, 4]``; the first ``limit`` kept indices by descending score
    (greedy NMS keeps in score order, so stopping there changes nothing before it).

    ``groups`` (int ``[K]``, optional): boxes of different groups never overlap (the caller shifted each
    class apart), so each group is suppressed on its own — K²/classes IoUs instead of K² — and the kept
    of every group are merged back in score order: the same indices as one pass over all of them."""
    order = np.argsort(-scores, kind="stable")
    if groups is None or len(order) <= _NMS_GROUPS_FROM:  # one matrix is cheaper than a call per class
        return order[_greedy(boxes[order], iou, limit)]
    grouped = groups[order]
    by_group = np.argsort(grouped, kind="stable")  # positions in score order, group by group
    bounds = np.flatnonzero(np.diff(grouped[by_group])) + 1
    kept = [positions[_greedy(boxes[order[positions]], iou, limit)] for positions in np.split(by_group, bounds)]
    return order[np.sort(np.concatenate(kept))[:limit]]


_NMS_MATRIX_MAX = 1024  # up to this many boxes the IoU matrix (K x K float64: 8 MiB) is computed at once
_NMS_GROUPS_FROM = 512  # class by class only above this many boxes (measured: 220 boxes 0.3 ms at once, 2 ms by class)


def _greedy(boxes: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """The greedy walk over ``boxes [K, 4]`` sorted by descending score: the kept positions, at most ``limit``.

    Up to :data:`_NMS_MATRIX_MAX` boxes every pairwise IoU is computed in one vectorised pass (the same
    float64 arithmetic as the loop, so the same decisions), then the walk is over booleans; beyond that,
    one kept box's IoUs with the rest at a time."""
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    if len(boxes) <= _NMS_MATRIX_MAX:
        w = np.clip(np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :]), 0, None)
        h = np.clip(np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :]), 0, None)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for empty boxes: NaN, not > iou, kept
            over = inter / (areas[:, None] + areas[None, :] - inter) > iou
        suppressed = np.zeros(len(boxes), dtype=bool)
        kept = []
        for position in range(len(boxes)):
            if suppressed[position]:
                continue
            kept.append(position)
            if len(kept) >= limit:
                break
            suppressed[position + 1:] |= over[position, position + 1:]
        return np.asarray(kept, dtype=np.int64)
    order = np.arange(len(boxes))
    kept = []
    while order.size and len(kept) < limit:
        i = order[0]
        kept.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(overlap > iou)]
    return np.asarray(kept, dtype=np.int64)


def non_max_suppression(
    pred: np.ndarray, params: DetectParams, *, max_candidates: int = 30000
) -> tuple[np.ndarray, np.ndarray]:
    """numpy twin of :func:`predictor.ops.non_max_suppression` (official YOLOv7 NMS, ``multi_label=False``).

    Args:
        pred: float ``[N, R, 5 + nc]`` rows of (cx, cy, w, h, objectness, class probs…), input pixels.
        params: the request's thresholds (see the module docstring).
        max_candidates: at most this many candidates (by score) enter NMS per image.

    Returns:
        ``det`` float32 ``[K, 6]`` (x1, y1, x2, y2, score, class) grouped by image in order, by descending
        score within each image; ``image`` int64 ``[K]``, each row's image.
    """
    if not isinstance(pred, np.ndarray) or pred.ndim != 3 or pred.shape[-1] < 6:
        got = getattr(pred, "shape", type(pred).__name__)
        raise ValueError(f"pred must be an array [N, R, 5 + num_classes] with num_classes >= 1, got {got}")
    if int(max_candidates) < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
    n, _, width = pred.shape
    nc = width - 5
    if params.classes is not None:
        bad = [c for c in params.classes if c >= nc]
        if bad:
            raise ValueError(f"class ids must be in [0, {nc - 1}], got {bad}")
    dets, images = [], []
    for index in range(n):
        x = pred[index][pred[index, :, 4] > params.confidence].astype(np.float32)
        probs = x[:, 5:] * x[:, 4:5]
        cls = probs.argmax(axis=1)
        score = probs[np.arange(len(cls)), cls]
        keep = score > params.confidence
        if params.classes is not None:
            keep &= np.isin(cls, list(params.classes))
        x, score, cls = x[keep], score[keep], cls[keep]
        if len(score) > max_candidates:
            top = np.sort(np.argsort(-score, kind="stable")[:max_candidates])
            x, score, cls = x[top], score[top], cls[top]
        half = x[:, 2:4] / 2
        boxes = np.concatenate((x[:, :2] - half, x[:, :2] + half), axis=1)
        # classes apart (unless agnostic): shifted so that boxes of two classes never overlap, in float64
        shifted = boxes.astype(np.float64)
        if not params.agnostic and len(boxes):
            low, high = float(shifted.min()), float(shifted.max())
            shifted += (cls.astype(np.float64) * (high - low + 1.0))[:, None]
        kept = _nms_indices(shifted, score.astype(np.float64), params.iou, params.max_detections,
                            None if params.agnostic else cls)
        det = np.concatenate((boxes[kept], score[kept, None], cls[kept, None].astype(np.float32)), axis=1)
        dets.append(det.astype(np.float32))
        images.append(np.full(len(kept), index, dtype=np.int64))
    return np.concatenate(dets).reshape(-1, 6), np.concatenate(images)


def split_detections(det: np.ndarray, image: np.ndarray, geometries: Sequence[LetterboxGeometry]) -> list[Detections]:
    """NMS output (letterboxed pixels, grouped by image) → one :class:`Detections` per geometry, boxes in
    original pixels (:func:`scale_boxes`)."""
    boxes = scale_boxes(det[:, :4], geometries, image)
    scores, classes = det[:, 4], det[:, 5].astype(np.int64)
    out, start = [], 0
    for count in np.bincount(image, minlength=len(geometries)).tolist():
        end = start + count
        out.append(Detections(boxes=boxes[start:end], scores=scores[start:end].copy(), classes=classes[start:end]))
        start = end
    return out
