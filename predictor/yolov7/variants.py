"""The seven YOLOv7 deploy variants as layer graphs.

Each variant is described by a short *recipe* — stem, backbone stages, the top block of the neck, the
top-down and bottom-up paths of the PAN neck and the per-level output convolutions — that a small graph
builder expands into a flat list of :class:`Layer` nodes. The flat list reproduces the official layer
numbering, so the network's unfused ``state_dict`` keys (``model.<index>.<...>``) are those of the
official release checkpoints; ``tests/unit/test_architecture.py`` proves it against
``architectures.json``.

Building blocks (channels are output channels):

* **ELAN** ``(branch, chain, depth, every, out)``: two 1×1 convs ``a`` and ``b`` on the input, a chain of
  ``depth`` 3×3 convs starting from ``b``; the concat takes every ``every``-th chain output counting back
  from the last one, then ``b``, then ``a``; a final 1×1 conv gives ``out`` channels. The backbone picks
  every second chain output, the neck ("ELAN-H") all of them.
* **E-ELAN** (yolov7-e6e): two ELANs on the same input, summed.
* **MP-down** (P5 models): ``cat(conv3x3/2(conv1x1(x)), conv1x1(maxpool(x))[, skip])``.
* P6 models downsample with a strided 3×3 conv (w6) or ``DownC`` (e6, d6, e6e); tiny with a max-pool
  in the backbone and a strided 3×3 conv in the neck.

Nothing is built at import time: :attr:`VariantSpec.layers` expands the recipe on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

__all__ = ["INPUT", "Layer", "VariantSpec", "VARIANTS", "get_variant"]

INPUT = -1
"""Source index that means "the network's input image"."""


@dataclass(frozen=True)
class Layer:
    """One node of a variant's layer graph.

    ``op`` is one of ``conv``, ``repconv``, ``maxpool``, ``concat``, ``shortcut``, ``upsample``, ``reorg``,
    ``downc``, ``sppcspc``, ``detect``. ``inputs`` are absolute indices of earlier layers (:data:`INPUT`
    for the image). ``channels`` is the output width of layers that own weights; ``kernel`` and
    ``stride`` apply to ``conv`` and ``maxpool``.
    """

    op: str
    inputs: tuple[int, ...]
    channels: int = 0
    kernel: int = 1
    stride: int = 1


# An ELAN's shape: (branch width, chain width, output width); depth/every are per variant.
Elan = tuple[int, int, int]


@dataclass(frozen=True)
class VariantSpec:
    """A YOLOv7 variant: its recipe, strides, default anchors (pixels) and native input size.

    ``anchors[i]`` is the flat list ``(w0, h0, w1, h1, w2, h2)`` of level ``i`` (stride ``strides[i]``).
    """

    name: str
    strides: tuple[int, ...]
    anchors: tuple[tuple[float, ...], ...]
    input_size: int
    activation: str  # "silu" or "leaky" (LeakyReLU(0.1))
    # --- backbone ---
    stem: tuple[tuple[int, int, int], ...]  # (channels, kernel, stride) convs after the optional ReOrg
    reorg: bool  # P6 models start with a space-to-depth layer
    down: str  # backbone downsampling between stages: "mp" (MP-down), "maxpool", "conv", "downc"
    stages: tuple[tuple[int | None, Elan], ...]  # (downsample channels, ELAN); None = no downsampling
    backbone_depth: int
    backbone_every: int
    # --- neck ---
    top: tuple[str, int]  # ("sppcspc" | "tinyspp", channels)
    lateral: tuple[tuple[int, Elan], ...]  # top-down: (lateral channels, ELAN-H), deepest first
    neck_down: str  # bottom-up downsampling: "mp", "conv" or "downc"
    downs: tuple[tuple[int, Elan], ...]  # bottom-up: (downsample channels, ELAN-H), shallowest first
    neck_depth: int
    neck_every: int
    eelan: bool = False  # every ELAN is an E-ELAN (two ELANs summed)
    # --- head ---
    out_op: str = "conv"  # "conv" (3×3) or "repconv"
    out_channels: tuple[int, ...] = field(default=())

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_anchors(self) -> int:
        return len(self.anchors[0]) // 2

    @cached_property
    def layers(self) -> tuple[Layer, ...]:
        """The flat layer graph (official numbering); the last layer is the Detect head."""
        return _expand(self)

    @property
    def detect_index(self) -> int:
        return len(self.layers) - 1


class _Graph:
    """Appends layers and returns their absolute indices."""

    def __init__(self) -> None:
        self.layers: list[Layer] = []

    def add(self, op: str, *inputs: int, channels: int = 0, kernel: int = 1, stride: int = 1) -> int:
        self.layers.append(Layer(op, tuple(inputs), channels, kernel, stride))
        return len(self.layers) - 1

    def conv(self, x: int, c: int, k: int = 1, s: int = 1) -> int:
        return self.add("conv", x, channels=c, kernel=k, stride=s)

    def maxpool(self, x: int, k: int = 2, s: int = 2) -> int:
        return self.add("maxpool", x, kernel=k, stride=s)

    def elan(self, x: int, shape: Elan, depth: int, every: int) -> int:
        branch, chain, out = shape
        a = self.conv(x, branch)
        b = self.conv(x, branch)
        chain_outs, y = [], b
        for _ in range(depth):
            y = self.conv(y, chain, 3)
            chain_outs.append(y)
        picked = chain_outs[::-1][::every]
        return self.conv(self.add("concat", *picked, b, a), out)

    def block(self, x: int, shape: Elan, depth: int, every: int, eelan: bool) -> int:
        if not eelan:
            return self.elan(x, shape, depth, every)
        first = self.elan(x, shape, depth, every)
        second = self.elan(x, shape, depth, every)
        return self.add("shortcut", second, first)

    def downsample(self, kind: str, x: int, c: int, skip: int | None = None) -> int:
        extra = () if skip is None else (skip,)
        if kind == "mp":
            pooled = self.conv(self.maxpool(x), c)
            strided = self.conv(self.conv(x, c), c, 3, 2)
            return self.add("concat", strided, pooled, *extra)
        if kind == "maxpool":
            y = self.maxpool(x)
        elif kind == "conv":
            y = self.conv(x, c, 3, 2)
        elif kind == "downc":
            y = self.add("downc", x, channels=c)
        else:  # pragma: no cover - recipes are static
            raise ValueError(f"unknown downsampling {kind!r}")
        return y if skip is None else self.add("concat", y, skip)

    def tiny_spp(self, x: int, c: int) -> int:
        a = self.conv(x, c)
        b = self.conv(x, c)
        pools = [self.maxpool(b, k, 1) for k in (5, 9, 13)]
        y = self.conv(self.add("concat", *pools[::-1], b), c)
        return self.conv(self.add("concat", y, a), c)


def _expand(spec: VariantSpec) -> tuple[Layer, ...]:
    g = _Graph()
    x = g.add("reorg", INPUT) if spec.reorg else INPUT
    for c, k, s in spec.stem:
        x = g.conv(x, c, k, s)

    stage_outs = []
    for down_c, shape in spec.stages:
        if down_c is not None:
            x = g.downsample(spec.down, x, down_c)
        x = g.block(x, shape, spec.backbone_depth, spec.backbone_every, spec.eelan)
        stage_outs.append(x)

    kind, c_top = spec.top
    x = g.add("sppcspc", x, channels=c_top) if kind == "sppcspc" else g.tiny_spp(x, c_top)

    # Top-down: routes are the backbone outputs at strides 8 .. 2**(nl+1), deepest first.
    routes = stage_outs[-len(spec.lateral) - 1 : -1][::-1]
    level_outs = [x]
    for route, (c_lat, shape) in zip(routes, spec.lateral, strict=True):
        up = g.add("upsample", g.conv(x, c_lat))
        x = g.add("concat", g.conv(route, c_lat), up)
        x = g.block(x, shape, spec.neck_depth, spec.neck_every, spec.eelan)
        level_outs.append(x)

    # Bottom-up: each step joins the matching top-down output (finally the top block).
    heads = [x]
    for skip, (c_down, shape) in zip(level_outs[-2::-1], spec.downs, strict=True):
        x = g.downsample(spec.neck_down, x, c_down, skip)
        x = g.block(x, shape, spec.neck_depth, spec.neck_every, spec.eelan)
        heads.append(x)

    outs = [
        g.add(spec.out_op, h, channels=c, kernel=3) for h, c in zip(heads, spec.out_channels, strict=True)
    ]
    g.add("detect", *outs)
    return tuple(g.layers)


_P5_ANCHORS = ((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146), (142, 110, 192, 243, 459, 401))
_P6_ANCHORS = (
    (19, 27, 44, 40, 38, 94),
    (96, 68, 86, 152, 180, 137),
    (140, 301, 303, 264, 238, 542),
    (436, 615, 739, 380, 925, 792),
)


def _p6(
    name: str,
    stem_c: int,
    down: str,
    stage_out: tuple[int, ...],
    top: int,
    neck_out: tuple[int, int, int],
    depth: int,
    eelan: bool = False,
) -> VariantSpec:
    """P6 family: ReOrg, one conv, five downsampling stages, a three-step PAN and four outputs."""
    branches = (64, 128, 256, 384, 512)
    stages = tuple((c, (b, b, c)) for b, c in zip(branches, stage_out, strict=True))
    neck_branch = (384, 256, 128)  # deepest lateral first
    lateral = tuple((c, (b, b // 2, c)) for b, c in zip(neck_branch, neck_out, strict=True))
    downs_out = (neck_out[1], neck_out[0], top)
    downs = tuple((c, (b, b // 2, c)) for b, c in zip((256, 384, 512), downs_out, strict=True))
    return VariantSpec(
        name=name,
        strides=(8, 16, 32, 64),
        anchors=_P6_ANCHORS,
        input_size=1280,
        activation="silu",
        stem=((stem_c, 3, 1),),
        reorg=True,
        down=down,
        stages=stages,
        backbone_depth=depth,
        backbone_every=2,
        top=("sppcspc", top),
        lateral=lateral,
        neck_down=down,
        downs=downs,
        neck_depth=depth,
        neck_every=1,
        eelan=eelan,
        out_op="conv",
        out_channels=tuple(2 * c for c in (neck_out[2], neck_out[1], neck_out[0], top)),
    )


def _build_variants() -> dict[str, VariantSpec]:
    tiny = VariantSpec(
        name="yolov7-tiny",
        strides=(8, 16, 32),
        anchors=((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326)),
        input_size=640,
        activation="leaky",
        stem=((32, 3, 2), (64, 3, 2)),
        reorg=False,
        down="maxpool",
        stages=((None, (32, 32, 64)), (0, (64, 64, 128)), (0, (128, 128, 256)), (0, (256, 256, 512))),
        backbone_depth=2,
        backbone_every=1,
        top=("tinyspp", 256),
        lateral=((128, (64, 64, 128)), (64, (32, 32, 64))),
        neck_down="conv",
        downs=((128, (64, 64, 128)), (256, (128, 128, 256))),
        neck_depth=2,
        neck_every=1,
        out_op="conv",
        out_channels=(128, 256, 512),
    )
    yolov7 = VariantSpec(
        name="yolov7",
        strides=(8, 16, 32),
        anchors=_P5_ANCHORS,
        input_size=640,
        activation="silu",
        stem=((32, 3, 1), (64, 3, 2), (64, 3, 1), (128, 3, 2)),
        reorg=False,
        down="mp",
        stages=(
            (None, (64, 64, 256)),
            (128, (128, 128, 512)),
            (256, (256, 256, 1024)),
            (512, (256, 256, 1024)),
        ),
        backbone_depth=4,
        backbone_every=2,
        top=("sppcspc", 512),
        lateral=((256, (256, 128, 256)), (128, (128, 64, 128))),
        neck_down="mp",
        downs=((128, (256, 128, 256)), (256, (512, 256, 512))),
        neck_depth=4,
        neck_every=1,
        out_op="repconv",
        out_channels=(256, 512, 1024),
    )
    yolov7x = VariantSpec(
        name="yolov7x",
        strides=(8, 16, 32),
        anchors=_P5_ANCHORS,
        input_size=640,
        activation="silu",
        stem=((40, 3, 1), (80, 3, 2), (80, 3, 1), (160, 3, 2)),
        reorg=False,
        down="mp",
        stages=(
            (None, (64, 64, 320)),
            (160, (128, 128, 640)),
            (320, (256, 256, 1280)),
            (640, (256, 256, 1280)),
        ),
        backbone_depth=6,
        backbone_every=2,
        top=("sppcspc", 640),
        lateral=((320, (256, 256, 320)), (160, (128, 128, 160))),
        neck_down="mp",
        downs=((160, (256, 256, 320)), (320, (512, 512, 640))),
        neck_depth=6,
        neck_every=2,
        out_op="conv",
        out_channels=(320, 640, 1280),
    )
    variants = [
        tiny,
        yolov7,
        yolov7x,
        _p6("yolov7-w6", 64, "conv", (128, 256, 512, 768, 1024), 512, (384, 256, 128), depth=4),
        _p6("yolov7-e6", 80, "downc", (160, 320, 640, 960, 1280), 640, (480, 320, 160), depth=6),
        _p6("yolov7-d6", 96, "downc", (192, 384, 768, 1152, 1536), 768, (576, 384, 192), depth=8),
        _p6("yolov7-e6e", 80, "downc", (160, 320, 640, 960, 1280), 640, (480, 320, 160), depth=6, eelan=True),
    ]
    return {v.name: v for v in variants}


VARIANTS: dict[str, VariantSpec] = _build_variants()
"""All supported variants by name (recipes only; graphs expand lazily)."""


def get_variant(name: str) -> VariantSpec:
    """The :class:`VariantSpec` called ``name``; ``ValueError`` listing the choices otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown YOLOv7 variant {name!r}; choose one of {', '.join(VARIANTS)}") from None
