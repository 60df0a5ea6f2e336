"""The building blocks of the YOLOv7 graph.

Module and attribute names (``conv``, ``bn``, ``cv1``..``cv7``, ``rbr_dense``, ``rbr_1x1``, ``m``, ``anchors``,
``anchor_grid``) are chosen so that ``state_dict`` keys equal those of the official checkpoints. Every
BatchNorm uses ``eps=1e-3`` and ``momentum=0.03``.

Shapes: ``N`` batch, ``C`` channels, ``H``/``W`` height/width of the feature map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "BN_EPS",
    "BN_MOMENTUM",
    "make_activation",
    "ConvBNAct",
    "RepConv",
    "SPPCSPC",
    "DownC",
    "ReOrg",
    "Concat",
    "Shortcut",
    "Detect",
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def make_activation(name: str) -> nn.Module:
    """``"silu"`` → SiLU, ``"leaky"`` → LeakyReLU(0.1) (yolov7-tiny)."""
    if name == "silu":
        return nn.SiLU(inplace=True)
    if name == "leaky":
        return nn.LeakyReLU(0.1, inplace=True)
    raise ValueError(f"unknown activation {name!r} (expected 'silu' or 'leaky')")


class ConvBNAct(nn.Module):
    """Conv2d (no bias, 'same' padding ``k // 2``) → BatchNorm2d → activation.

    ``[N, c1, H, W] → [N, c2, H / s, W / s]``. After :func:`~predictor.yolov7.fuse.fuse_model` the conv
    carries a bias and ``bn`` is an ``Identity``.
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, act: str = "silu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn: nn.Module = _bn(c2)
        self.act = make_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class RepConv(nn.Module):
    """Re-parameterisable 3×3 conv: ``act(BN(conv3x3(x)) + BN(conv1x1(x)) [+ BN(x)])``.

    The identity branch exists only when ``c1 == c2`` (stride 1). ``[N, c1, H, W] → [N, c2, H, W]``.
    After fusion a single 3×3 conv with bias, ``rbr_reparam``, replaces the branches.
    """

    def __init__(self, c1: int, c2: int, act: str = "silu") -> None:
        super().__init__()
        self.act = make_activation(act)
        self.rbr_identity: nn.Module | None = _bn(c1) if c1 == c2 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, 3, 1, 1, bias=False), _bn(c2))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, 1, 0, bias=False), _bn(c2))
        self.rbr_reparam: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.rbr_reparam is not None:
            return self.act(self.rbr_reparam(x))
        y = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            y = y + self.rbr_identity(x)
        return self.act(y)


class SPPCSPC(nn.Module):
    """Spatial pyramid pooling in a cross-stage-partial block (hidden width ``c_ = c2``).

    ``x1 = cv4(cv3(cv1(x)))``; ``y1 = cv6(cv5(cat(x1, pool5(x1), pool9(x1), pool13(x1))))``;
    ``y2 = cv2(x)``; ``out = cv7(cat(y1, y2))``. ``[N, c1, H, W] → [N, c2, H, W]``.
    """

    def __init__(self, c1: int, c2: int, act: str = "silu", pools: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        c_ = c2
        self.cv1 = ConvBNAct(c1, c_, 1, act=act)
        self.cv2 = ConvBNAct(c1, c_, 1, act=act)
        self.cv3 = ConvBNAct(c_, c_, 3, act=act)
        self.cv4 = ConvBNAct(c_, c_, 1, act=act)
        self.m = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in pools)
        self.cv5 = ConvBNAct((len(pools) + 1) * c_, c_, 1, act=act)
        self.cv6 = ConvBNAct(c_, c_, 3, act=act)
        self.cv7 = ConvBNAct(2 * c_, c2, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1, *(pool(x1) for pool in self.m)], 1)))
        return self.cv7(torch.cat((y1, self.cv2(x)), 1))


class DownC(nn.Module):
    """Two-branch downsampling: ``cat(cv2(cv1(x)), cv3(maxpool2(x)))``.

    cv1 is 1×1 (``c1 → c1``), cv2 a strided 3×3 (``c1 → c2/2``), cv3 1×1 (``c1 → c2/2``).
    ``[N, c1, H, W] → [N, c2, H/2, W/2]``.
    """

    def __init__(self, c1: int, c2: int, act: str = "silu") -> None:
        super().__init__()
        if c2 % 2:
            raise ValueError(f"DownC needs an even output width, got {c2}")
        self.cv1 = ConvBNAct(c1, c1, 1, act=act)
        self.cv2 = ConvBNAct(c1, c2 // 2, 3, 2, act=act)
        self.cv3 = ConvBNAct(c1, c2 // 2, 1, act=act)
        self.mp = nn.MaxPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.cv2(self.cv1(x)), self.cv3(self.mp(x))), 1)


class ReOrg(nn.Module):
    """Space-to-depth: ``[N, C, H, W] → [N, 4C, H/2, W/2]`` in the order
    (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1)


class Concat(nn.Module):
    """Channel concatenation of its inputs, in order."""

    def forward(self, xs: list[Tensor]) -> Tensor:
        return torch.cat(xs, 1)


class Shortcut(nn.Module):
    """Element-wise sum of its inputs (yolov7-e6e's E-ELAN merge)."""

    def forward(self, xs: list[Tensor]) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Detect(nn.Module):
    """The detection head: a 1×1 conv per level, then sigmoid and box decoding.

    Input: ``nl`` feature maps ``[N, C_i, H/s_i, W/s_i]``. Output: ``[N, R, 5 + nc]`` with
    ``R = Σ_i na · (H/s_i) · (W/s_i)``, rows ordered level → anchor → y → x, columns
    ``(cx, cy, w, h)`` in input pixels, sigmoid objectness, ``nc`` sigmoid class probabilities.

    Decoding per level (stride ``s``, anchor ``(aw, ah)`` px, cell ``(gx, gy)``), on ``y = sigmoid(conv)``:
    ``xy = (2·y_xy − 0.5 + grid)·s`` and ``wh = (2·y_wh)²·anchor``. Head conv channel ``a·(5+nc) + k`` is
    anchor ``a``, field ``k``.

    Buffers: ``anchors`` ``[nl, na, 2]`` in grid units (pixels ÷ stride), ``anchor_grid``
    ``[nl, 1, na, 1, 1, 2]`` in pixels (the one used for decoding).
    """

    def __init__(
        self,
        num_classes: int,
        anchors: Sequence[Sequence[float]],
        strides: Sequence[int],
        in_channels: Sequence[int],
    ) -> None:
        super().__init__()
        if not (len(anchors) == len(strides) == len(in_channels)):
            raise ValueError(
                f"Detect needs one anchor set, stride and input per level; got {len(anchors)} anchor sets, "
                f"{len(strides)} strides and {len(in_channels)} inputs"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.nc = num_classes
        self.no = num_classes + 5
        self.nl = len(strides)
        self.na = len(anchors[0]) // 2
        if any(len(a) != 2 * self.na for a in anchors):
            raise ValueError(
                f"every level needs {self.na} (w, h) anchor pairs; got {[len(a) for a in anchors]}"
            )
        self.strides = tuple(int(s) for s in strides)
        a = torch.tensor([[float(v) for v in level] for level in anchors]).view(self.nl, self.na, 2)
        stride_t = torch.tensor(self.strides, dtype=a.dtype).view(-1, 1, 1)
        self.register_buffer("anchors", a / stride_t)
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, self.na, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in in_channels)
        self._grids: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}

    def _grid(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``[1, 1, h, w, 2]`` cell indices ``(x, y)``; cached per (h, w, device, dtype) outside tracing."""
        if torch.compiler.is_compiling():
            return self._make_grid(h, w, device, dtype)
        key = (h, w, device, dtype)
        grid = self._grids.get(key)
        if grid is None:
            grid = self._grids[key] = self._make_grid(h, w, device, dtype)
        return grid

    @staticmethod
    def _make_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        ys = torch.arange(h, device=device, dtype=dtype)
        xs = torch.arange(w, device=device, dtype=dtype)
        yv, xv = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack((xv, yv), 2).view(1, 1, h, w, 2)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        self._grids = {}  # device/dtype moves invalidate the cache
        return super()._apply(fn, recurse)

    def forward(self, feats: list[Tensor]) -> Tensor:
        out = []
        for i, conv in enumerate(self.m):
            x = feats[i]
            n, _, h, w = x.shape
            y = conv(x).view(n, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).sigmoid()
            grid = self._grid(h, w, y.device, y.dtype)
            xy = (y[..., 0:2] * 2 - 0.5 + grid) * self.strides[i]
            wh = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i].to(y.dtype)
            out.append(torch.cat((xy, wh, y[..., 4:]), -1).view(n, -1, self.no))
        return torch.cat(out, 1)
