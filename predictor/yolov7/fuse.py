"""Inference-time re-parameterisation: fold BatchNorm into convs, collapse RepConv branches.

Both are exact algebra on the running statistics (up to float rounding; the folding itself is done in
float64). The fused model computes the same function as the unfused one in ``eval()`` mode, with fewer
kernels. Do not train a fused model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ConvBNAct, RepConv

__all__ = ["fold_bn", "fuse_conv_bn", "reparameterise_repconv", "fuse_model"]


@torch.no_grad()
def fold_bn(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Fold ``bn`` (running statistics, its own ``eps``) into a conv's ``weight`` ``[Co, Ci, k, k]`` / ``bias`` ``[Co]``.

    Returns ``(weight, bias)`` in ``weight``'s dtype: ``w' = w·γ/σ``, ``b' = β + (b − μ)·γ/σ`` with
    ``σ = sqrt(var + eps)``.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    w = weight.double()
    std = (bn.running_var.double() + bn.eps).sqrt()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    b = bias.double() if bias is not None else torch.zeros_like(std)
    return (w * scale.view(-1, 1, 1, 1)).to(weight.dtype), (beta + (b - bn.running_mean.double()) * scale).to(
        weight.dtype
    )


def _conv_with(weight: Tensor, bias: Tensor, like: nn.Conv2d, kernel: int | None = None) -> nn.Conv2d:
    k = like.kernel_size if kernel is None else (kernel, kernel)
    padding = like.padding if kernel is None else (kernel // 2, kernel // 2)
    conv = nn.Conv2d(
        like.in_channels,
        like.out_channels,
        k,
        like.stride,
        padding,
        like.dilation,
        like.groups,
        bias=True,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)  # type: ignore[union-attr]
    conv.weight.requires_grad_(like.weight.requires_grad)
    conv.bias.requires_grad_(like.weight.requires_grad)  # type: ignore[union-attr]
    return conv


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv with bias equal to ``bn(conv(x))`` in eval mode."""
    w, b = fold_bn(conv.weight, conv.bias, bn)
    return _conv_with(w, b, conv)


@torch.no_grad()
def reparameterise_repconv(module: RepConv) -> None:
    """Collapse a :class:`RepConv`'s 3×3, 1×1 and identity branches into one 3×3 conv with bias, in place."""
    if module.rbr_reparam is not None:
        return
    dense_conv, dense_bn = module.rbr_dense[0], module.rbr_dense[1]
    one_conv, one_bn = module.rbr_1x1[0], module.rbr_1x1[1]
    if dense_conv.stride != (1, 1) or dense_conv.groups != 1:
        raise ValueError("RepConv re-parameterisation supports stride 1, groups 1")
    k3, b3 = fold_bn(dense_conv.weight, None, dense_bn)
    k1, b1 = fold_bn(one_conv.weight, None, one_bn)
    kernel, bias = k3 + F.pad(k1, [1, 1, 1, 1]), b3 + b1
    if module.rbr_identity is not None:
        c = dense_conv.in_channels
        eye = torch.zeros(c, c, 3, 3, dtype=k3.dtype, device=k3.device)
        eye[torch.arange(c), torch.arange(c), 1, 1] = 1
        ki, bi = fold_bn(eye, None, module.rbr_identity)
        kernel, bias = kernel + ki, bias + bi
    module.rbr_reparam = _conv_with(kernel, bias, dense_conv, kernel=3)
    del module.rbr_dense
    del module.rbr_1x1
    module.rbr_identity = None


def fuse_model(model: nn.Module) -> nn.Module:
    """Fuse every Conv+BN and RepConv of ``model`` in place (eval-mode semantics); returns ``model``.

    Idempotent. The result's ``state_dict`` no longer matches the official (unfused) layout.
    """
    for module in list(model.modules()):
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn(module.conv, module.bn)
            module.bn = nn.Identity()
        elif isinstance(module, RepConv):
            reparameterise_repconv(module)
    model.fused = True  # type: ignore[assignment]
    return model
