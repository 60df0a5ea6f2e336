"""The inference engine: one loaded YOLOv7 network plus its pre- and post-processing.

:class:`Detector` turns RGB ``uint8`` images of any size into :class:`Detections` in original-image
pixels::

    det = Detector.from_weights("weights/yolov7.pt")            # cuda + fp16 if present, else cpu + fp32
    [d] = det.detect([rgb], DetectParams(confidence=0.25, iou=0.45))
    d.boxes  # float32 [K, 4] x1, y1, x2, y2 (original pixels, clipped)

The Detector owns every step between pixels and boxes, so that every path (the service's CPU and GPU
paths, the CLI, the benchmarks) resizes images in and maps boxes out the same way — as torchvision's
``GeneralizedRCNNTransform`` does:

* pre-processing: :meth:`Detector.letterbox` (one image → the letterboxed pixels and their
  :class:`~predictor.ops.LetterboxGeometry`), :meth:`Detector.stack` (letterboxed images → the network
  input), :meth:`Detector.letterbox_tensors` (decoded tensors on the device → the network input and
  geometries: the GPU path); :meth:`Detector.preprocess` is the first two for a list of images;
* :meth:`Detector.forward`: the network, ``[N, R, 5 + nc]`` — the one seam between pre- and
  post-processing (another runtime replaces only this). On CUDA it may replay a captured CUDA graph per
  batch size or run a ``torch.compile``-d network (``accel``); every accelerated path falls back to
  eager execution if it fails;
* :meth:`Detector.postprocess`: NMS with a request's :class:`~predictor.settings.DetectParams`, then boxes
  back to each original image with the geometry its letterbox applied.

No kserve import: the service wraps this.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictor import ops
from predictor.boxes import Detections, LetterboxGeometry, letterbox_rgb, split_detections
from predictor.settings import ACCELERATIONS, GPU_ACCELERATIONS, PRECISIONS, DetectParams

__all__ = ["DetectParams", "Detections", "Detector", "LetterboxGeometry", "resolve_device", "resolve_precision"]

log = logging.getLogger(__name__)

DEFAULT_COMPILE_MODE = "default"  # max-autotune* compile for minutes per batch size
_255 = np.float32(255.0)  # the CPU input is float32(pixel) / 255 (stack)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` if available else ``cpu``; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when CUDA is asked for but absent.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device {device!r} requested but CUDA is not available (torch.cuda.is_available() "
            "is False); use device='cpu' or 'auto'"
        )
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(
            f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` → ``"fp16"`` on CUDA, ``"fp32"`` on CPU; fp16 on CPU is refused (``ValueError``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use precision='fp32' (or 'auto') on the CPU")
    if precision == "bf16":  # an exported engine's precision (predictor.runtimes), not the torch network's
        raise ValueError("precision 'bf16' runs on the CPU engine openvino only; the torch network runs fp32/fp16")
    return precision


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    static_in: torch.Tensor
    static_out: torch.Tensor


class Detector:
    """A YOLOv7 network with letterbox pre-processing and NMS post-processing.

    Args:
        model: an ``nn.Module`` mapping ``[N, 3, S, S]`` images in [0, 1] to decoded ``[N, R, 5 + nc]``
            (cx, cy, w, h in input pixels, objectness, class probabilities) — e.g.
            ``predictor.yolov7.build_model(ckpt)``. Moved to ``device``/``precision`` here.
        names: class names (``len == nc``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        precision: ``"auto"`` (fp16 on CUDA, fp32 on CPU), ``"fp32"``, ``"fp16"`` (CUDA only).
        input_size: square network input ``S``; default the model's ``input_size`` (640 for P5 models);
            must be a multiple of the largest stride.
        accel: ``"auto"`` (CUDA graphs on CUDA, eager on CPU), ``"eager"``, ``"cudagraph"``,
            ``"compile"`` (the last two need CUDA). ``"cudagraph"`` captures the network per batch size
            on first use; ``"compile"`` runs ``torch.compile``'s fused kernels, captured in CUDA graphs
            for the batch sizes given to :meth:`warmup` only (each is a compilation of ~10 s), other
            sizes padded up to the next captured one.
        compile_mode: ``torch.compile`` mode for ``accel="compile"``.
        max_graphs: at most this many CUDA graphs (one per input shape) are captured.
        graph_max_batch: under ``accel="cudagraph"``, batches larger than this are not captured on first
            use (measured on an H200: graphs save ~1.5 ms of launch overhead per forward, which no longer
            matters from batch ~16 on, while each captured size costs a capture and pool memory); they
            are padded up to a larger captured size if there is one, else run eagerly.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        names: Sequence[str] | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        input_size: int | None = None,
        accel: str = "auto",
        compile_mode: str = DEFAULT_COMPILE_MODE,
        max_graphs: int = 16,
        graph_max_batch: int = 16,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.accel = self._resolve_accel(accel)
        self.variant: str = str(getattr(model, "variant", "custom"))
        self.strides: tuple[int, ...] = tuple(int(s) for s in getattr(model, "strides", (8, 16, 32)))
        self.num_classes = int(getattr(model, "num_classes", len(names) if names is not None else 0))
        if names is None:
            names = getattr(model, "names", None) or [f"class{i}" for i in range(self.num_classes)]
        self.names: list[str] = [str(n) for n in names]
        if self.num_classes <= 0:
            raise ValueError("the number of classes is unknown: give `names` or a model with `num_classes`")
        if len(self.names) != self.num_classes:
            raise ValueError(f"{len(self.names)} class names for a model with {self.num_classes} classes")
        size = int(getattr(model, "input_size", 640) if input_size is None else input_size)
        if size <= 0 or size % max(self.strides):
            raise ValueError(
                f"input_size must be a positive multiple of the largest stride "
                f"{max(self.strides)}, got {input_size}"
            )
        self.input_size = size

        # Channels-last everywhere: cuDNN's fp16 kernels want it, and oneDNN on the CPU runs the fused
        # network 1.5-1.9x faster with it (tests/bench/model_bench.py).
        model = model.eval().requires_grad_(False).to(self.device, self.dtype)
        model = model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = model
        self.compile_mode = compile_mode
        self.max_graphs = int(max_graphs)
        self.graph_max_batch = int(graph_max_batch)
        self._compiled: Any = None
        self._graphs: dict[tuple[int, ...], _Graph] = {}
        self._graph_pool: Any = None
        self._graph_failed = False
        self._lock = threading.Lock()
        self._cpu_input: torch.Tensor | None = None  # stack(reuse=True)'s buffer, NHWC, grown as batches grow
        self.engine, self.runtime = "torch", None  # another CPU engine: predictor.runtimes.attach
        if self.accel == "compile":
            self._compiled = torch.compile(self.model, mode=compile_mode, dynamic=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(
        cls,
        ckpt: Any,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        input_size: int | None = None,
        **kwargs: Any,
    ) -> Detector:
        """Build the fused network of a loaded ``predictor.yolov7.Checkpoint`` and wrap it."""
        from predictor.yolov7 import build_model

        model = build_model(ckpt, fuse=True)
        names = list(ckpt.names) if getattr(ckpt, "names", None) else None
        return cls(model, names=names, device=device, precision=precision, input_size=input_size, **kwargs)

    @classmethod
    def from_weights(
        cls,
        path: str | Path,
        *,
        variant: str | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        input_size: int | None = None,
        **kwargs: Any,
    ) -> Detector:
        """Load a checkpoint file (official ``.pt`` or the project's safetensors) and wrap it.

        ``variant``, when given, must agree with the variant the checkpoint records (if it records one).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        from predictor.yolov7 import load_checkpoint

        ckpt = load_checkpoint(path)
        if variant is not None and getattr(ckpt, "variant", None) not in (None, variant):
            raise ValueError(f"{path} holds a {ckpt.variant!r} model, not the requested variant {variant!r}")
        return cls.from_checkpoint(ckpt, device=device, precision=precision, input_size=input_size, **kwargs)

    def _resolve_accel(self, accel: str) -> str:
        if accel not in ACCELERATIONS:
            raise ValueError(f"accel must be one of {ACCELERATIONS}, got {accel!r}")
        if accel == "auto":
            return "cudagraph" if self.device.type == "cuda" else "eager"
        if accel in GPU_ACCELERATIONS and self.device.type != "cuda":
            raise ValueError(f"accel {accel!r} needs a CUDA device; use 'eager' or 'auto' on the CPU")
        return accel

    def __repr__(self) -> str:
        return (
            f"Detector(variant={self.variant!r}, num_classes={self.num_classes}, device={self.device}, "
            f"precision={self.precision!r}, input_size={self.input_size}, accel={self.accel!r})"
        )

    # ------------------------------------------------------------------ stages
    def letterbox(self, image: np.ndarray, where: str = "image") -> tuple[np.ndarray, LetterboxGeometry]:
        """One RGB ``uint8 [H, W, 3]`` image → its letterboxed ``uint8 [S, S, 3]`` pixels and the geometry
        applied (kept to map the boxes back). ``where`` names the image in the error message."""
        return letterbox_rgb(image, self.input_size, where)

    def stack(self, letterboxed: Sequence[np.ndarray], *, reuse: bool = False) -> torch.Tensor:
        """Letterboxed ``uint8 [S, S, 3]`` images (from :meth:`letterbox`) → the network input.

        Args:
            reuse: on the CPU, write into the detector's own input buffer (kept between calls, grown to
                the largest batch) instead of fresh memory: the returned tensor is valid until the next
                ``reuse`` call, so only a caller that runs one batch at a time passes it (the pipeline's
                CPU path). Fresh 640² batches cost more in page faults than in arithmetic (~2.5 ms per
                image against ~0.5). Ignored on CUDA.

        Returns:
            ``[N, 3, S, S]`` in [0, 1] on the detector's device and dtype, channels-last memory (NHWC
            permuted to NCHW *is* channels-last; the cast keeps that layout); on CUDA one copy into
            pinned memory and a non-blocking upload.
        """
        if len(letterboxed) == 0:
            raise ValueError("images is empty")
        s = self.input_size
        cuda = self.device.type == "cuda"
        if reuse and not cuda:
            return self._stack_into_buffer(letterboxed)
        host = torch.empty((len(letterboxed), s, s, 3), dtype=torch.uint8, pin_memory=cuda)
        np.stack(letterboxed, out=host.numpy())
        if cuda:
            host = host.to(self.device, non_blocking=True)
        return host.permute(0, 3, 1, 2).to(self.dtype).div_(255.0)

    def _stack_into_buffer(self, letterboxed: Sequence[np.ndarray]) -> torch.Tensor:
        """:meth:`stack` on the CPU into the reused buffer: each image cast and divided by 255 straight into
        its row in one pass (``float32(x) / 255``, the same values as a fresh stack's ``div_(255)``, bit for
        bit; no uint8 batch in between, and no second pass over the batch on torch's intra-op threads)."""
        s, n = self.input_size, len(letterboxed)
        if self._cpu_input is None or self._cpu_input.shape[0] < n:
            self._cpu_input = None  # the old buffer goes before the new one is touched
            self._cpu_input = torch.empty((n, s, s, 3), dtype=self.dtype)
        rows = self._cpu_input[:n]
        target = rows.numpy()
        for row, image in enumerate(letterboxed):
            if getattr(image, "shape", None) != (s, s, 3):
                got = getattr(image, "shape", type(image).__name__)
                raise ValueError(f"letterboxed image {row} must be [{s}, {s}, 3], got {got}")
            np.divide(image, _255, out=target[row], casting="unsafe")
        return rows.permute(0, 3, 1, 2)

    def letterbox_tensors(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[LetterboxGeometry]]:
        """Decoded ``uint8 [3, H, W]`` tensors (e.g. nvJPEG's, on the detector's device) → the network
        input ``[N, 3, S, S]`` (letterboxed on their device, :func:`predictor.ops.letterbox_batch_tensor`)
        and one geometry each."""
        return ops.letterbox_batch_tensor(images, self.input_size, dtype=self.dtype)

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[LetterboxGeometry]]:
        """:meth:`letterbox` each RGB ``uint8 [H, W, 3]`` image (any sizes), then :meth:`stack` them.

        Returns:
            the network input ``[N, 3, S, S]`` and one :class:`~predictor.ops.LetterboxGeometry` each.
        """
        if isinstance(images, np.ndarray) and images.ndim != 4:
            raise ValueError("images must be a sequence of HxWx3 arrays (a list), not a single array")
        if len(images) == 0:
            raise ValueError("images is empty")
        letterboxed, geometries = zip(*(self.letterbox(img, f"image {i}") for i, img in enumerate(images)),
                                      strict=True)
        return self.stack(letterboxed), list(geometries)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Run the network: ``[N, 3, H, W]`` in [0, 1] → decoded ``[N, R, 5 + nc]`` (inference mode).

        A tensor on another device or dtype is moved first. With ``accel="cudagraph"`` the first call at
        a new batch size (up to ``graph_max_batch``) captures a graph (shared memory pool, at most
        ``max_graphs``; :meth:`warmup` captures up front); the returned tensor is always the caller's own
        (never a reused static buffer).
        """
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
            got = getattr(batch, "shape", type(batch).__name__)
            raise ValueError(f"batch must be a tensor [N, 3, H, W], got {got}")
        if batch.shape[0] == 0:
            raise ValueError("batch is empty")
        stride = max(self.strides)
        if batch.shape[2] % stride or batch.shape[3] % stride:
            raise ValueError(
                f"batch height and width must be multiples of {stride}, got {tuple(batch.shape[2:])}"
            )
        batch = batch.to(self.device, self.dtype, non_blocking=True)
        with torch.inference_mode():
            if self.runtime is not None:  # ONNX Runtime / OpenVINO on the exported network
                return self.runtime(batch)
            if self.accel in GPU_ACCELERATIONS:
                return self._graph_forward(batch)
            return self.model(batch)

    def _run_network(self, batch: torch.Tensor, *, compiled: bool = True) -> torch.Tensor:
        """The network without graphs: compiled under ``accel="compile"`` (unless ``compiled`` is False,
        e.g. for a batch size that would cost a new compilation), else eager."""
        if compiled and self._compiled is not None:
            try:
                return self._compiled(batch)
            except Exception:  # any compiler failure: fall back, once, loudly
                log.warning("torch.compile failed; falling back to eager execution", exc_info=True)
                self._compiled = None
        return self.model(batch)

    def postprocess(
        self, raw: torch.Tensor, geometries: Sequence[LetterboxGeometry], params: DetectParams = DetectParams()
    ) -> list[Detections]:
        """NMS (:func:`predictor.ops.non_max_suppression` with ``params``), then boxes back to each
        original image with the geometry its letterbox applied (:func:`predictor.boxes.scale_boxes`).

        Args:
            raw: the network output ``[N, R, 5 + nc]`` (:meth:`forward`).
            geometries: one per row of ``raw``, as :meth:`preprocess` (or :meth:`letterbox`,
                :meth:`letterbox_tensors`) returned them.
            params: the thresholds.
        """
        if not isinstance(raw, torch.Tensor) or raw.ndim != 3:
            raise ValueError(f"raw must be a tensor [N, R, 5 + nc], got {getattr(raw, 'shape', type(raw))}")
        if raw.shape[0] != len(geometries):
            raise ValueError(f"{raw.shape[0]} outputs but {len(geometries)} letterbox geometries")
        det, image = ops.non_max_suppression(raw, params)
        host = torch.cat((det, image[:, None].to(det.dtype)), dim=1).cpu().numpy()  # one device → host copy
        return split_detections(host[:, :6], host[:, 6].astype(np.int64), geometries)

    def detect(self, images: Sequence[np.ndarray], params: DetectParams = DetectParams()) -> list[Detections]:
        """:meth:`preprocess` → :meth:`forward` → :meth:`postprocess` with ``params``."""
        batch, geometries = self.preprocess(images)
        return self.postprocess(self.forward(batch), geometries, params)

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run each batch size once (allocator, cuDNN autotuning, graph capture / compilation)."""
        s = self.input_size
        for n in batch_sizes:
            if int(n) < 1:
                raise ValueError(f"batch sizes must be >= 1, got {n}")
            if self.accel in GPU_ACCELERATIONS:  # captured whatever graph_max_batch says
                with self._lock, torch.cuda.device(self.device):
                    if (int(n), 3, s, s) not in self._graphs and not self._graph_failed \
                            and len(self._graphs) < self.max_graphs:
                        self._capture((int(n), 3, s, s))
            self.forward(torch.zeros((int(n), 3, s, s), dtype=self.dtype, device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ CUDA graphs
    def _graph_forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Replay the graph for this input shape: captured now if allowed (``accel="cudagraph"``, up to
        ``graph_max_batch``), else the smallest captured graph of a larger batch with the batch padded
        into it, else the network without a graph.

        Serialised by a lock, fallback included, so that no other forward runs while a graph is being
        captured (capture is best done up front by :meth:`warmup`).
        """
        key = tuple(batch.shape)
        n = key[0]
        with self._lock, torch.cuda.device(self.device):
            g = self._graphs.get(key)
            if (
                g is None
                and self.accel == "cudagraph"
                and not self._graph_failed
                and n <= self.graph_max_batch
                and len(self._graphs) < self.max_graphs
            ):
                g = self._capture(key)
            if g is None:
                larger = [shape for shape in self._graphs if shape[1:] == key[1:] and shape[0] > n]
                g = self._graphs[min(larger)] if larger else None
            if g is None:  # no graph: compiled only for a shape it was compiled for (no stall mid-serving)
                compiled = self._graph_failed or not self._graphs
                return self._run_network(batch, compiled=compiled).clone()
            g.static_in[:n].copy_(batch)  # rows past n keep older inputs: computed, never returned
            g.graph.replay()
            return g.static_out[:n].clone()

    def _capture(self, shape: tuple[int, ...]) -> _Graph | None:
        """Capture the network for one input shape (caller holds the lock); ``None`` if capture fails,
        after which the detector runs eagerly."""
        try:
            if self._graph_pool is None:
                self._graph_pool = torch.cuda.graph_pool_handle()
            static_in = torch.zeros(shape, device=self.device, dtype=self.dtype).contiguous(
                memory_format=torch.channels_last
            )
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # compilation, cuDNN autotuning and lazy init happen outside the capture
                    self._run_network(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:  # other threads' CUDA calls must not invalidate the capture (torch >= 2.1)
                ctx = torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local")
            except TypeError:
                ctx = torch.cuda.graph(graph, pool=self._graph_pool)
            with ctx:
                static_out = self._run_network(static_in)
            torch.cuda.synchronize(self.device)
        except Exception:  # capture unsupported here: eager from now on
            log.warning("CUDA graph capture failed for input %s; running eagerly", shape, exc_info=True)
            self._graph_failed = True
            return None
        g = _Graph(graph, static_in, static_out)
        self._graphs[shape] = g
        log.info("captured a CUDA graph for input %s", shape)
        return g

