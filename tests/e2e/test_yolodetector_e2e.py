"""End to end on one machine: ``kubectl apply`` a YoloDetector → a real v2 inference answer → patch → delete.

A real kube-apiserver (+ etcd, + kube-controller-manager for garbage collection) with KServe's real
InferenceService CRD, the real operator (``python -m yolo_operator``), and ``LocalKubelet``
(tests/tools/fake_kubelet.py) standing in for the node and KServe's controller: it runs the predictor
container of the InferenceService the operator wrote as a local process (``python -m predictor`` with the
operator's args), with the random-weight yolov7-tiny fixture checkpoint as "the downloaded weights".
See docs/e2e.md.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from predictor.settings import parse_args
from tests.tools.fake_kubelet import LocalKubelet, PathMap, container_argv

ROOT = Path(__file__).resolve().parents[2]
MODEL_MOUNT = "/mnt/models"  # where KServe's storage initializer puts a storageUri's content
EXAMPLE = ROOT / "examples" / "yolodetector.yaml"
VARIANT = "yolov7-tiny"  # the example may name a bigger release; its random-weight fixture is what we have
NEW_CONFIDENCE = 0.4
PROPAGATION = 30.0  # seconds for the operator / garbage collector / LocalKubelet to react to a change


def _detector_condition(obj: dict | None, kind: str) -> dict:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def _infer(url: str, model: str, image: bytes) -> dict[str, np.ndarray]:
    body = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode()]}]}
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=120)
    assert response.status_code == 200, response.text
    out = {}
    for output in response.json()["outputs"]:
        dtype = object if output["datatype"] == "BYTES" else None
        out[output["name"]] = np.asarray(output["data"], dtype=dtype).reshape(output["shape"])
    return out


def _assert_same(served: dict[str, np.ndarray], expected, context: str) -> None:
    count = int(served["num_detections"][0])
    assert len(expected) > 0, f"{context}: the reference found nothing; the comparison would be vacuous"
    assert count == len(expected), f"{context}: {count} detections served, {len(expected)} from Detector"
    np.testing.assert_array_equal(served["detection_classes"][0][:count], expected.classes, err_msg=context)
    np.testing.assert_allclose(served["detection_scores"][0][:count], expected.scores, atol=2e-4, err_msg=context)
    np.testing.assert_allclose(served["detection_boxes"][0][:count], expected.boxes, atol=0.05, err_msg=context)


@contextlib.contextmanager
def _logs_on_failure(operator, kubelet):
    try:
        yield
    except BaseException:
        print(f"\n===== operator log (tail) =====\n{operator.log_tail(150)}")
        print(f"\n===== LocalKubelet =====\n{kubelet.logs(80)}")
        raise


# ----- what LocalKubelet rewrites (no cluster) -------------------------------------------------------------
def test_local_kubelet_rewrites_only_python_ports_and_mapped_paths():
    from yolo_operator.config import OperatorConfig
    from yolo_operator.manifests import predictor_container

    baked = predictor_container("cams", {"variant": VARIANT, "version": "v0.1"},
                                OperatorConfig(baked_variants=(VARIANT,)))
    paths = PathMap({"/opt/yolo-v7": "/node/image/opt/yolo-v7", "/mnt/models": "/pod/mnt-models",
                     "/tmp": "/pod/volumes/tmp"})
    ports = {"--http_port": 40001, "--grpc_port": 40002}
    argv = container_argv(baked, "/venv/bin/python", paths, ports)
    written = baked["command"] + baked["args"]
    assert argv[0] == "/venv/bin/python" and written[0] == "python"
    changed = {w: r for w, r in zip(written, argv, strict=True) if w != r}
    assert changed == {"python": "/venv/bin/python", "--http_port=8080": "--http_port=40001",
                       "--grpc_port=8081": "--grpc_port=40002",
                       f"--weights=/opt/yolo-v7/weights/{VARIANT}.pt":
                           f"--weights=/node/image/opt/yolo-v7/weights/{VARIANT}.pt"}
    # whole path components only; the two-token flag form; env-style values
    assert PathMap({"/tmp": "/x"}).value("/tmpfoo/a") == "/tmpfoo/a"
    assert paths.value("/tmp/torchinductor") == "/pod/volumes/tmp/torchinductor"
    assert container_argv({"command": ["python3", "-m", "predictor"], "args": ["--http_port", "8080", "--weights",
                                                                                "/mnt/models"]},
                          "py", paths, ports) == ["py", "-m", "predictor", "--http_port", "40001", "--weights",
                                                  "/pod/mnt-models"]


# ----- the whole way ---------------------------------------------------------------------------------------
@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_apply_infer_patch_delete(yolo_fixtures, kube, namespace, tmp_path):
    from tests.cluster.helpers import Api, Operator, install_crd, wait_for
    from tests.platform import kserve
    from tests.platform.controller import KServeController
    from tests.platform.webhook import KServeWebhooks

    checkpoint = yolo_fixtures / "yolov7-tiny-random.pt"
    image_path = yolo_fixtures / "images" / "bus.jpg"
    for needed in (checkpoint, image_path):
        if not needed.is_file():
            pytest.skip(f"fixture {needed} missing (set YOLO_FIXTURES to the shared fixtures dir)")
    install_crd(kube)
    api = Api(kube.api_client())

    doc = yaml.safe_load(EXAMPLE.read_text())
    name = doc["metadata"]["name"]
    doc["spec"]["variant"] = VARIANT  # YAML edit: the example may name a release we have no fixture for
    doc["spec"]["engine"] = "torch"  # answers are compared with the in-process torch Detector (exact order)
    manifest = tmp_path / "yolodetector.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    image = image_path.read_bytes()

    def detector() -> dict:
        return api.detector(namespace, name)

    def ready_at(url: str):
        d = detector()
        return d if _detector_condition(d, "Ready").get("status") == "True" and d["status"].get("url") == url else None

    timings: dict[str, float] = {}
    operator = Operator(kube.kubeconfig, [namespace], log_path=tmp_path / "operator.log", resync_seconds=300)
    # KServe 0.20 stand-ins: its webhooks (called by the API server) and its controller, which makes the
    # Deployment in the API server; the predictor runs from that Deployment's pod template
    profile = next(p for p in kserve.PROFILES if p.name == "kserve-0.20")
    hooks = KServeWebhooks(kube.api_client(), profile, namespace)
    controller = KServeController(kube.api_client(), profile, namespace, report_status=False)
    kubelet = LocalKubelet(kube.api_client(), namespace, checkpoint=checkpoint, workdir=tmp_path / "node",
                           pod_spec=controller.pod_spec)
    with hooks, controller, operator, kubelet, _logs_on_failure(operator, kubelet):
        # 1. kubectl apply → the operator writes the InferenceService
        t0 = time.monotonic()
        kube.kubectl("-n", namespace, "apply", "-f", str(manifest))
        isvc = wait_for(lambda: api.isvc(namespace, name), timeout=PROPAGATION, what="the InferenceService")
        timings["apply → InferenceService"] = time.monotonic() - t0
        box = isvc["spec"]["predictor"]["containers"][0]
        settings = parse_args(box["args"])
        assert settings.variant == VARIANT and settings.device == "cpu"

        # 2. LocalKubelet runs the container of the Deployment KServe's controller made (admitted by the API
        # server: requests within limits, ...) as written: only python, ports and mounted paths differ
        pod = kubelet.wait_ready(name)
        template = controller.pod_spec(api.isvc(namespace, name))
        assert template["containers"][0]["args"] == box["args"]
        assert {e["name"] for e in template["containers"][0]["env"]} >= {"INFERENCE_SERVICE_NAME", "STORAGE_URI"}
        timings["InferenceService → predictor ready"] = time.monotonic() - t0 - timings["apply → InferenceService"]
        written = box["command"] + box["args"]
        assert len(pod.argv) == len(written)
        for was, run in zip(written, pod.argv, strict=True):
            if was == run:
                continue
            if was == "python":
                assert run == sys.executable
            elif was.startswith("--http_port="):
                assert run == f"--http_port={pod.http_port}"
            elif was.startswith("--grpc_port="):
                assert run == f"--grpc_port={pod.grpc_port}"
            else:  # KServe's /mnt/models (storageUri's download): a pod directory holding the checkpoint
                flag, _, path = was.partition("=")
                assert path == MODEL_MOUNT or path.startswith(MODEL_MOUNT + "/"), (was, run)
                assert run == f"{flag}={pod.dir}/mnt-models{path[len(MODEL_MOUNT):]}", (was, run)
                assert Path(run.partition("=")[2]).resolve() == checkpoint.resolve()
        assert {e["name"]: e["value"] for e in box["env"]}["STORAGE_URI"].endswith(f"/{VARIANT}.pt")

        # 3. the YoloDetector reports Ready with the URL KServe's status gave
        t1 = time.monotonic()
        wait_for(lambda: ready_at(pod.url), timeout=PROPAGATION, what="YoloDetector Ready with the URL")
        timings["predictor ready → YoloDetector Ready"] = time.monotonic() - t1
        timings["apply → YoloDetector Ready"] = time.monotonic() - t0
        table = kube.kubectl("-n", namespace, "get", "yd", name).stdout
        assert pod.url in table and "True" in table, table

        # 4. a real v2 inference answer equals the Detector's own, at the served thresholds
        from predictor.engine import Detector
        from predictor.images import decode_image
        from predictor.settings import DetectParams

        reference = Detector.from_weights(checkpoint, device="cpu", input_size=settings.input_size or None)
        rgb = decode_image(image, settings.max_image_pixels)

        def expected(conf: float):
            [found] = reference.detect([rgb], DetectParams(confidence=conf, iou=settings.iou_threshold,
                                                           max_detections=settings.max_detections))
            return found

        t2 = time.monotonic()
        first = _infer(detector()["status"]["url"], name, image)
        timings["first v2 infer (bus.jpg)"] = time.monotonic() - t2
        _assert_same(first, expected(settings.conf_threshold), f"conf {settings.conf_threshold}")

        # 5. kubectl patch the threshold → new args → LocalKubelet restarts the predictor (rollout)
        t3 = time.monotonic()
        kube.kubectl("-n", namespace, "patch", "yd", name, "--type=merge",
                     "-p", json.dumps({"spec": {"thresholds": {"confidence": NEW_CONFIDENCE}}}))
        wait_for(lambda: (lambda i: i and parse_args(i["spec"]["predictor"]["containers"][0]["args"])
                          .conf_threshold == NEW_CONFIDENCE)(api.isvc(namespace, name)),
                 timeout=PROPAGATION, what=f"InferenceService args with confidence {NEW_CONFIDENCE}")
        second = kubelet.wait_ready(name, not_pid=pod.pid)
        assert not pod.alive(), "the old predictor still runs after the rollout"
        assert second.argv.count(f"--conf_threshold={NEW_CONFIDENCE}") == 1
        wait_for(lambda: ready_at(second.url), timeout=PROPAGATION, what="YoloDetector Ready after the rollout")
        timings["patch → YoloDetector Ready again"] = time.monotonic() - t3
        url = detector()["status"]["url"]
        metadata = httpx.get(f"{url}/v2/models/{name}", timeout=30).json()
        assert metadata["parameters"]["confidence"] == NEW_CONFIDENCE, metadata
        served = _infer(url, name, image)
        _assert_same(served, expected(NEW_CONFIDENCE), f"conf {NEW_CONFIDENCE}")
        assert int(served["num_detections"][0]) < int(first["num_detections"][0])

        # 6. delete → the garbage collector takes the InferenceService → LocalKubelet stops the process
        t4 = time.monotonic()
        kube.kubectl("-n", namespace, "delete", "yd", name, "--timeout=60s")
        wait_for(lambda: api.isvc(namespace, name) is None, timeout=60, what="garbage collection of the isvc")
        timings["delete → InferenceService gone"] = time.monotonic() - t4
        kubelet.wait(lambda: name not in kubelet.pods and not second.alive(), PROPAGATION, "the predictor stopped")
        timings["delete → predictor stopped"] = time.monotonic() - t4
        assert second.proc.returncode is not None

        assert "Traceback" not in operator.log_text(), operator.log_tail(120)
    print("\ne2e timings (s): " + json.dumps({k: round(v, 1) for k, v in timings.items()}, ensure_ascii=False))
