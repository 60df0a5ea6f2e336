"""CPU engines (predictor.runtimes): parity with the golden fixtures on every engine, the export cache,
``auto``'s choice and its cache, and the combinations refused.

Parity: our yolov7-tiny network exported once per session (fixture) and run by each engine on the six
golden letterboxed images; NMS as served (:func:`predictor.ops.non_max_suppression`, per image) must find the
official detections (tests/unit/test_nms_parity.py's matching). Tolerances per precision:

* fp32 (torch, onnxruntime, openvino): box coordinates within 0.1 px of the official fp32 run (as for
  our torch network; measured worst across engines ~0.07 px), scores within 1e-3, >= 99 % found.
* bf16 (openvino, explicit): no golden parity — on these random-weight checkpoints bf16 moves boxes by up
  to hundreds of px (random weights exaggerate the drift: no trained network's logits sit this close to
  each other); the test checks that bf16 is really applied, its agreement is measured in
  tests/bench/engine_bench.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor.engine import Detector
from predictor.runtimes import export, select
from predictor.runtimes.select import attach, build_runtime, parity, probe_batch
from predictor.settings import DetectParams
from tests.tools.nms import per_image_nms
from tests.unit.test_nms_parity import IMAGES, SETTINGS, assert_parity, golden_key, load_golden

VARIANT = "yolov7-tiny"
EXPORTED = [e for e in ("onnxruntime", "openvino") if importlib.util.find_spec(e) is not None]


@pytest.fixture(scope="module")
def tiny(yolo_fixtures: Path, tmp_path_factory):
    weights = yolo_fixtures / f"{VARIANT}-random.pt"
    cache = tmp_path_factory.mktemp("engines")
    with pytest.MonkeyPatch.context() as patch:
        # only this module's cache: another run's export of the shared fixture in $TMPDIR or ~/.cache
        # (looked in after --engine_cache, predictor.runtimes.export.cache_dirs) must not be found
        isolated = tmp_path_factory.mktemp("isolated")
        patch.setenv("XDG_CACHE_HOME", str(isolated))
        patch.setattr(export.tempfile, "tempdir", str(isolated))
        detector = Detector.from_weights(weights, device="cpu")
        onnx_path = export.find_or_export(detector.model, weights, detector.input_size, cache=cache)
        yield {"weights": weights, "cache": cache, "detector": detector, "onnx": onnx_path,
               "golden": load_golden(yolo_fixtures, VARIANT)}


def _forward(tiny: dict, engine: str, x: np.ndarray, precision: str = "fp32") -> np.ndarray:
    if engine == "torch":
        return select._torch_forward(tiny["detector"], x)
    return build_runtime(engine, tiny["onnx"], precision=precision).run(x)


@pytest.mark.parametrize("engine", ["torch", *EXPORTED])
def test_engine_parity_with_golden_detections(tiny: dict, engine: str):
    golden = tiny["golden"]
    x = np.stack([golden[f"{n}.letterboxed_rgb"] for n in IMAGES]).transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x, dtype=np.float32) / 255.0
    raw = np.concatenate([_forward(tiny, engine, x[i : i + 3]) for i in range(0, len(IMAGES), 3)])  # b3
    assert raw.shape == (len(IMAGES), 6300 * 4, 85)
    pred = torch.from_numpy(raw)
    for i, name in enumerate(IMAGES):
        assert pred[i, :, 4].max().item() == pytest.approx(golden[f"{name}.raw_stats"][2], abs=1e-3)
        for conf, iou in SETTINGS:
            (ours,) = per_image_nms(pred[i : i + 1], conf, iou)
            gold = torch.from_numpy(golden[golden_key(name, conf, iou)])
            assert_parity(ours, gold, f"{engine}/{name}@{conf},{iou}", box_tol=0.1)


@pytest.mark.parametrize("engine", EXPORTED)
def test_engine_batch_rows_equal_single_runs(tiny: dict, engine: str):
    x = np.concatenate([probe_batch(640, seed) for seed in range(3)])
    runtime = build_runtime(engine, tiny["onnx"])
    batched = runtime.run(x)
    for i in range(3):
        np.testing.assert_allclose(batched[i], runtime.run(x[i : i + 1])[0], atol=1e-3)


def test_detector_hook_serves_the_runtime(tiny: dict, yolo_fixtures: Path):
    """Detector.detect (letterbox, thresholds, NMS, box mapping) is engine-independent."""
    if not EXPORTED:
        pytest.skip("no exported-model engine installed")
    import cv2

    rgb = cv2.imread(str(yolo_fixtures / "images" / "bus.jpg"))[:, :, ::-1].copy()
    other = Detector.from_weights(tiny["weights"], device="cpu")
    assert attach(other, engine=EXPORTED[0], weights=tiny["weights"], cache=tiny["cache"]) == EXPORTED[0]
    assert other.runtime is not None and other.engine == EXPORTED[0]

    def rows(det) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([det.boxes, det.scores[:, None], det.classes[:, None]], 1))

    for conf in (0.3, 0.5):  # per-call thresholds reach NMS the same way
        reference = rows(tiny["detector"].detect([rgb], DetectParams(confidence=conf))[0])
        served = rows(other.detect([rgb], DetectParams(confidence=conf))[0])
        assert reference.shape[0] > 0
        assert_parity(served, reference, f"{EXPORTED[0]} detect @{conf}", box_tol=0.1)


def test_parity_check_rejects_a_drifting_engine():
    ref = np.zeros((1, 10, 85), np.float32)
    assert parity(ref, ref + 1e-5)["ok"]
    moved = ref.copy()
    moved[0, 3, 0] = 2.0  # a box 2 px off
    assert not parity(ref, moved)["ok"]
    prob = ref.copy()
    prob[0, 3, 7] = 0.01
    assert not parity(ref, prob)["ok"]
    assert not parity(ref, np.full_like(ref, np.nan))["ok"]


@pytest.mark.skipif("onnxruntime" not in EXPORTED, reason="onnxruntime not installed")
def test_onnxruntime_trim_shrinks_the_arena_once_and_changes_no_answer(tiny: dict):
    runtime = build_runtime("onnxruntime", tiny["onnx"])
    x = probe_batch(640)
    before = runtime.run(np.concatenate([x] * 4))[:1]  # the arena grows for a batch of 4
    runtime.trim()
    assert runtime._run_options is not None
    np.testing.assert_array_equal(runtime.run(x), before)  # this run shrinks the arena at its end
    assert runtime._run_options is None  # once
    np.testing.assert_array_equal(runtime.run(x), before)


@pytest.mark.skipif("openvino" not in EXPORTED, reason="openvino not installed")
def test_openvino_bf16_is_explicit_and_applied(tiny: dict):
    from predictor.runtimes.openvino import cpu_supports_bf16

    fp32 = build_runtime("openvino", tiny["onnx"])
    assert "float32" in str(fp32.compiled.get_property("INFERENCE_PRECISION_HINT"))
    assert fp32.compiled.get_property("ENABLE_CPU_PINNING") is False  # threads free to move off a busy core
    if not cpu_supports_bf16():
        with pytest.raises(ValueError, match="bf16"):
            build_runtime("openvino", tiny["onnx"], precision="bf16")
        return
    bf16 = build_runtime("openvino", tiny["onnx"], precision="bf16")
    assert "bfloat16" in str(bf16.compiled.get_property("INFERENCE_PRECISION_HINT"))
    x = probe_batch(640)
    out = bf16.run(x)
    assert out.shape == fp32.run(x).shape and np.isfinite(out).all()
    assert not parity(fp32.run(x), out)["ok"]  # bf16 rounding shows: it is not the fp32 graph


@pytest.mark.skipif("openvino" not in EXPORTED, reason="openvino not installed")
def test_openvino_reads_onnx_with_its_onnx_front_end_alone(tmp_path: Path, capfd):
    """A file that is not ONNX fails in OpenVINO's ONNX front end; ``core.read_model`` would try its other
    front ends too, and TensorFlow's writes its parse errors to stderr."""
    from predictor.runtimes.openvino import OpenVinoRuntime

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"garbage that is no model\n")
    capfd.readouterr()
    with pytest.raises(Exception, match="(?i)pars"):
        OpenVinoRuntime(broken)
    assert "tensorflow" not in capfd.readouterr().err.lower()


# ------------------------------------------------------------------ cache and choice
def test_export_cached_next_to_weights_and_not_redone(tmp_path: Path, tiny: dict, monkeypatch):
    weights = tmp_path / "models" / "tiny.pt"
    weights.parent.mkdir()
    weights.write_bytes(tiny["weights"].read_bytes())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    model = tiny["detector"].model
    first = export.find_or_export(model, weights, 640)
    assert first.parent == weights.parent / export.CACHE_FOLDER
    assert export.weights_sha256(weights)[:16] in first.name and "-s640-fp32-" in first.name

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(export, "export_onnx", no_export)
    assert export.find_or_export(model, weights, 640) == first
    with pytest.raises(AssertionError, match="exported again"):  # another input size is another file
        export.find_or_export(model, weights, 320)


def test_export_falls_back_to_the_user_cache_when_the_weights_dir_is_not_writable(tmp_path, tiny, monkeypatch):
    weights = tmp_path / "ro" / "tiny.pt"
    weights.parent.mkdir()
    weights.write_bytes(tiny["weights"].read_bytes())
    (weights.parent / export.CACHE_FOLDER).write_text("not a folder")  # mkdir fails, as on a read-only mount
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = export.find_or_export(tiny["detector"].model, weights, 640)
    assert path.parent == tmp_path / "xdg" / "yolo-v7" / "engines"


@pytest.mark.skipif(not EXPORTED, reason="no exported-model engine installed")
def test_auto_chooses_once_and_caches_the_choice(tiny: dict, monkeypatch):
    calls = []
    real = select._choose

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(select, "_choose", counted)
    first = Detector.from_weights(tiny["weights"], device="cpu")
    chosen = attach(first, engine="auto", weights=tiny["weights"], cache=tiny["cache"])
    assert chosen in ("torch", *EXPORTED) and first.engine == chosen
    decisions = list(tiny["cache"].glob("auto-*.json"))
    assert len(decisions) == 1 and calls == [1]
    second = Detector.from_weights(tiny["weights"], device="cpu")
    assert attach(second, engine="auto", weights=tiny["weights"], cache=tiny["cache"]) == chosen
    assert calls == [1]  # the restart read the cached choice


def test_auto_falls_back_to_torch_when_the_export_fails(tiny: dict, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("Module onnx is not installed!")

    monkeypatch.setattr(export, "export_onnx", broken)
    detector = Detector.from_weights(tiny["weights"], device="cpu")
    assert attach(detector, engine="auto", weights=tiny["weights"], cache=tmp_path) == "torch"
    assert detector.runtime is None and detector.engine == "torch"
    if EXPORTED:  # an explicit engine says why it cannot start
        with pytest.raises(RuntimeError, match="onnx"):
            attach(detector, engine=EXPORTED[0], weights=tiny["weights"], cache=tmp_path)


@pytest.mark.parametrize("engine, precision", [("torch", "bf16"), ("onnxruntime", "bf16")])
def test_bf16_only_on_openvino(tiny: dict, engine: str, precision: str):
    with pytest.raises(ValueError, match="bf16"):
        attach(tiny["detector"], engine=engine, weights=tiny["weights"], precision=precision, cache=tiny["cache"])


def test_unknown_engine_is_refused(tiny: dict):
    with pytest.raises(ValueError, match="engine must be one of"):
        attach(tiny["detector"], engine="tensorrt", weights=tiny["weights"])


def test_predictor_entry_makes_openmp_passive_unless_told_otherwise(monkeypatch):
    from predictor import __main__ as entry

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    entry.passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # an operator's explicit choice wins
    entry.passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_load_check_counts_as_the_batch_1_warm_up(tiny: dict):
    """ExportedDetector.load runs one forward at batch 1 to check the model's shapes; the warm-up then runs only
    the batch sizes not yet run (yolov7 on 2 cores: one ~0.45 s forward less at start-up)."""
    from predictor.runtimes import export as exp
    from predictor.runtimes.detector import ExportedDetector

    exp.write_metadata(tiny["onnx"], tiny["detector"])
    detector = ExportedDetector.load(tiny["onnx"], engine="onnxruntime", threads=1)
    runs: list[int] = []
    run = detector.runtime.run
    detector.runtime.run = lambda x: runs.append(x.shape[0]) or run(x)
    detector.warmup((1, 2))
    detector.warmup((1, 2))
    assert runs == [2]


@pytest.mark.parametrize("content", ['["onnxruntime"]', '{"engine": "tensorrt"}', '{"engine": 7}', "{"])
def test_a_broken_engine_choice_file_is_chosen_again(tmp_path: Path, content: str):
    """The cached ``auto`` choice sits beside the model (a volume anything may have written): a file that does
    not name one of the candidate engines is chosen again, not served and not a failed start."""
    decision = tmp_path / "auto-model-key.json"
    decision.write_text(content)
    chosen = select._cached_choice(decision, lambda: ("onnxruntime", {"median_ms": {}}), ("onnxruntime", "openvino"))
    assert chosen == "onnxruntime"
    assert json.loads(decision.read_text())["engine"] == "onnxruntime"
