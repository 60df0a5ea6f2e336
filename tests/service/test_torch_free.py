"""The CPU engines' server runs without torch: ``python -m predictor`` started under a meta-path hook
that makes ``import torch`` / ``import torchvision`` fail (tests/tools/no_torch.py), with an exported
model (ONNX + metadata, predictor.runtimes.export) next to the weights, answers REST v2 and gRPC like
the torch Detector run in this process (fp32 tolerances of tests/service/test_engines.py: scores 1e-3,
boxes 0.5 original px, >= 99 % found); without an export it refuses to start with a clear reason.

The same server in a venv with no torch installed at all (the CPU image's runtime) is measured by
tests/bench/torchfree_bench.py.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kserve.protocol.infer_type import serialize_byte_tensor

from tests.service.conftest import INPUT_SIZE, SERVER_ARGS, SERVER_ENV
from tests.service.helpers import decode, direct, v2_outputs, v2_request
from tests.service.test_engines import _assert_same, _assert_v2_like_detector, _grpc_first_image
from tests.tools.predictor_server import REPO_ROOT, predictor_server

ENGINES = [e for e in ("onnxruntime", "openvino") if importlib.util.find_spec(e) is not None]
NO_TORCH = [sys.executable, str(REPO_ROOT / "tests" / "tools" / "no_torch.py")]

pytestmark = pytest.mark.skipif(not ENGINES, reason="no exported-model engine (onnxruntime, openvino) installed")


@pytest.fixture(scope="module")
def exported_weights(tiny_weights: Path, tmp_path_factory) -> Path:
    """The tiny checkpoint in a folder of its own, exported at the service tests' input size as the
    image build does (``python -m predictor.runtimes.export``: .yolo-v7-engines/ beside the weights)."""
    folder = tmp_path_factory.mktemp("baked")
    weights = folder / tiny_weights.name
    shutil.copy(tiny_weights, weights)
    subprocess.run([sys.executable, "-m", "predictor.runtimes.export", "--weights", str(weights),
                    "--input_size", str(INPUT_SIZE)], check=True, cwd=REPO_ROOT, capture_output=True, timeout=300)
    return weights


@pytest.mark.parametrize("engine", [*ENGINES, "auto"])  # auto without torch: the installed engines timed
def test_served_without_torch_answers_like_the_torch_detector(exported_weights, detector, images, engine):
    env = {**SERVER_ENV, "YOLO_ENGINE": engine}
    bus, zidane = images["bus"], images["zidane"]
    with predictor_server(exported_weights, extra_args=SERVER_ARGS, env=env, launcher=NO_TORCH) as server:
        assert "without torch" in server.log_tail(200)
        with httpx.Client(timeout=120) as http:
            meta = http.get(f"{server.http_url}/v2/models/yolov7").json()["parameters"]
            assert (meta["precision"], meta["input_size"]) == ("fp32", INPUT_SIZE)
            assert meta["engine"] == engine or (engine == "auto" and meta["engine"] in ENGINES)
            if engine == "auto" and len(ENGINES) > 1:
                assert "engine auto chose" in server.log_tail(200)  # timed, not the first installed
            response = http.post(server.infer_url, json=v2_request(bus, zidane, parameters={"confidence": 0.2}))
            assert response.status_code == 200, response.text
            _assert_v2_like_detector(v2_outputs(response.json()), (bus, zidane), detector,
                                     f"torch-free {engine} v2", confidence=0.2)
            bad = http.post(server.infer_url, json=v2_request(b"not an image"))
            assert bad.status_code == 400, bad.text
        request = pb.ModelInferRequest(
            model_name="yolov7",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])],
            raw_input_contents=[serialize_byte_tensor(np.array([bus], dtype=object)).item()],
            parameters={"confidence": pb.InferParameter(string_param="0.1"),
                        "max_detections": pb.InferParameter(int64_param=50),
                        "agnostic": pb.InferParameter(bool_param=True)},
        )
        with grpc.insecure_channel(server.grpc_target) as channel:
            answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=120)
    _assert_same(*_grpc_first_image(answer),
                 direct(detector, decode(bus), confidence=0.1, max_detections=50, agnostic=True),
                 f"torch-free {engine} gRPC")


def test_without_torch_and_without_an_export_it_refuses_with_the_reason(tiny_weights, tmp_path):
    weights = tmp_path / tiny_weights.name
    shutil.copy(tiny_weights, weights)
    done = subprocess.run(
        [*NO_TORCH, "--weights", str(weights), "--engine", ENGINES[0], "--device", "cpu",
         "--engine_cache", str(tmp_path / "empty"), "--http_port", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**SERVER_ENV, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path),
             "TMPDIR": str(tmp_path)},
    )
    assert done.returncode != 0
    assert "no exported model" in done.stderr and "predictor.runtimes.export" in done.stderr, done.stderr[-2000:]


def test_the_cpu_image_runtime_serves_with_no_torch_installed(tiny_weights, detector, images, tmp_path):
    """The CPU image's runtime stage reproduced: a venv with only the predictor-cpu extra (built once,
    cached in ~/.cache/yolo-v7/torchfree-venv), the entry command with the image's defaults (engine auto,
    device auto) and a build-time export: it serves on ONNX Runtime, no torch library is mapped, and its
    answer for bus.jpg is the torch Detector's (at 640, the image's native size)."""
    from tests.bench import torchfree_bench as bench

    try:
        python = bench.ensure_venv()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"the torch-free venv cannot be built here (pip offline?): {error}")
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0
    weights = bench.export_model(tiny_weights, tmp_path / "weights")
    served = bench.cold_start(python, weights, images["bus"])
    assert served["engine"] == "onnxruntime" and served["torch_loaded"] is False, served
    from predictor.engine import Detector
    from predictor.settings import DetectParams

    native = Detector.from_weights(tiny_weights, device="cpu")
    [expected] = native.detect([decode(images["bus"])], DetectParams())  # the server's defaults
    assert served["detections"] == len(expected) > 0, served
