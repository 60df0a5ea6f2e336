"""Letterbox in, boxes out, against the official pipeline (golden data).

* Our CPU letterbox is bit-exact with the official one on the six sample images, and the GPU letterbox
  within a grey level.
* Boxes go back to the original image as the official evaluation maps them: ``test.py`` hands the
  letterbox's own ``ratio_pad`` to the mapping (``x0 = (x − pad_w) / ratio_w``), where ``detect.py``
  recomputes the pad from the gain. Served boxes must equal the evaluation's mapping within float
  rounding — on the golden images and on a non-square image whose recomputed pad differs from the
  applied one (451×300: 107.14 against 107).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from predictor import ops
from predictor.settings import DetectParams
from tests.tools.nms import per_image_nms

VARIANTS = ["yolov7-tiny", "yolov7"]
IMAGES = ["bus", "horses", "image1", "image2", "image3", "zidane"]
RAW_IMAGES = ["bus", "horses"]
SETTINGS = [(0.25, 0.45), (0.001, 0.65)]
ROUNDING = 1e-4  # px: float32 rounding of (x − pad) / ratio at up to ~1300 px


def official_scale_coords(boxes: torch.Tensor, ratio_pad, original_shape) -> torch.Tensor:
    """The official evaluation's mapping, from its documented arithmetic: ``ratio_pad`` = (ratio_w,
    ratio_h, pad_w, pad_h) as the letterbox returned them; subtract the pad, divide by the gain (ratio_w),
    clip to the image. float64; returns float32 ``[K, 4]``."""
    gain, _, pad_w, pad_h = (float(v) for v in np.asarray(ratio_pad, np.float64).ravel())
    out = boxes[:, :4].double().clone()
    out[:, 0::2] = ((out[:, 0::2] - pad_w) / gain).clamp(0, original_shape[1])
    out[:, 1::2] = ((out[:, 1::2] - pad_h) / gain).clamp(0, original_shape[0])
    return out.float()


def detect_py_scale_coords(boxes: torch.Tensor, input_size: int, original_shape) -> torch.Tensor:
    """``detect.py``'s mapping (the one served before): the pad recomputed from the gain."""
    h0, w0 = original_shape
    gain = min(input_size / h0, input_size / w0)
    pad_w, pad_h = (input_size - w0 * gain) / 2, (input_size - h0 * gain) / 2
    return official_scale_coords(boxes, (gain, gain, pad_w, pad_h), original_shape)


def _read_rgb(yolo_fixtures: Path, name: str) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(yolo_fixtures / "images" / f"{name}.jpg"))
    assert bgr is not None, f"cannot read {name}.jpg"
    return np.ascontiguousarray(bgr[:, :, ::-1])


@pytest.fixture(scope="module", params=VARIANTS)
def golden(request, yolo_fixtures: Path):
    with np.load(yolo_fixtures / "golden" / f"{request.param}.npz") as z:
        yield {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def tiny(yolo_fixtures: Path):
    from predictor.engine import Detector

    return Detector.from_weights(yolo_fixtures / "yolov7-tiny-random.pt", device="cpu")


@pytest.mark.parametrize("name", IMAGES)
def test_letterbox_equals_official(golden, yolo_fixtures: Path, name: str):
    rgb = _read_rgb(yolo_fixtures, name)
    out, geo = ops.letterbox(rgb, 640, auto=False)
    np.testing.assert_array_equal(out, golden[f"{name}.letterboxed_rgb"])
    np.testing.assert_allclose([*geo.ratio, *geo.pad], golden[f"{name}.ratio_pad"], rtol=0, atol=1e-9)
    assert geo.original_shape == rgb.shape[:2]
    # the BGR path (official order: letterbox, then convert) gives the same pixels
    out_bgr, _ = ops.letterbox(np.ascontiguousarray(rgb[:, :, ::-1]), 640)
    np.testing.assert_array_equal(out_bgr[:, :, ::-1], out)


@pytest.mark.parametrize("name", IMAGES)
def test_tensor_letterbox_within_one_grey_level_of_official(golden, yolo_fixtures: Path, name: str):
    rgb = _read_rgb(yolo_fixtures, name)
    out, (geo,) = ops.letterbox_batch_tensor([torch.from_numpy(rgb).permute(2, 0, 1)], 640, dtype=torch.float32)
    np.testing.assert_allclose([*geo.ratio, *geo.pad], golden[f"{name}.ratio_pad"], rtol=0, atol=1e-9)
    grey = (out[0].permute(1, 2, 0) * 255).round().numpy().astype(np.int16)
    diff = np.abs(grey - golden[f"{name}.letterboxed_rgb"])
    assert diff.max() <= 1
    assert diff.mean() < 0.15


@pytest.mark.parametrize("name", IMAGES)
def test_box_mapping_equals_official_evaluation_on_golden(golden, yolo_fixtures: Path, name: str):
    """The official NMS boxes of each golden image, mapped back by the served path (the geometry our
    letterbox applied) == the official evaluation's mapping with the golden ``ratio_pad``."""
    rgb = _read_rgb(yolo_fixtures, name)
    _, geo = ops.letterbox(rgb, 640)
    for conf, iou in SETTINGS:
        gold = torch.from_numpy(golden[f"{name}.nms_conf{conf}_iou{iou}"])
        served = ops.scale_boxes(gold[:, :4], [geo], torch.zeros(len(gold), dtype=torch.long))
        expected = official_scale_coords(gold, golden[f"{name}.ratio_pad"], rgb.shape[:2])
        torch.testing.assert_close(served, expected, atol=ROUNDING, rtol=0)


@pytest.mark.parametrize("name", RAW_IMAGES)
def test_served_boxes_from_golden_raw_equal_official_evaluation(golden, tiny, yolo_fixtures: Path, name: str):
    """``Detector.postprocess`` on the official head output (golden raw): every box equals the official
    evaluation's mapping of the NMS output (``ratio_pad`` from the golden data), scores and classes too."""
    rgb = _read_rgb(yolo_fixtures, name)
    raw = torch.from_numpy(golden[f"{name}.raw"])[None]
    _, geo = ops.letterbox(rgb, 640)
    compared = 0
    for conf, iou in SETTINGS:
        (served,) = tiny.postprocess(raw, [geo], DetectParams(confidence=conf, iou=iou))
        (letterboxed,) = per_image_nms(raw, conf, iou)
        expected = official_scale_coords(letterboxed, golden[f"{name}.ratio_pad"], rgb.shape[:2])
        assert len(served) == len(expected)
        compared += len(served)
        torch.testing.assert_close(torch.from_numpy(served.boxes), expected, atol=ROUNDING, rtol=0)
        np.testing.assert_array_equal(served.scores, letterboxed[:, 4].numpy())
        np.testing.assert_array_equal(served.classes, letterboxed[:, 5].long().numpy())
    assert compared > 0


def non_square_image(yolo_fixtures: Path, height: int = 300, width: int = 451) -> np.ndarray:
    """bus.jpg squeezed to ``width`` × ``height``: the letterbox pads 214 rows (107 above), while
    ``detect.py`` would recompute a pad of 107.14."""
    import cv2

    return np.ascontiguousarray(cv2.resize(_read_rgb(yolo_fixtures, "bus"), (width, height)))


def test_non_square_served_boxes_equal_official_evaluation(tiny, yolo_fixtures: Path):
    """451×300: ``Detector.detect`` == letterbox → forward → NMS → the official evaluation's mapping with
    the applied ``ratio_pad`` (pad 107); the recomputed pad (the code before) is 0.098 px off."""
    image = non_square_image(yolo_fixtures)
    params = DetectParams(confidence=0.05)
    (served,) = tiny.detect([image], params)
    letterboxed_image, geo = ops.letterbox(image, tiny.input_size)
    assert geo.pad == (0.0, 107.0) and geo.borders[:2] == (107, 107)
    raw = tiny.forward(torch.from_numpy(letterboxed_image).permute(2, 0, 1)[None].float() / 255)
    (letterboxed,) = per_image_nms(raw, params.confidence, params.iou)
    expected = official_scale_coords(letterboxed, (*geo.ratio, *geo.pad), image.shape[:2])
    assert len(served) == len(expected) > 0
    served_boxes = torch.from_numpy(served.boxes)
    torch.testing.assert_close(served_boxes, expected, atol=ROUNDING, rtol=0)
    before = detect_py_scale_coords(letterboxed, tiny.input_size, image.shape[:2])
    inside = (expected[:, 1] > 1) & (expected[:, 3] < image.shape[0] - 1)  # y not clipped by either mapping
    offset = (before - expected)[inside][:, 1::2].abs()
    assert offset.min().item() == pytest.approx(0.0983, abs=2e-3)  # every box, by the same 0.14 / gain
    assert offset.max().item() == pytest.approx(0.0983, abs=2e-3)
