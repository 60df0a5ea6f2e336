"""The network graph: official state_dict layout for all seven variants, head decoding, input sizes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from predictor.yolov7 import VARIANTS, YOLOv7
from predictor.yolov7.layers import Detect, ReOrg
from predictor.yolov7.variants import get_variant

ALL_VARIANTS = ["yolov7-tiny", "yolov7", "yolov7x", "yolov7-w6", "yolov7-e6", "yolov7-d6", "yolov7-e6e"]
NON_PARAMS = ("running_mean", "running_var", "num_batches_tracked", "anchors", "anchor_grid")


@pytest.fixture(scope="module")
def architectures(yolo_fixtures):
    return json.loads((yolo_fixtures / "architectures.json").read_text())


def test_variant_names():
    assert list(VARIANTS) == ALL_VARIANTS


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_state_dict_matches_official(variant, architectures):
    ref = architectures[variant]
    with torch.device("meta"):
        model = YOLOv7(variant)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = ref["state_dict"]
    assert set(got) - set(expected) == set(), "unexpected keys"
    assert set(expected) - set(got) == set(), "missing keys"
    assert got == expected
    assert list(got) == list(expected), "key order differs"
    assert len(got) == ref["state_dict_tensors"]
    params = sum(math.prod(s) for k, s in got.items() if not k.endswith(NON_PARAMS))
    assert params == ref["params"] == sum(p.numel() for p in model.parameters())
    assert model.strides == ref["strides"]
    assert model.input_size == ref["input_size"]
    assert [list(a) for a in VARIANTS[variant].anchors] == ref["anchors"]
    assert model.variant == variant and model.num_classes == 80


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_anchor_buffers(variant):
    spec = VARIANTS[variant]
    # Detect alone is cheap to build for real; it holds the buffers.
    head = Detect(80, spec.anchors, spec.strides, [8] * spec.num_levels)
    px = torch.tensor(spec.anchors, dtype=torch.float32).view(spec.num_levels, -1, 2)
    assert head.anchor_grid.shape == (spec.num_levels, 1, 3, 1, 1, 2)
    torch.testing.assert_close(head.anchor_grid.view_as(px), px)
    strides = torch.tensor(spec.strides, dtype=torch.float32).view(-1, 1, 1)
    torch.testing.assert_close(head.anchors, px / strides)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown YOLOv7 variant 'yolov8'.*yolov7-tiny"):
        get_variant("yolov8")
    with pytest.raises(ValueError, match="unknown YOLOv7 variant"):
        YOLOv7("yolov8")


def test_custom_class_count_and_anchors():
    anchors = [[10, 10, 20, 20, 30, 30], [40, 40, 50, 50, 60, 60], [70, 70, 80, 80, 90, 90]]
    with torch.device("meta"):
        model = YOLOv7("yolov7", num_classes=3, anchors=anchors)
    assert model.state_dict()["model.105.m.0.weight"].shape == (3 * 8, 256, 1, 1)
    with pytest.raises(ValueError, match="3 detection levels"):
        YOLOv7("yolov7-tiny", anchors=anchors[:2])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return YOLOv7("yolov7-tiny").eval()


@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (640, 640)])
def test_output_rows_for_any_multiple_of_the_stride(tiny, hw):
    h, w = hw
    with torch.inference_mode():
        y = tiny(torch.rand(2, 3, h, w))
    rows = sum(3 * (h // s) * (w // s) for s in (8, 16, 32))
    assert y.shape == (2, rows, 85)
    if hw == (640, 640):
        assert rows == 25200
    assert torch.isfinite(y).all()
    assert ((y[..., 4:] >= 0) & (y[..., 4:] <= 1)).all()


def test_detect_decoding_layout_and_math():
    """With a zero head conv every sigmoid is 0.5: xy = (grid + 0.5)·s, wh = anchor; check the row order."""
    anchors = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]]
    head = Detect(2, anchors, [8, 16], [4, 4]).eval()
    with torch.no_grad():
        for conv in head.m:
            conv.weight.zero_()
            conv.bias.zero_()
        # Level 1, anchor 2, class 1 logit → large positive (anchor a field k = channel a·7 + k).
        head.m[1].bias[2 * 7 + 6] = 20.0
    feats = [torch.zeros(1, 4, 4, 6), torch.zeros(1, 4, 2, 3)]  # image 32×48
    y = head(feats)
    assert y.shape == (1, 3 * 4 * 6 + 3 * 2 * 3, 7)
    level0 = y[0, : 3 * 24].view(3, 4, 6, 7)  # anchor → y → x
    gy, gx = torch.meshgrid(torch.arange(4.0), torch.arange(6.0), indexing="ij")
    for a in range(3):
        torch.testing.assert_close(level0[a, ..., 0], (gx + 0.5) * 8)
        torch.testing.assert_close(level0[a, ..., 1], (gy + 0.5) * 8)
        torch.testing.assert_close(level0[a, ..., 2], torch.full((4, 6), float(anchors[0][2 * a])))
        torch.testing.assert_close(level0[a, ..., 3], torch.full((4, 6), float(anchors[0][2 * a + 1])))
    torch.testing.assert_close(y[0, :, 4], torch.full((y.shape[1],), 0.5))
    level1 = y[0, 3 * 24 :].view(3, 2, 3, 7)
    assert torch.all(level1[2, ..., 6] > 0.999) and torch.all(level1[:2, ..., 6] == 0.5)
    torch.testing.assert_close(level1[1, 1, 2, :2], torch.tensor([2.5 * 16, 1.5 * 16]))


def test_decoding_general_formula():
    torch.manual_seed(1)
    head = Detect(1, [[12, 16, 19, 36, 40, 28]], [8], [5]).eval()
    x = torch.randn(1, 5, 3, 4)
    with torch.no_grad():
        y = head([x])[0].view(3, 3, 4, 6)
        logits = head.m[0](x).view(3, 6, 3, 4).permute(0, 2, 3, 1).sigmoid()
    gy, gx = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    a = torch.tensor([[12, 16], [19, 36], [40, 28]], dtype=torch.float32).view(3, 1, 1, 2)
    torch.testing.assert_close(y[..., 0], (2 * logits[..., 0] - 0.5 + gx) * 8)
    torch.testing.assert_close(y[..., 1], (2 * logits[..., 1] - 0.5 + gy) * 8)
    torch.testing.assert_close(y[..., 2:4], (2 * logits[..., 2:4]) ** 2 * a)
    torch.testing.assert_close(y[..., 4:], logits[..., 4:])


def test_grid_cache_per_size_and_dtype():
    head = Detect(1, [[12, 16, 19, 36, 40, 28]], [8], [2]).eval()
    with torch.no_grad():
        head([torch.zeros(1, 2, 2, 3)])
        head([torch.zeros(1, 2, 2, 3)])
        head([torch.zeros(1, 2, 4, 4)])
    assert len(head._grids) == 2
    head.double()  # moving the module drops the cache
    assert head._grids == {}


def test_half_precision_forward(tiny):
    model = YOLOv7("yolov7-tiny").eval()
    model.load_state_dict(tiny.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        ref = tiny(x)
        y = model.half()(x.half())
    assert y.dtype == torch.float16 and y.shape == ref.shape
    torch.testing.assert_close(y.float(), ref, atol=0.5, rtol=2e-2)


def test_reorg_space_to_depth():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    y = ReOrg()(x)
    assert y.shape == (1, 8, 2, 2)
    torch.testing.assert_close(y[:, 0:2], x[..., ::2, ::2])
    torch.testing.assert_close(y[:, 2:4], x[..., 1::2, ::2])
    torch.testing.assert_close(y[:, 4:6], x[..., ::2, 1::2])
    torch.testing.assert_close(y[:, 6:8], x[..., 1::2, 1::2])


@pytest.mark.parametrize("variant", ["yolov7-w6", "yolov7-e6e"])
def test_p6_graph_runs(variant):
    """The large P6 graphs execute (real tensors, small input): four levels, stride 64."""
    torch.manual_seed(0)
    model = YOLOv7(variant, num_classes=2).eval()
    with torch.inference_mode():
        y = model(torch.rand(1, 3, 128, 64))
    assert y.shape == (1, sum(3 * (128 // s) * (64 // s) for s in (8, 16, 32, 64)), 7)


def test_compiles_without_graph_breaks(tiny):
    """No data-dependent Python control flow: dynamo captures the whole forward in one graph."""
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(tiny, backend="eager", fullgraph=True)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), tiny(x))
    torch._dynamo.reset()
