"""Our CPU letterbox is bit-exact with the official one on the six sample images (golden data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from predictor import ops

VARIANTS = ["yolov7-tiny", "yolov7"]
IMAGES = ["bus", "horses", "image1", "image2", "image3", "zidane"]


@pytest.fixture(scope="module", params=VARIANTS)
def golden(request, yolo_fixtures: Path):
    with np.load(yolo_fixtures / "golden" / f"{request.param}.npz") as z:
        yield {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", IMAGES)
def test_letterbox_equals_official(golden, yolo_fixtures: Path, name: str):
    import cv2

    bgr = cv2.imread(str(yolo_fixtures / "images" / f"{name}.jpg"))
    assert bgr is not None, f"cannot read {name}.jpg"
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    out, ratio, pad = ops.letterbox(rgb, 640, auto=False)
    np.testing.assert_array_equal(out, golden[f"{name}.letterboxed_rgb"])
    np.testing.assert_allclose([*ratio, *pad], golden[f"{name}.ratio_pad"], rtol=0, atol=1e-9)
    # the BGR path (official order: letterbox, then convert) gives the same pixels
    out_bgr, _, _ = ops.letterbox(bgr, 640)
    np.testing.assert_array_equal(out_bgr[:, :, ::-1], out)


@pytest.mark.parametrize("name", IMAGES)
def test_tensor_letterbox_within_one_grey_level_of_official(golden, yolo_fixtures: Path, name: str):
    import cv2
    import torch

    rgb = np.ascontiguousarray(cv2.imread(str(yolo_fixtures / "images" / f"{name}.jpg"))[:, :, ::-1])
    out, ratio, pad = ops.letterbox_tensor(torch.from_numpy(rgb), 640)
    np.testing.assert_allclose([*ratio, *pad], golden[f"{name}.ratio_pad"], rtol=0, atol=1e-9)
    diff = np.abs(out.permute(1, 2, 0).numpy().astype(np.int16) - golden[f"{name}.letterboxed_rgb"])
    assert diff.max() <= 1
    assert diff.mean() < 0.15
