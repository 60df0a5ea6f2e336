"""Fusion: Conv+BN folding and RepConv re-parameterisation compute the same function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from predictor.yolov7 import YOLOv7, build_model, fuse_model, load_checkpoint
from predictor.yolov7.layers import ConvBNAct, RepConv


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


@pytest.mark.parametrize(("k", "s", "act"), [(1, 1, "silu"), (3, 2, "leaky"), (3, 1, "silu")])
def test_conv_bn_folding(k, s, act):
    torch.manual_seed(0)
    m = ConvBNAct(6, 10, k, s, act).eval()
    _randomise_bn(m)
    x = torch.randn(2, 6, 12, 12)
    with torch.no_grad():
        ref = m(x)
        fuse_model(m)
        out = m(x)
    assert isinstance(m.bn, nn.Identity) and m.conv.bias is not None
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_folding_uses_the_bn_epsilon():
    m = ConvBNAct(2, 2, 1).eval()
    assert m.bn.eps == 1e-3 and m.bn.momentum == 0.03
    with torch.no_grad():
        m.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        m.bn.running_var.fill_(0.0)  # scale 1/sqrt(eps) — wrong by 30x if eps were 1e-5
    x = torch.ones(1, 2, 1, 1)
    fuse_model(m)
    torch.testing.assert_close(m.conv.weight.view(2, 2), torch.eye(2) / (1e-3) ** 0.5)
    with torch.no_grad():
        assert m(x).max() > 30


@pytest.mark.parametrize(("c1", "c2"), [(8, 8), (8, 12)])
def test_repconv_reparameterisation(c1, c2):
    torch.manual_seed(1)
    m = RepConv(c1, c2).eval()
    assert (m.rbr_identity is not None) == (c1 == c2)
    _randomise_bn(m, seed=c2)
    x = torch.randn(2, c1, 9, 11)
    with torch.no_grad():
        ref = m(x)
        fuse_model(m)
        out = m(x)
    assert isinstance(m.rbr_reparam, nn.Conv2d) and m.rbr_reparam.kernel_size == (3, 3)
    assert m.rbr_reparam.bias is not None
    assert not hasattr(m, "rbr_dense") and not hasattr(m, "rbr_1x1") and m.rbr_identity is None
    assert set(m.state_dict()) == {"rbr_reparam.weight", "rbr_reparam.bias"}
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_fuse_model_is_idempotent_and_removes_bn():
    torch.manual_seed(0)
    model = YOLOv7("yolov7-tiny", num_classes=2).eval()
    _randomise_bn(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert fuse_model(model) is model
        fuse_model(model)
        out = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.fused is True
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-4)


def _image(yolo_fixtures, variant: str, name: str, size: int) -> torch.Tensor:
    """A real letterboxed photo as ``[1, 3, size, size]`` in [0, 1]: subsampled, then centre-cropped."""
    rgb = np.load(yolo_fixtures / "golden" / f"{variant}.npz")[f"{name}.letterboxed_rgb"]
    step = 640 // size
    rgb = rgb[::step, ::step]
    top = (rgb.shape[0] - size) // 2
    rgb = rgb[top : top + size, top : top + size]
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize(
    ("variant", "size"),
    [("yolov7-tiny", 320), pytest.param("yolov7", 256, marks=pytest.mark.slow)],
)
def test_fusion_is_exact_on_a_real_image(variant, size, yolo_fixtures):
    """Fused vs unfused in float64 on bus.jpg with the fixture weights (yolov7 covers its RepConvs).

    In float64 the fused network must agree to ~1e-9 relative: the folding is exact algebra. (In
    float32 both deviate from the exact float64 result by up to ~4e-3 relative on this random-weight
    network — measured for yolov7 at 320: unfused 3.7e-3, fused 2.3e-3 — so float32 comparisons need
    that much slack; see the next test.)
    """
    ckpt = load_checkpoint(yolo_fixtures / f"{variant}-random.pt")
    x = _image(yolo_fixtures, variant, "bus", size).double()
    model = build_model(ckpt, fuse=False).double()
    assert any(isinstance(m, RepConv) for m in model.modules()) == (variant == "yolov7")
    with torch.inference_mode():
        ref = model(x)
        fused = fuse_model(model)
        out = fused(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert out.shape == ref.shape == (1, 3 * sum((size // s) ** 2 for s in (8, 16, 32)), 85)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


def test_fused_float32_close_to_unfused(yolo_fixtures):
    """The production path (float32): fused tiny vs unfused at 640 on bus.jpg.

    Bound |fused − unfused| ≤ 1e-4 + 5e-3·|unfused| element-wise and ≤ 2e-3 on probabilities.
    """
    ckpt = load_checkpoint(yolo_fixtures / "yolov7-tiny-random.pt")
    x = _image(yolo_fixtures, "yolov7-tiny", "bus", 640)
    with torch.inference_mode():
        ref = build_model(ckpt, fuse=False)(x)
        out = build_model(ckpt, fuse=True)(x)
    diff = (out - ref).abs()
    assert torch.all(diff <= 1e-4 + 5e-3 * ref.abs()), f"max abs diff {diff.max().item():.3g}"
    assert diff[..., 4:].max() < 2e-3
