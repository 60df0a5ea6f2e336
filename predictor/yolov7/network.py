"""The YOLOv7 network: a variant's layer graph turned into modules, run in graph order."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .layers import SPPCSPC, Concat, ConvBNAct, Detect, DownC, ReOrg, RepConv, Shortcut
from .names import default_names
from .variants import INPUT, Layer, VariantSpec, get_variant

__all__ = ["YOLOv7"]


def _normalise_anchors(anchors: Sequence, spec: VariantSpec) -> list[list[float]]:
    """Accept per-level flat lists ``[w0, h0, w1, h1, ...]``, ``[[w, h], ...]`` pairs or a tensor."""
    if isinstance(anchors, Tensor):
        anchors = anchors.detach().cpu().reshape(len(anchors), -1).tolist()
    levels = []
    for level in anchors:
        flat: list[float] = []
        for v in level:
            if isinstance(v, (list, tuple)):
                flat.extend(float(u) for u in v)
            else:
                flat.append(float(v))
        levels.append(flat)
    if len(levels) != spec.num_levels:
        raise ValueError(f"{spec.name} has {spec.num_levels} detection levels, got anchors for {len(levels)}")
    return levels


class YOLOv7(nn.Module):
    """A YOLOv7 detector built from a named variant (see :data:`~predictor.yolov7.variants.VARIANTS`).

    Args:
        variant: e.g. ``"yolov7"``, ``"yolov7-tiny"``, ``"yolov7-e6e"``.
        num_classes: number of classes the head predicts (80 for COCO).
        anchors: optional anchors in pixels, one entry per level (defaults to the variant's).

    ``forward(x)``: ``x`` is ``[N, 3, H, W]`` RGB in ``[0, 1]`` with ``H`` and ``W`` multiples of
    ``max(strides)``; returns decoded predictions ``[N, R, 5 + num_classes]`` — ``(cx, cy, w, h)`` in input
    pixels, sigmoid objectness, sigmoid class probabilities — rows level → anchor → y → x
    (``R = 25200`` for a P5 model at 640×640).

    The unfused ``state_dict`` has exactly the keys and shapes of the official checkpoints
    (``model.<layer>.<...>``).
    """

    def __init__(self, variant: str, num_classes: int = 80, anchors: Sequence | None = None) -> None:
        super().__init__()
        spec = get_variant(variant)
        self.variant = spec.name
        self.num_classes = int(num_classes)
        self.strides: list[int] = list(spec.strides)
        self.input_size = spec.input_size
        self.names: list[str] = default_names(self.num_classes)
        self.fused = False  # set by fuse_model
        anchor_px = _normalise_anchors(anchors if anchors is not None else spec.anchors, spec)

        layers = spec.layers
        channels: list[int] = []
        modules: list[nn.Module] = []
        for layer in layers:
            c_in = [3 if j == INPUT else channels[j] for j in layer.inputs]
            module, c_out = self._make(layer, c_in, spec, anchor_px, self.num_classes)
            modules.append(module)
            channels.append(c_out)
        self.model = nn.ModuleList(modules)

        # Static wiring: which outputs each layer reads, and which to release after each layer.
        self._inputs: tuple[tuple[int, ...], ...] = tuple(layer.inputs for layer in layers)
        self._multi: tuple[bool, ...] = tuple(
            layer.op in ("concat", "shortcut", "detect") for layer in layers
        )
        last_use: dict[int, int] = {}
        for i, layer in enumerate(layers):
            for j in layer.inputs:
                last_use[j] = i
        release: list[list[int]] = [[] for _ in layers]
        for j, i in last_use.items():
            if j != INPUT:
                release[i].append(j)
        self._release: tuple[tuple[int, ...], ...] = tuple(tuple(r) for r in release)

    @staticmethod
    def _make(
        layer: Layer, c_in: list[int], spec: VariantSpec, anchors: list[list[float]], num_classes: int
    ) -> tuple[nn.Module, int]:
        op, act = layer.op, spec.activation
        if op == "conv":
            return ConvBNAct(c_in[0], layer.channels, layer.kernel, layer.stride, act), layer.channels
        if op == "repconv":
            return RepConv(c_in[0], layer.channels, act), layer.channels
        if op == "maxpool":
            return nn.MaxPool2d(layer.kernel, layer.stride, (layer.kernel - 1) // 2), c_in[0]
        if op == "concat":
            return Concat(), sum(c_in)
        if op == "shortcut":
            return Shortcut(), c_in[0]
        if op == "upsample":
            return nn.Upsample(scale_factor=2.0, mode="nearest"), c_in[0]
        if op == "reorg":
            return ReOrg(), 4 * c_in[0]
        if op == "downc":
            return DownC(c_in[0], layer.channels, act), layer.channels
        if op == "sppcspc":
            return SPPCSPC(c_in[0], layer.channels, act), layer.channels
        if op == "detect":
            return Detect(num_classes, anchors, spec.strides, c_in), num_classes + 5
        raise ValueError(f"unknown layer op {op!r}")  # pragma: no cover - recipes are static

    @property
    def head(self) -> Detect:
        """The Detect module (last layer)."""
        return self.model[-1]  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] → ``[N, R, 5 + nc]`` decoded predictions (see class docstring)."""
        outputs: list[Tensor | None] = [None] * len(self.model)
        for i, module in enumerate(self.model):
            srcs = [x if j == INPUT else outputs[j] for j in self._inputs[i]]
            y = module(srcs) if self._multi[i] else module(srcs[0])
            for j in self._release[i]:
                outputs[j] = None
            outputs[i] = y
        return outputs[-1]  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, num_classes={self.num_classes}, strides={self.strides}"
