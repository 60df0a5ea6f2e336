"""Unit tests for predictor.ops: letterbox geometry, box maths and NMS semantics (synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from predictor import ops
from predictor.settings import DetectParams
from tests.tools.nms import per_image_nms


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- letterbox
@pytest.mark.parametrize(
    "shape, new_shape, resized, pad, borders",
    [
        ((1080, 810), 640, (640, 480), (80.0, 0.0), (0, 0, 80, 80)),
        ((640, 431), 640, (640, 431), (104.5, 0.0), (0, 0, 104, 105)),  # odd padding: round(x ± 0.1)
        ((720, 1280), 640, (360, 640), (0.0, 140.0), (140, 140, 0, 0)),
        ((100, 200), (320, 640), (320, 640), (0.0, 0.0), (0, 0, 0, 0)),  # upscaled, exact fit
        ((100, 201), 640, (318, 640), (0.0, 161.0), (161, 161, 0, 0)),  # round(100 · 640/201) = 318
    ],
)
def test_letterbox_geometry(shape, new_shape, resized, pad, borders):
    geo = ops.letterbox_geometry(shape, new_shape)
    assert geo.resized == resized
    assert geo.pad == pad
    assert geo.borders == borders
    expected_canvas = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    assert geo.canvas == expected_canvas


def test_letterbox_places_resized_image_and_pads_with_color():
    import cv2

    img = _image(300, 500)
    out, geo = ops.letterbox(img, 640, color=(1, 2, 3))
    ratio, pad = geo.ratio, geo.pad
    r = 640 / 500
    assert ratio == (r, r)
    new_h = round(300 * r)  # 384
    assert out.shape == (640, 640, 3) and out.dtype == np.uint8
    top = round((640 - new_h) / 2 - 0.1)
    assert pad == (0.0, (640 - new_h) / 2)
    np.testing.assert_array_equal(out[top : top + new_h], cv2.resize(img, (640, new_h)))
    assert (out[:top] == np.array([1, 2, 3], np.uint8)).all()
    assert (out[top + new_h :] == np.array([1, 2, 3], np.uint8)).all()


def test_letterbox_no_resize_when_size_matches_is_a_pure_copy():
    img = _image(640, 320)
    out, geo = ops.letterbox(img, 640)
    ratio, pad = geo.ratio, geo.pad
    assert ratio == (1.0, 1.0) and pad == (160.0, 0.0)
    np.testing.assert_array_equal(out[:, 160:480], img)
    assert out.base is not img and not np.shares_memory(out, img)


def test_letterbox_auto_gives_minimal_rectangle():
    out, geo = ops.letterbox(_image(480, 640), 640, auto=True, stride=32)
    pad = geo.pad
    assert out.shape == (480, 640, 3) and pad == (0.0, 0.0)
    out, geo = ops.letterbox(_image(500, 640), 640, auto=True, stride=32)
    pad = geo.pad
    assert out.shape == (512, 640, 3) and pad == (0.0, 6.0)
    assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0


def test_letterbox_scaleup_false_never_enlarges():
    out, geo = ops.letterbox(_image(100, 200), 640, scaleup=False)
    ratio, pad = geo.ratio, geo.pad
    assert ratio == (1.0, 1.0)
    assert out.shape == (640, 640, 3)
    assert pad == (220.0, 270.0)


def test_letterbox_rejects_bad_input():
    with pytest.raises(ValueError, match="HxWxC"):
        ops.letterbox(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="new_shape"):
        ops.letterbox(_image(10, 10), (640, 640, 3))
    with pytest.raises(ValueError, match="positive"):
        ops.letterbox(_image(10, 10), 0)


@pytest.mark.parametrize("shape", [(300, 500), (1080, 810), (640, 640), (17, 1000)])
def test_letterbox_batch_tensor_matches_opencv_within_one_grey_level(shape):
    img = _image(*shape, seed=3)
    ref, geo = ops.letterbox(img, 640)
    out, (geo_t,) = ops.letterbox_batch_tensor([torch.from_numpy(img).permute(2, 0, 1)], 640, dtype=torch.float32)
    assert geo_t == geo
    assert out.shape == (1, 3, 640, 640) and out.dtype == torch.float32
    diff = (out[0].permute(1, 2, 0) * 255 - torch.from_numpy(ref).float()).abs()
    assert diff.max().item() <= 1 + 1e-3


def test_letterbox_batch_tensor_output_is_unit_range_with_grey_padding():
    img = _image(300, 500)
    f, _ = ops.letterbox_batch_tensor([torch.from_numpy(img).permute(2, 0, 1)], 320, dtype=torch.float32)
    assert 0.0 <= f.min() and f.max() <= 1.0
    assert f[0, 0, 0, 0].item() == pytest.approx(114 / 255)


def test_xywh_to_xyxy():
    b = torch.tensor([[10.0, 20.0, 4.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    assert torch.equal(ops.xywh_to_xyxy(b), torch.tensor([[8.0, 17.0, 12.0, 23.0], [-1.0, -1.0, 1.0, 1.0]]))
    assert ops.xywh_to_xyxy(torch.zeros(2, 5, 4)).shape == (2, 5, 4)
    with pytest.raises(ValueError):
        ops.xywh_to_xyxy(torch.zeros(3, 5))


def test_clip_boxes_in_place():
    b = torch.tensor([[-5.0, -1.0, 700.0, 50.0]])
    out = ops.clip_boxes(b, (40, 640))
    assert out is b
    assert torch.equal(b, torch.tensor([[0.0, 0.0, 640.0, 40.0]]))


def test_scale_boxes_inverts_the_applied_letterbox_not_a_recomputed_pad():
    """A 451×300 image: letterbox applies pad_h = 107 (214 rows of padding, halved); detect.py's
    recomputed pad is (640 − 300·640/451) / 2 = 107.14. Boxes map back with the applied one."""
    h0, w0 = 300, 451
    _, geo = ops.letterbox(_image(h0, w0), 640)
    assert geo.pad == (0.0, 107.0) and geo.borders[0] == 107
    orig = torch.tensor([[10.0, 20.0, 110.0, 220.0], [0.0, 0.0, 451.0, 300.0], [200.5, 100.25, 300.75, 299.0]])
    lb = orig.clone()
    lb[:, 0::2] = lb[:, 0::2] * geo.ratio[0] + geo.pad[0]
    lb[:, 1::2] = lb[:, 1::2] * geo.ratio[1] + geo.pad[1]
    back = ops.scale_boxes(lb, [geo], torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(back, orig, atol=1e-4, rtol=0)
    gain = min(640 / h0, 640 / w0)
    recomputed = (lb[:, 1::2] - (640 - h0 * gain) / 2) / gain
    assert (recomputed - orig[:, 1::2]).abs().max().item() == pytest.approx(0.0983, abs=1e-3)  # the old error
    assert torch.equal(lb, lb.clone())  # input not modified
    outside = torch.tensor([[-50.0, -50.0, 700.0, 700.0]])
    assert torch.equal(ops.scale_boxes(outside, [geo], torch.zeros(1, dtype=torch.long)),
                       torch.tensor([[0.0, 0.0, 451.0, 300.0]]))


# ---------------------------------------------------------------- NMS
def _row(cx, cy, w, h, obj, cls_probs, nc=4):
    p = [0.0] * nc
    for k, v in cls_probs.items():
        p[k] = v
    return [cx, cy, w, h, obj, *p]


def _pred(rows, nc=4):
    return torch.tensor([rows], dtype=torch.float32).reshape(1, len(rows), 5 + nc)


def test_nms_score_is_obj_times_best_class_and_box_is_xyxy():
    pred = _pred([_row(50, 50, 20, 10, 0.8, {1: 0.5, 2: 0.9})])
    (det,) = per_image_nms(pred, 0.25, 0.45)
    assert det.shape == (1, 6) and det.dtype == torch.float32
    torch.testing.assert_close(det[0], torch.tensor([40.0, 45.0, 60.0, 55.0, 0.72, 2.0]))


def test_nms_candidates_need_objectness_above_conf_and_score_above_conf():
    pred = _pred(
        [
            _row(10, 10, 5, 5, 0.25, {0: 1.0}),  # obj == conf: not a candidate
            _row(100, 100, 5, 5, 0.5, {0: 0.4}),  # score 0.2 <= conf: dropped
            _row(200, 200, 5, 5, 0.5, {0: 0.6}),  # score 0.3: kept
        ]
    )
    (det,) = per_image_nms(pred, 0.25, 0.45)
    assert det.shape[0] == 1 and det[0, 4].item() == pytest.approx(0.3)


def test_nms_class_aware_vs_agnostic_and_class_filter():
    rows = [
        _row(50, 50, 20, 20, 0.9, {0: 1.0}),
        _row(51, 50, 20, 20, 0.8, {0: 1.0}),  # same class, overlaps: suppressed
        _row(50, 51, 20, 20, 0.7, {3: 1.0}),  # other class, overlaps: kept unless agnostic
    ]
    (det,) = per_image_nms(_pred(rows), 0.25, 0.45)
    assert det[:, 5].tolist() == [0.0, 3.0]
    assert det[:, 4].tolist() == pytest.approx([0.9, 0.7])
    (det,) = per_image_nms(_pred(rows), 0.25, 0.45, agnostic=True)
    assert det[:, 5].tolist() == [0.0]
    (det,) = per_image_nms(_pred(rows), 0.25, 0.45, classes=[3])
    assert det[:, 5].tolist() == [3.0]
    (det,) = per_image_nms(_pred(rows), 0.25, 0.45, classes=[1, 2])
    assert det.shape == (0, 6)


def test_nms_iou_threshold_is_respected():
    a = _row(50, 50, 20, 20, 0.9, {0: 1.0})
    b = _row(60, 50, 20, 20, 0.8, {0: 1.0})  # IoU = 10·20 / (2·400 − 200) = 1/3
    (det,) = per_image_nms(_pred([a, b]), 0.25, 0.3)
    assert det.shape[0] == 1
    (det,) = per_image_nms(_pred([a, b]), 0.25, 0.34)
    assert det.shape[0] == 2


def test_nms_max_det_and_max_candidates_keep_highest_scores():
    rows = [_row(30 * i + 10, 10, 10, 10, 0.3 + 0.01 * i, {i % 4: 1.0}) for i in range(50)]
    (det,) = per_image_nms(_pred(rows), 0.25, 0.45, max_detections=5)
    assert det.shape[0] == 5
    assert det[:, 4].tolist() == pytest.approx([0.3 + 0.01 * i for i in range(49, 44, -1)])
    (det,) = per_image_nms(_pred(rows), 0.25, 0.45, max_candidates=3)
    assert det[:, 4].tolist() == pytest.approx([0.79, 0.78, 0.77])


def test_nms_batch_equals_each_image_alone_and_handles_empty_images():
    g = torch.Generator().manual_seed(0)
    n, r, nc = 4, 500, 6
    pred = torch.rand(n, r, 5 + nc, generator=g)
    pred[..., :2] *= 640
    pred[..., 2:4] *= 80
    pred[2, :, 4] = 0.0  # image 2: nothing passes
    batch = per_image_nms(pred, 0.3, 0.5)
    assert len(batch) == n and batch[2].shape == (0, 6)
    for i in range(n):
        (alone,) = per_image_nms(pred[i : i + 1], 0.3, 0.5)
        assert torch.equal(batch[i], alone)
        if alone.shape[0]:
            assert (alone[:-1, 4] >= alone[1:, 4]).all()


def test_nms_accepts_fp16_and_returns_float32():
    pred = _pred([_row(50, 50, 20, 10, 0.8, {1: 0.9})]).half()
    (det,) = per_image_nms(pred)
    assert det.dtype == torch.float32 and det.shape == (1, 6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"confidence": 1.5}, "'confidence' must be in"),
        ({"iou": -0.1}, "'iou' must be in"),
        ({"confidence": "x"}, "'confidence' must be a number"),
        ({"confidence": float("nan")}, "'confidence' must be a number"),
        ({"max_detections": 0}, "'max_detections' must be in"),
        ({"max_detections": 2.5}, "'max_detections' must be an integer"),
        ({"classes": [-1]}, "'classes' must be class ids"),
        ({"agnostic": "yes"}, "'agnostic' must be true or false"),
    ],
)
def test_detect_params_are_checked_once_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DetectParams(**kwargs)


def test_nms_rejects_class_ids_the_model_does_not_have():
    with pytest.raises(ValueError, match="class ids"):
        per_image_nms(_pred([_row(1, 1, 1, 1, 0.9, {0: 1.0})]), classes=[4])


def test_nms_rejects_bad_shape():
    with pytest.raises(ValueError, match="5 \\+ num_classes"):
        per_image_nms(torch.zeros(10, 85))
    with pytest.raises(ValueError, match="5 \\+ num_classes"):
        per_image_nms(torch.zeros(1, 10, 5))


def _reference_nms(pred, conf, iou, *, agnostic, max_det, max_candidates):
    """Image by image, as written in the YOLOv7 paper's pipeline: candidates, top scores, NMS, max_det."""
    out = []
    for image in pred:
        score, cls = (image[:, 5:] * image[:, 4:5]).max(dim=1)
        keep = (image[:, 4] > conf) & (score > conf)
        boxes = ops.xywh_to_xyxy(image[keep, :4])
        det = torch.cat((boxes, score[keep, None], cls[keep, None].float()), dim=1)
        det = det[det[:, 4].argsort(descending=True)[:max_candidates]]
        groups = torch.zeros_like(det[:, 5]) if agnostic else det[:, 5]
        kept = torchvision.ops.batched_nms(det[:, :4].double(), det[:, 4].double(), groups.long(), iou)
        out.append(det[kept[:max_det]])
    return out


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize(("max_det", "max_candidates"), [(300, 30000), (7, 30000), (300, 25), (4, 9)])
def test_nms_whole_batch_equals_image_by_image(agnostic, max_det, max_candidates):
    generator = torch.Generator().manual_seed(7)
    n, rows, nc = 5, 400, 6
    pred = torch.rand((n, rows, 5 + nc), generator=generator)
    pred[..., :2] *= 320  # centres
    pred[..., 2:4] = pred[..., 2:4] * 60 + 2  # sizes: many overlaps
    pred[..., 4] = pred[..., 4] * (torch.arange(n)[:, None] + 1) / n  # images with few to many candidates
    pred[2, :, 4] = 0.0  # an image without candidates
    ours = per_image_nms(pred, 0.25, 0.45, agnostic=agnostic, max_detections=max_det,
                                   max_candidates=max_candidates)
    expected = _reference_nms(pred, 0.25, 0.45, agnostic=agnostic, max_det=max_det,
                              max_candidates=max_candidates)
    assert [d.shape[0] for d in ours] == [d.shape[0] for d in expected]
    assert ours[2].shape == (0, 6) and sum(d.shape[0] for d in ours) > 3 * min(max_det, 3)
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_letterbox_batch_tensor_rows_do_not_depend_on_the_batch():
    generator = torch.Generator().manual_seed(3)
    shapes = [(480, 640), (810, 1080), (480, 640), (640, 640), (100, 37), (810, 1080)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in shapes]
    batch, geometries = ops.letterbox_batch_tensor(images, 320, dtype=torch.float32)
    assert batch.shape == (6, 3, 320, 320) and batch.is_contiguous(memory_format=torch.channels_last)
    for image, row, geo in zip(images, batch, geometries, strict=True):
        alone, (geo_alone,) = ops.letterbox_batch_tensor([image], 320, dtype=torch.float32)
        assert torch.equal(row, alone[0])
        assert geo == geo_alone == ops.letterbox_geometry(tuple(image.shape[1:]), 320)
    with pytest.raises(ValueError, match="image 1 must be a uint8 tensor"):
        ops.letterbox_batch_tensor([images[0], images[0][0]], 320, dtype=torch.float32)
    with pytest.raises(ValueError, match="floating dtype"):
        ops.letterbox_batch_tensor(images, 320, dtype=torch.uint8)


def test_scale_boxes_per_row_geometries_equal_image_by_image():
    generator = torch.Generator().manual_seed(11)
    geometries = [ops.letterbox_geometry(shape, 640) for shape in [(1080, 810), (720, 1280), (640, 640), (37, 100)]]
    boxes = torch.rand((12, 4), generator=generator) * 700 - 30  # some outside the image: clipped
    rows = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 1, 0])
    together = ops.scale_boxes(boxes, geometries, rows)
    for k, image in enumerate(rows.tolist()):
        alone = ops.scale_boxes(boxes[k : k + 1], [geometries[image]], torch.zeros(1, dtype=torch.long))
        assert torch.equal(together[k : k + 1], alone)
        h0, w0 = geometries[image].original_shape
        assert (0 <= together[k, 0::2]).all() and (together[k, 0::2] <= w0).all()
        assert (0 <= together[k, 1::2]).all() and (together[k, 1::2] <= h0).all()
    assert ops.scale_boxes(boxes[:0], geometries, torch.zeros(0, dtype=torch.long)).shape == (0, 4)
