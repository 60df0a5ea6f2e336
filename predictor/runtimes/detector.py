"""The torch-free twin of :class:`~predictor.engine.Detector`: an exported model on a CPU engine.

Serves a model exported by :mod:`predictor.runtimes.export` (the ONNX file and the metadata JSON beside
it: class names, variant, strides, input size) with ONNX Runtime or OpenVINO, and does the rest with
:mod:`predictor.boxes` (OpenCV letterbox, numpy NMS, box mapping) — nothing here imports torch, so a CPU
image can leave it out. It offers the Detector's interface as the pipeline uses it (``letterbox``,
``stack``, ``forward``, ``postprocess``, ``detect``, ``warmup`` and the descriptive attributes), with
numpy arrays where the Detector has tensors::

    det = ExportedDetector.load("yolov7-tiny-....onnx", engine="onnxruntime")
    [d] = det.detect([rgb], DetectParams(confidence=0.25))

:func:`torch_free_detector` is the server's choice: it returns one when the settings ask for a CPU engine
(or ``auto`` where torch is not installed) and an export with metadata exists for the weights.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictor import boxes
from predictor.boxes import Detections, LetterboxGeometry
from predictor.runtimes.export import CACHE_FOLDER, find_exported
from predictor.settings import DetectParams

__all__ = ["CPU", "ExportedDetector", "torch_free_detector"]

log = logging.getLogger(__name__)
_SCALE = np.float32(1.0 / 255.0)  # the network input is float32(pixel) * (1 / 255)


@dataclass(frozen=True)
class _Device:
    """What the pipeline asks of a device (``.type``), without torch."""

    type: str = "cpu"

    def __str__(self) -> str:
        return self.type


CPU = _Device()


class ExportedDetector:
    """An exported YOLOv7 network on a CPU engine, with letterbox pre- and NMS post-processing.

    Args:
        runtime: a loaded :class:`~predictor.runtimes.base.Runtime` (``run``: float32 ``[N, 3, S, S]`` in
            [0, 1] → decoded ``[N, R, 5 + nc]``).
        names, variant, strides, input_size: the exported network's (its metadata JSON).
    """

    accel = "eager"
    device = CPU

    def __init__(self, runtime: Any, *, names: Sequence[str], variant: str = "custom",
                 strides: Sequence[int] = (8, 16, 32), input_size: int = 640):
        self.runtime = runtime
        self._input: np.ndarray | None = None  # stack(reuse=True)'s buffer
        self._warm: set[int] = set()  # batch sizes already run (load's check runs batch 1)
        self.engine = runtime.name
        self.precision = runtime.precision
        self.names = [str(n) for n in names]
        self.num_classes = len(self.names)
        self.variant = str(variant)
        self.strides = tuple(int(s) for s in strides)
        self.input_size = int(input_size)
        if self.num_classes <= 0 or self.input_size <= 0 or self.input_size % max(self.strides):
            raise ValueError(f"bad exported-model metadata: {self.num_classes} classes, input size "
                             f"{self.input_size}, strides {self.strides}")

    @classmethod
    def load(cls, onnx_path: str | Path, *, engine: str = "onnxruntime", precision: str = "fp32",
             threads: int | None = None, build: Callable[[], Any] | None = None) -> ExportedDetector:
        """An exported model and its metadata JSON (``<file>.onnx.json``) on ``engine`` (or on the runtime that
        ``build()`` returns). Both are checked: a wrong or hostile file ends in one ``ValueError`` naming it; the
        check's forward at batch 1 counts as that batch size's warm-up."""
        from predictor.runtimes.exported_file import open_checked, read_metadata
        from predictor.runtimes.select import build_runtime

        meta = read_metadata(onnx_path)
        runtime = open_checked(onnx_path, meta, build or (
            lambda: build_runtime(engine, onnx_path, precision=precision, threads=threads)))
        detector = cls(runtime, names=meta["names"], variant=meta["variant"], strides=meta["strides"],
                       input_size=meta["input_size"])
        detector._warm.add(1)
        return detector

    def __repr__(self) -> str:
        return (f"ExportedDetector(variant={self.variant!r}, num_classes={self.num_classes}, "
                f"engine={self.engine!r}, precision={self.precision!r}, input_size={self.input_size})")

    # ------------------------------------------------------------------ stages
    def letterbox(self, image: np.ndarray, where: str = "image") -> tuple[np.ndarray, LetterboxGeometry]:
        """As :meth:`predictor.engine.Detector.letterbox`: RGB ``uint8 [H, W, 3]`` → ``[S, S, 3]`` + geometry."""
        return boxes.letterbox_rgb(image, self.input_size, where)

    def stack(self, letterboxed: Sequence[np.ndarray], *, reuse: bool = False) -> np.ndarray:
        """Letterboxed ``uint8 [S, S, 3]`` images → float32 ``[N, 3, S, S]`` in [0, 1], C-contiguous.

        ``reuse``: as :meth:`predictor.engine.Detector.stack` — into this detector's own buffer (valid
        until the next ``reuse`` call; for a caller running one batch at a time), sparing the page faults
        of a fresh batch; the same values."""
        if len(letterboxed) == 0:
            raise ValueError("images is empty")
        if not reuse:
            batch = np.stack(letterboxed).transpose(0, 3, 1, 2).astype(np.float32)  # astype: a contiguous copy
            batch *= _SCALE
            return batch
        import cv2

        s, n = self.input_size, len(letterboxed)
        if self._input is None or len(self._input) < n:
            self._input = None  # the old buffer goes before the new one is touched
            self._input = np.empty((n, 3, s, s), np.float32)
        batch = self._input[:n]
        for row, image in enumerate(letterboxed):
            if getattr(image, "shape", None) != (s, s, 3):
                raise ValueError(f"letterboxed image {row} must be [{s}, {s}, 3], got {getattr(image, 'shape', None)}")
            for plane, channel in zip(cv2.split(image), batch[row], strict=True):  # contiguous planes: no
                np.multiply(plane, _SCALE, out=channel, casting="unsafe")  # strided reads, one pass each
        return batch

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[LetterboxGeometry]]:
        if len(images) == 0:
            raise ValueError("images is empty")
        letterboxed, geometries = zip(*(self.letterbox(img, f"image {i}") for i, img in enumerate(images)),
                                      strict=True)
        return self.stack(letterboxed), list(geometries)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """``[N, 3, S, S]`` float32 in [0, 1] → decoded ``[N, R, 5 + nc]``."""
        if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[0] == 0:
            raise ValueError(f"batch must be an array [N, 3, H, W], got {getattr(batch, 'shape', type(batch))}")
        return self.runtime.run(batch)

    def postprocess(self, raw: np.ndarray, geometries: Sequence[LetterboxGeometry],
                    params: DetectParams = DetectParams()) -> list[Detections]:
        """NMS (:func:`predictor.boxes.non_max_suppression`), boxes back to each original image."""
        if raw.shape[0] != len(geometries):
            raise ValueError(f"{raw.shape[0]} outputs but {len(geometries)} letterbox geometries")
        det, image = boxes.non_max_suppression(raw, params)
        return boxes.split_detections(det, image, geometries)

    def detect(self, images: Sequence[np.ndarray], params: DetectParams = DetectParams()) -> list[Detections]:
        batch, geometries = self.preprocess(images)
        return self.postprocess(self.forward(batch), geometries, params)

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        for n in batch_sizes:
            if int(n) in self._warm:
                continue
            self._warm.add(int(n))
            self.forward(np.zeros((int(n), 3, self.input_size, self.input_size), dtype=np.float32))


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook refusing it
        return False


def torch_free_detector(settings: Any, weights: Path) -> ExportedDetector | None:
    """The server's torch-free path, or None (then the torch Detector serves).

    Taken when the device is the CPU (``cpu``, or ``auto`` with no torch installed) and the engine is
    ``onnxruntime``/``openvino`` (``auto`` where torch is not installed: the faster installed one, timed
    here: :func:`~predictor.runtimes.select.choose_exported`), and ``weights`` is an exported ``.onnx``
    (metadata beside it) or a checkpoint whose export with metadata is in the engine cache. ``auto`` with
    torch installed keeps the torch Detector for a checkpoint (it needs torch for its parity check); an
    ``.onnx`` is always served here (torch cannot load it). Raises ``ValueError`` with what to do when
    nothing can serve ``weights``.
    """
    have_torch = _installed("torch")
    onnx_given = weights.suffix.lower() == ".onnx"
    cpu_engine = settings.engine in ("onnxruntime", "openvino")  # they run on the CPU only
    if onnx_given and (settings.device.startswith("cuda") or settings.engine == "torch"):
        raise ValueError(f"{weights}: an exported ONNX model runs on the CPU engines (onnxruntime, openvino) only; "
                         "give the checkpoint for --engine torch or a GPU")
    if not (settings.device == "cpu" or (settings.device == "auto" and (cpu_engine or not have_torch or onnx_given))):
        return None
    engine = settings.engine
    installed = [name for name in ("openvino", "onnxruntime") if _installed(name)]
    if engine == "auto":
        if have_torch and not onnx_given:
            return None
        if not installed:
            raise ValueError("no torch and no CPU engine installed: install onnxruntime or openvino")
        engine = "openvino" if settings.precision == "bf16" else "auto"
    if engine == "torch":
        return None
    onnx_path = weights if onnx_given else find_exported(weights, settings.input_size,
                                                         cache=settings.engine_cache or None)
    if onnx_path is None:
        if have_torch:
            return None  # the torch Detector exports it (predictor.runtimes.attach)
        raise ValueError(
            f"{weights}: this image has no torch to export the checkpoint, and no exported model of it was found (looked "
            f"for a {CACHE_FOLDER}/ folder beside it and in the engine cache). Serve a pre-exported model instead: "
            "run `python -m predictor.runtimes.export --weights <checkpoint> --out <folder>` where torch is "
            "installed (the CUDA image, or `pip install .[predictor,cpu-engines]`), then put the .onnx and its "
            ".onnx.json in the model storage (or mount the checkpoint with its folder of exports); see docs/cpu.md")
    precision = "fp32" if settings.precision in ("auto", "fp32") else settings.precision
    if engine == "auto":  # the fastest installed engine here, timed (predictor.runtimes.select.choose_exported)
        from predictor.runtimes.select import choose_exported

        detector = ExportedDetector.load(
            onnx_path, build=lambda: choose_exported(onnx_path, installed, precision=precision))
        engine = detector.engine
    else:
        detector = ExportedDetector.load(onnx_path, engine=engine, precision=precision)
    log.info("serving the exported model %s on %s without torch", onnx_path, engine)
    return detector
