"""Crafted and generated exported models (``.onnx`` + metadata JSON, as ``--weights`` or at /mnt/models)
against :meth:`predictor.runtimes.detector.ExportedDetector.load`, in one bounded child process per engine.

Each file must end in a ``ValueError`` naming the file and the problem, or load and then detect (a mutation
may stay valid, and it must then answer with the right shapes): never a crash of the interpreter, another
exception escaping, or a large peak RSS.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.conftest import FUZZ_EXAMPLES
from tests.fuzz.test_fuzz_checkpoints import _mutate, _mutation
from tests.tools.hostile_checkpoints import REPO_ROOT, bounded_loads

INPUT_SIZE = 320
STRUCTURE_BYTES = 64 << 10  # the graph's nodes come first in the file, its weights after
PEAK_GROWTH_LIMIT_MB = 400  # a loaded session of yolov7-tiny at 320 and one forward

_SETUP = """
import numpy as np
from predictor.runtimes.detector import ExportedDetector
from predictor.settings import DetectParams
engine = sys.argv[1]
__import__(engine)  # the runtime's libraries, before the limit
image = (np.arange(240 * 320 * 3) % 251).astype(np.uint8).reshape(240, 320, 3)
"""
_LOAD = """        detector = ExportedDetector.load(path, engine=engine, threads=1)
        [found] = detector.detect([image], DetectParams(confidence=0.001))
        del detector"""

ENGINES = [name for name in ("onnxruntime", "openvino") if importlib.util.find_spec(name)]


@pytest.fixture(scope="module")
def exported(yolo_fixtures, tmp_path_factory) -> Path:
    """Our yolov7-tiny network exported at 320 (ONNX + metadata), in a folder of this module's own."""
    from predictor.engine import Detector
    from predictor.runtimes import export

    weights = yolo_fixtures / "yolov7-tiny-random.pt"
    detector = Detector.from_weights(weights, device="cpu", input_size=INPUT_SIZE)
    path = export.find_or_export(detector.model, weights, INPUT_SIZE, cache=tmp_path_factory.mktemp("exported"))
    export.write_metadata(path, detector)
    return path


def _write(folder: Path, name: str, model: bytes, meta: bytes | None) -> Path:
    path = folder / f"{name}.onnx"
    path.write_bytes(model)
    if meta is not None:
        Path(f"{path}.json").write_bytes(meta)
    return path


def _external_data_model() -> bytes:
    """A one-node ONNX model whose weight is 'external data' outside its folder (../secret.bin)."""
    from onnx import TensorProto, helper

    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    weight.external_data.add(key="location", value="../secret.bin")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 320, 320])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 320, 320])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def _crafted(folder: Path, model: bytes, meta: dict) -> list[Path]:
    good = json.dumps(meta).encode()
    cases = {
        "empty": (b"", good), "garbage": (random.Random(7).randbytes(4096), good), "truncated": (model[: len(model) // 2], good),
        "no metadata": (model, None), "metadata not json": (model, b"{names: ["),
        "metadata a list": (model, b"[]"), "metadata not utf-8": (model, b'{"names": ["\xff"]}'),
        "no names": (model, json.dumps({**meta, "names": []}).encode()),
        "names not strings": (model, json.dumps({**meta, "names": [1, 2]}).encode()),
        "20000 names": (model, json.dumps({**meta, "names": ["x"] * 20_000}).encode()),
        "3 names for 80 classes": (model, json.dumps({**meta, "names": ["a", "b", "c"]}).encode()),
        "input size 321": (model, json.dumps({**meta, "input_size": 321}).encode()),
        "input size 640 for a 320 model": (model, json.dumps({**meta, "input_size": 640}).encode()),
        "input size a string": (model, json.dumps({**meta, "input_size": "320"}).encode()),
        "input size 10**9": (model, json.dumps({**meta, "input_size": 10**9}).encode()),
        "stride 0": (model, json.dumps({**meta, "strides": [0, 16, 32]}).encode()),
        "metadata of 2 MiB": (model, json.dumps({**meta, "pad": "x" * (2 << 20)}).encode()),
        "external data outside": (_external_data_model(), good),
    }
    (folder / "secret.bin").write_bytes(bytes(16))
    inner = folder / "models"
    inner.mkdir()
    return [_write(inner, name, data, meta_bytes) for name, (data, meta_bytes) in cases.items()]


@pytest.mark.skipif(not ENGINES, reason="needs onnxruntime or openvino")
@pytest.mark.parametrize("engine", ENGINES)
def test_hostile_exported_models(engine, exported, tmp_path):
    model = exported.read_bytes()
    meta = json.loads(Path(f"{exported}.json").read_text())
    original = _write(tmp_path, "original", model, json.dumps(meta).encode())
    paths = [original, *_crafted(tmp_path, model, meta)]
    mutations: list = []

    @settings(max_examples=FUZZ_EXAMPLES, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_mutation())
    def collect(mutation):
        mutations.append([(at % STRUCTURE_BYTES, kind, value) for at, kind, value in mutation])

    collect()
    good_meta = json.dumps(meta).encode()
    paths += [_write(tmp_path, f"mutated {i}", _mutate(model, m), good_meta) for i, m in enumerate(mutations)]

    status, reports, stderr = bounded_loads(paths, setup=_SETUP, load=_LOAD, expected="ValueError",
                                            args=(engine,), timeout=900)
    done = {report["path"] for report in reports}
    assert status == 0, (f"the {engine} child died (status {status}) on "
                         f"{[str(p) for p in paths if str(p) not in done][:1]}\n{stderr}")
    assert len(reports) == len(paths)
    print(f"\nfuzz {engine}: {len(paths)} exported models ({len(mutations)} generated), "
          f"{sum(r['outcome'] == 'loaded' for r in reports[1:])} loaded, worst peak RSS growth "
          f"{max(r['peak_growth_mb'] for r in reports[1:])} MB")
    assert reports[0]["outcome"] == "loaded", reports[0]
    problems = []
    for report in reports[1:]:
        name, outcome = Path(report["path"]).name, report["outcome"]
        if report["peak_growth_mb"] > PEAK_GROWTH_LIMIT_MB:
            problems.append(f"{name}: peak RSS grew by {report['peak_growth_mb']} MB")
        if outcome.startswith("ESCAPED"):
            problems.append(f"{name}: {outcome}")
        elif outcome == "loaded" and not name.startswith("mutated"):
            problems.append(f"{name}: loaded")
        elif outcome != "loaded" and (str(report["path"]) not in outcome or len(outcome) < 60 or "\n" in outcome):
            problems.append(f"{name}: an error that does not name the file and the problem in one line: {outcome}")
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not ENGINES, reason="needs onnxruntime or openvino")
@pytest.mark.parametrize("engine", [*ENGINES[:1], "auto"])
def test_the_server_refuses_a_broken_export_in_one_line(exported, tmp_path, engine):
    """``python -m predictor --weights broken.onnx``: exits at start-up with one ``error:`` line naming the file
    and what the runtime said, no traceback (the platform shows that line as the crash reason)."""
    meta = Path(f"{exported}.json").read_bytes()
    broken = _write(tmp_path, "broken", exported.read_bytes()[:100_000], meta)
    done = subprocess.run(
        [sys.executable, "-m", "predictor", "--weights", str(broken), "--engine", engine, "--device", "cpu",
         "--http_port", "0", "--enable_grpc", "false"],
        cwd=REPO_ROOT, capture_output=True, text=True, errors="replace", timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert str(broken) in line and "the runtime cannot load it" in line, line
