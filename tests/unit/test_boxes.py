"""The torch-free post-processing (predictor.boxes) and the torch-free Detector twin
(predictor.runtimes.detector.ExportedDetector) against the torch path.

* numpy NMS vs :func:`predictor.ops.non_max_suppression` on the golden raw head outputs (official model,
  fp16-stored) and on our network's fp32 output: the same rows (boxes and scores equal to float32
  rounding, 1e-4 px / 1e-6), every DetectParams field exercised (confidence, iou, max_detections,
  classes, agnostic), one image or a batch;
* the numpy box mapping is the one the torch path uses (ops.scale_boxes calls it): bit-equal;
* ExportedDetector (ONNX Runtime / OpenVINO on the export + metadata, no torch in its code) vs the torch
  Detector on the six golden images: >= 99 % of the torch detections found, scores within 1e-3, boxes
  within 0.5 original-image px (the engines' fp32 tolerance, tests/service/test_engines.py) — and vs
  the official golden detections with tests/unit/test_nms_parity.py's rule.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from predictor import boxes, ops
from predictor.engine import Detector
from predictor.runtimes import export
from predictor.runtimes.detector import ExportedDetector
from predictor.settings import DetectParams
from tests.unit.test_nms_parity import IMAGES, RAW_IMAGES, assert_parity, golden_key, load_golden

ENGINES = [e for e in ("onnxruntime", "openvino") if importlib.util.find_spec(e) is not None]
PARAMS = [
    DetectParams(confidence=0.25, iou=0.45),
    DetectParams(confidence=0.001, iou=0.65),
    DetectParams(confidence=0.1, iou=0.3, max_detections=7),
    DetectParams(confidence=0.05, iou=0.5, classes=(0, 2, 5)),
    DetectParams(confidence=0.05, iou=0.5, agnostic=True),
]


def _torch_nms(raw: np.ndarray, params: DetectParams) -> tuple[np.ndarray, np.ndarray]:
    det, image = ops.non_max_suppression(torch.from_numpy(raw), params)
    return det.numpy(), image.numpy()


def _assert_same_rows(ours: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray], what: str) -> None:
    (det, image), (ref_det, ref_image) = ours, ref
    assert det.shape == ref_det.shape, f"{what}: {det.shape} vs {ref_det.shape}"
    np.testing.assert_array_equal(image, ref_image, err_msg=what)
    np.testing.assert_array_equal(det[:, 5], ref_det[:, 5], err_msg=f"{what}: classes")
    np.testing.assert_allclose(det[:, 4], ref_det[:, 4], rtol=0, atol=1e-6, err_msg=f"{what}: scores")
    np.testing.assert_allclose(det[:, :4], ref_det[:, :4], rtol=0, atol=1e-4, err_msg=f"{what}: boxes")


@pytest.fixture(scope="module")
def golden_raw(yolo_fixtures: Path) -> np.ndarray:
    golden = load_golden(yolo_fixtures, "yolov7-tiny")
    return np.stack([golden[f"{n}.raw"] for n in RAW_IMAGES]).astype(np.float32)


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"c{p.confidence}-i{p.iou}-m{p.max_detections}"
                         f"-{'agn' if p.agnostic else 'aware'}-{p.classes}")
def test_numpy_nms_equals_the_torch_nms(golden_raw: np.ndarray, params: DetectParams):
    for index, name in enumerate(RAW_IMAGES):
        one = golden_raw[index : index + 1]
        _assert_same_rows(boxes.non_max_suppression(one, params), _torch_nms(one, params), name)
    batch = boxes.non_max_suppression(golden_raw, params)
    assert batch[0].shape[0] > 0, "nothing detected: the comparison would be vacuous"
    _assert_same_rows(batch, _torch_nms(golden_raw, params), "batch")


def test_numpy_nms_limits_and_refusals(golden_raw: np.ndarray):
    det, image = boxes.non_max_suppression(golden_raw, DetectParams(confidence=0.001, iou=0.65, max_detections=3))
    assert np.bincount(image).tolist() == [3, 3]
    assert (np.diff(det[:3, 4]) <= 0).all(), "highest score first"
    det, _ = boxes.non_max_suppression(golden_raw, DetectParams(confidence=0.05, classes=(2,)))
    assert set(det[:, 5].tolist()) <= {2.0}
    nothing, image = boxes.non_max_suppression(golden_raw, DetectParams(confidence=0.999))
    assert nothing.shape == (0, 6) and image.shape == (0,)
    with pytest.raises(ValueError, match="class ids"):
        boxes.non_max_suppression(golden_raw, DetectParams(classes=(80,)))
    with pytest.raises(ValueError, match="pred must be"):
        boxes.non_max_suppression(golden_raw[0], DetectParams())


def test_numpy_nms_finds_the_official_detections(yolo_fixtures: Path, golden_raw: np.ndarray):
    golden = load_golden(yolo_fixtures, "yolov7-tiny")
    for index, name in enumerate(RAW_IMAGES):
        det, _ = boxes.non_max_suppression(golden_raw[index : index + 1], DetectParams(confidence=0.25, iou=0.45))
        gold = torch.from_numpy(golden[golden_key(name, 0.25, 0.45)])
        assert_parity(torch.from_numpy(det), gold, f"numpy NMS {name}", box_tol=0.5)


def test_torch_scale_boxes_is_the_numpy_one():
    geometries = [boxes.letterbox_geometry((451, 300), 640), boxes.letterbox_geometry((1080, 810), 640)]
    rng = np.random.default_rng(0)
    xyxy = np.sort(rng.uniform(-20, 660, (10, 4)).astype(np.float32).reshape(10, 2, 2), axis=1).reshape(10, 4)
    image = np.array([0, 1] * 5)
    ours = boxes.scale_boxes(xyxy, geometries, image)
    assert np.array_equal(ops.scale_boxes(torch.from_numpy(xyxy), geometries, torch.from_numpy(image)).numpy(), ours)
    assert (ours >= 0).all() and (ours[image == 0][:, 0::2] <= 300).all() and (ours[image == 0][:, 1::2] <= 451).all()


# ------------------------------------------------------------------ the torch-free detector
@pytest.fixture(scope="module")
def exported(yolo_fixtures: Path, tmp_path_factory):
    weights = yolo_fixtures / "yolov7-tiny-random.pt"
    cache = tmp_path_factory.mktemp("engines")
    with pytest.MonkeyPatch.context() as patch:  # only this cache (not another run's in $TMPDIR, ~/.cache)
        isolated = tmp_path_factory.mktemp("isolated")
        patch.setenv("XDG_CACHE_HOME", str(isolated))
        patch.setattr(export.tempfile, "tempdir", str(isolated))
        detector = Detector.from_weights(weights, device="cpu")
        onnx_path = export.find_or_export(detector.model, weights, detector.input_size, cache=cache)
        export.write_metadata(onnx_path, detector)
        yield {"weights": weights, "cache": cache, "detector": detector, "onnx": onnx_path}


def test_export_metadata_is_what_a_torch_free_server_needs(exported: dict):
    meta = json.loads(export.metadata_path(exported["onnx"]).read_text())
    det = exported["detector"]
    assert meta == {"names": det.names, "variant": det.variant, "strides": list(det.strides),
                    "input_size": det.input_size, "num_classes": det.num_classes}
    assert export.find_exported(exported["weights"], cache=exported["cache"]) == exported["onnx"]
    assert export.find_exported(exported["weights"], 640, cache=exported["cache"]) == exported["onnx"]
    assert export.find_exported(exported["weights"], 320, cache=exported["cache"]) is None


@pytest.mark.skipif(not ENGINES, reason="no exported-model engine (onnxruntime, openvino) installed")
@pytest.mark.parametrize("engine", ENGINES)
def test_exported_detector_detects_like_the_torch_detector(exported: dict, yolo_fixtures: Path, engine: str):
    twin = ExportedDetector.load(exported["onnx"], engine=engine)
    reference = exported["detector"]
    assert (twin.names, twin.input_size, twin.variant, twin.engine) == \
        (reference.names, reference.input_size, reference.variant, engine)
    rgbs = [cv2.imread(str(yolo_fixtures / "images" / f"{n}.jpg"))[:, :, ::-1].copy() for n in IMAGES]
    params = DetectParams(confidence=0.25, iou=0.45)
    ours, ref = twin.detect(rgbs, params), reference.detect(rgbs, params)
    for name, got, want in zip(IMAGES, ours, ref, strict=True):
        pack = [torch.from_numpy(np.concatenate([d.boxes, d.scores[:, None], d.classes[:, None].astype(np.float32)], 1))
                for d in (got, want)]
        if len(want) == 0:
            assert len(got) == 0, f"{engine}/{name}"
            continue
        assert_parity(pack[0], pack[1], f"{engine}/{name} vs torch", box_tol=0.5)
        assert got.boxes.dtype == np.float32 and got.classes.dtype == np.int64


@pytest.mark.skipif(not ENGINES, reason="no exported-model engine (onnxruntime, openvino) installed")
def test_the_server_takes_the_torch_free_path_only_where_it_applies(exported: dict, monkeypatch):
    from types import SimpleNamespace

    from predictor.runtimes import detector as chooser

    def settings(**kw):
        return SimpleNamespace(**{"device": "cpu", "engine": ENGINES[0], "precision": "auto", "input_size": 0,
                                  "engine_cache": str(exported["cache"]), **kw})

    by_file = chooser.torch_free_detector(settings(), exported["onnx"])  # --weights model.onnx
    assert isinstance(by_file, ExportedDetector) and by_file.engine == ENGINES[0]
    by_checkpoint = chooser.torch_free_detector(settings(device="auto"), exported["weights"])  # export found
    assert isinstance(by_checkpoint, ExportedDetector) and by_checkpoint.input_size == 640
    assert chooser.torch_free_detector(settings(engine="torch"), exported["weights"]) is None
    assert chooser.torch_free_detector(settings(engine="auto"), exported["weights"]) is None  # torch installed
    assert chooser.torch_free_detector(settings(device="cuda"), exported["weights"]) is None
    assert chooser.torch_free_detector(settings(input_size=320), exported["weights"]) is None  # torch exports it
    monkeypatch.setattr(chooser, "_installed", lambda name: name != "torch" and name in ENGINES)
    assert isinstance(chooser.torch_free_detector(settings(engine="auto", device="auto"), exported["weights"]),
                      ExportedDetector)  # no torch: auto = an installed CPU engine
    with pytest.raises(ValueError, match=r"no torch to export the checkpoint.*predictor\.runtimes\.export"):
        chooser.torch_free_detector(settings(input_size=320), exported["weights"])


@pytest.mark.skipif(not ENGINES, reason="no exported-model engine (onnxruntime, openvino) installed")
def test_a_pre_exported_model_in_the_model_folder_is_served_even_where_torch_is_installed(exported, tmp_path):
    """KServe's /mnt/models holding only model.onnx + model.onnx.json: found, and served by a CPU engine with the
    image's defaults (device auto, engine auto) — torch installed or not; refused clearly for a GPU or torch."""
    import shutil
    from types import SimpleNamespace

    from predictor.model import resolve_weights
    from predictor.runtimes import detector as chooser

    mount = tmp_path / "models"
    mount.mkdir()
    shutil.copy(exported["onnx"], mount / "model.onnx")
    with pytest.raises(FileNotFoundError, match="no exported model"):  # no metadata beside it: not servable
        resolve_weights(mount)
    shutil.copy(export.metadata_path(exported["onnx"]), mount / "model.onnx.json")
    assert resolve_weights(mount) == mount / "model.onnx"
    settings = SimpleNamespace(device="auto", engine="auto", precision="auto", input_size=0, engine_cache="")
    served = chooser.torch_free_detector(settings, mount / "model.onnx")
    assert isinstance(served, ExportedDetector) and served.engine in ENGINES
    for bad in ({"device": "cuda"}, {"engine": "torch"}):
        with pytest.raises(ValueError, match="runs on the CPU engines"):
            chooser.torch_free_detector(SimpleNamespace(**{**vars(settings), **bad}), mount / "model.onnx")


@pytest.mark.skipif(len(ENGINES) < 2, reason="needs both onnxruntime and openvino")
def test_auto_without_torch_times_the_installed_engines_and_caches_the_choice(exported: dict, monkeypatch):
    """The CPU image with OpenVINO added: no torch, so auto measures (it used to take the first installed)."""
    from types import SimpleNamespace

    from predictor.runtimes import detector as chooser
    from predictor.runtimes import select

    monkeypatch.setattr(chooser, "_installed", lambda name: name != "torch" and name in ENGINES)
    for old in exported["onnx"].parent.glob(f"auto-{exported['onnx'].stem}-*.json"):
        old.unlink()
    settings = SimpleNamespace(device="auto", engine="auto", precision="auto", input_size=0,
                               engine_cache=str(exported["cache"]))
    chosen = chooser.torch_free_detector(settings, exported["onnx"])
    [decision] = exported["onnx"].parent.glob(f"auto-{exported['onnx'].stem}-*.json")
    report = json.loads(decision.read_text())
    assert set(report["median_ms"]) == set(ENGINES) and report["engine"] == chosen.engine
    assert chosen.engine == min(report["median_ms"], key=report["median_ms"].get)
    monkeypatch.setattr(select, "_time_interleaved", lambda *a, **k: pytest.fail("timed again"))
    assert chooser.torch_free_detector(settings, exported["onnx"]).engine == chosen.engine  # a restart reads it


def _letterbox_by_fill(image: np.ndarray, size: int, color=boxes.PAD_COLOR) -> np.ndarray:
    """The letterbox as it was before the one-pass border (the whole canvas painted, then the image copied)."""
    geo = boxes.letterbox_geometry(image.shape[:2], size)
    new_h, new_w = geo.resized
    if image.shape[:2] != (new_h, new_w):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    out = np.empty((*geo.canvas, image.shape[2]), image.dtype)
    out[...] = np.resize(np.asarray(color, image.dtype), image.shape[2])
    top, _, left, _ = geo.borders
    out[top : top + new_h, left : left + new_w] = image
    return out


@pytest.mark.parametrize("shape", [(1080, 810, 3), (300, 500, 3), (640, 320, 3), (451, 300, 4), (17, 1000, 3),
                                   (640, 640, 3)])
def test_the_one_pass_letterbox_equals_painting_the_canvas_first(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    for source in (image, image[:, ::-1]):  # a contiguous image and a flipped view
        out, geo = boxes.letterbox(source, 640, color=(114, 7, 250))
        assert out.shape[:2] == geo.canvas and out.dtype == np.uint8
        np.testing.assert_array_equal(out, _letterbox_by_fill(source, 640, (114, 7, 250)))
        assert not np.shares_memory(out, source)


def _greedy_loop(xyxy: np.ndarray, scores: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """The greedy NMS as it was: one kept box's IoUs with the rest at a time, over every box at once."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = xyxy.T
    areas = (x2 - x1) * (y2 - y1)
    kept = []
    while order.size and len(kept) < limit:
        i, rest = order[0], order[1:]
        kept.append(i)
        inter = (np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
                 * np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            order = rest[~(inter / (areas[i] + areas[rest] - inter) > iou)]
    return np.asarray(kept, dtype=np.int64)


@pytest.mark.parametrize("count", [1, 2, 50, 700, 1500])
def test_the_fast_nms_keeps_what_the_greedy_loop_keeps(count, monkeypatch):
    """IoU matrix (few boxes) or loop (many), one pass or class by class: the same indices as before."""
    rng = np.random.default_rng(count)
    xy = rng.uniform(0, 600, (count, 2))
    wh = rng.uniform(0, 120, (count, 2))
    wh[::7] = 0.0  # empty boxes: their IoU is 0/0 = NaN, never a reason to suppress
    xyxy = np.concatenate((xy, xy + wh), axis=1)
    xyxy[1::5] = xyxy[0]  # duplicates
    scores = rng.choice(np.linspace(0.1, 0.9, 9), count)  # many ties: the stable order decides
    classes = rng.integers(0, 6, count)
    shifted = xyxy + (classes * (xyxy.max() - xyxy.min() + 1.0))[:, None]  # as non_max_suppression does
    for iou, limit in ((0.45, 300), (0.1, 5), (0.9, 2000)):
        for matrix_max, groups_from in ((0, 0), (1024, 0), (1024, 512)):
            monkeypatch.setattr(boxes, "_NMS_MATRIX_MAX", matrix_max)
            monkeypatch.setattr(boxes, "_NMS_GROUPS_FROM", groups_from)
            np.testing.assert_array_equal(boxes._nms_indices(xyxy, scores, iou, limit),
                                          _greedy_loop(xyxy, scores, iou, limit))
            np.testing.assert_array_equal(boxes._nms_indices(shifted, scores, iou, limit, classes),
                                          _greedy_loop(shifted, scores, iou, limit))
