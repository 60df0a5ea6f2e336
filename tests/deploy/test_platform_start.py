"""The image's entry command started exactly as each platform starts it, answering a v2 request.

No arguments; the platform's environment only (``PORT`` for Cloud Run and Knative, nothing for Fargate and an
app store); its UID (the image's 1001, or an arbitrary one in group 0 for OpenShift); everything but ``/tmp``
read-only to it. See tests/tools/container_run.py for how that is reproduced without a container engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from predictor import wire
from tests.deploy.conftest import PLATFORMS, load
from tests.tools.container_run import DEFAULT_PORT, REPO_ROOT, request, run_image, v2_infer


@pytest.fixture(scope="module")
def tiny(yolo_fixtures: Path) -> Path:
    return yolo_fixtures / "yolov7-tiny-random.pt"


@pytest.fixture(scope="module")
def bus(yolo_fixtures: Path) -> bytes:
    return (yolo_fixtures / "images" / "bus.jpg").read_bytes()


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_starts_with_no_arguments_and_answers_v2(platform, tiny, bus, tmp_path):
    make_env, uid = PLATFORMS[platform]
    platform_env = make_env()
    with run_image(platform_env=platform_env, uid=uid, weights=tiny, workdir=tmp_path / platform) as image:
        result = image.client([v2_infer(bus), request("GET", "/v2/models/yolov7"), request("GET", "/model-card")])
        assert result.ready_at is not None, image.log_text()[-3000:]
        infer, metadata, card = result.answers

        assert infer.status == 200, infer.body[:500]
        outputs = {o["name"]: o for o in infer.json()["outputs"]}
        assert list(outputs) == [name for name, _, _ in wire.V2_OUTPUTS]
        [count] = outputs["num_detections"]["data"]
        assert outputs["detection_boxes"]["shape"] == [1, count, 4]

        assert metadata.status == 200 and metadata.json()["parameters"]["model_card"] == "/model-card"
        assert card.status == 200 and card.content_type.startswith("text/markdown")
        assert card.body == (REPO_ROOT / "MODEL_CARD.md").read_bytes()

        log = image.log_text()
        baked = image.env["YOLO_BAKED_WEIGHTS"]
        assert f"weights {baked} (baked weights from YOLO_BAKED_WEIGHTS; no /mnt/models)" in log
        if image.isolated:  # the platform's own port: $PORT where it sets one, else 8080
            port_source = "$PORT" if "PORT" in platform_env else "default"
            expected_port = int(platform_env.get("PORT", DEFAULT_PORT))
            assert image.port == expected_port
            assert f"REST port {expected_port} ({port_source}), gRPC port 8081" in log
            assert image.grpc_ready(8081) == "ready"  # gRPC on its own port, where the platform allows two
        assert image.process.poll() is None
    # read-only everywhere but /tmp: nothing was (or could be) written to HOME or the working directory
    assert list((tmp_path / platform / "home").iterdir()) == []
    assert list((tmp_path / platform / "workdir").iterdir()) == []


def test_fargate_health_check_command_passes_inside_the_task(tiny, tmp_path):
    """The task definition's container health check, run in the container's network namespace."""
    [container] = load("fargate/task-definition.json")["containerDefinitions"]
    kind, *command = container["healthCheck"]["command"]
    assert kind == "CMD"
    make_env, uid = PLATFORMS["fargate"]
    with run_image(platform_env=make_env(), uid=uid, weights=tiny, workdir=tmp_path / "fargate") as image:
        before = image.in_namespace(command, env=image.env, timeout=60)
        assert before.returncode != 0  # not ready yet (still importing torch): unhealthy, not a false pass
        assert image.client([]).ready_at is not None
        after = image.in_namespace(command, env=image.env, timeout=60)
        assert after.returncode == 0, after.stderr.decode(errors="replace")


def test_explicit_weights_win_over_the_baked_ones(tiny, tmp_path):
    """What the operator relies on: weights it names (flag or YOLO_WEIGHTS) are used, not the baked ones."""
    make_env, uid = PLATFORMS["app-store"]
    with run_image(platform_env={**make_env(), "YOLO_WEIGHTS": str(tiny)}, uid=uid, weights=tiny,
                   workdir=tmp_path / "kserve") as image:
        assert image.client([]).ready_at is not None
        assert f"weights {tiny} (--weights or YOLO_WEIGHTS)" in image.log_text()
