"""deploy/fargate/task-definition.json, validated offline by botocore's own ECS model and parameter validator
(the ``RegisterTaskDefinition`` input shape: what ``aws ecs register-task-definition`` checks before sending),
plus the Fargate rules that model does not encode, from the Amazon ECS developer guide ("Task definition
parameters for Fargate": task CPU/memory pairs, ``awsvpc``; ``HealthCheck`` bounds in the API reference)."""

from __future__ import annotations

import copy

import pytest

from tests.deploy.conftest import load
from tests.unit.test_dockerfile import healthcheck_command

botocore_session = pytest.importorskip("botocore.session", reason="botocore is in the [dev] extra")
from botocore.validate import ParamValidator  # noqa: E402

# Fargate's task-level CPU units → allowed memory (MiB), Linux.
FARGATE_SIZES = {
    "256": [512, 1024, 2048],
    "512": list(range(1024, 4097, 1024)),
    "1024": list(range(2048, 8193, 1024)),
    "2048": list(range(4096, 16385, 1024)),
    "4096": list(range(8192, 30721, 1024)),
    "8192": list(range(16384, 61441, 4096)),
    "16384": list(range(32768, 122881, 8192)),
}
HEALTH_BOUNDS = {"interval": (5, 300), "timeout": (2, 60), "retries": (1, 10), "startPeriod": (0, 300)}


def task() -> dict:
    return load("fargate/task-definition.json")


def botocore_problems(definition: dict) -> str:
    model = botocore_session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate(definition, shape)
    return report.generate_report() if report.has_errors() else ""


def test_botocore_validates_the_task_definition():
    assert botocore_problems(task()) == ""


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda t: t["containerDefinitions"][0]["healthCheck"].update(interval="30"), "healthCheck.interval"),
    (lambda t: t["containerDefinitions"][0].update(portMapping=[]), "Unknown parameter"),
    (lambda t: t.pop("containerDefinitions"), "Missing required parameter"),
])
def test_botocore_validator_is_not_vacuous(change, fragment):
    broken = copy.deepcopy(task())
    change(broken)
    assert fragment in botocore_problems(broken)


def test_fargate_rules():
    t = task()
    assert t["requiresCompatibilities"] == ["FARGATE"] and t["networkMode"] == "awsvpc"
    assert int(t["memory"]) in FARGATE_SIZES[t["cpu"]]
    [container] = t["containerDefinitions"]
    for key, (low, high) in HEALTH_BOUNDS.items():
        assert low <= container["healthCheck"][key] <= high, key
    assert container["readonlyRootFilesystem"] is True
    assert {m["containerPath"] for m in container["mountPoints"]} == {"/tmp"}  # the one writable path
    assert {v["name"] for v in t["volumes"]} == {m["sourceVolume"] for m in container["mountPoints"]}


def test_runs_the_image_defaults_on_8080():
    """Fargate sets no PORT: the ports must be the image's defaults (REST, then gRPC), and nothing overrides them."""
    from predictor.settings import GRPC_PORT, HTTP_PORT

    [container] = task()["containerDefinitions"]
    assert "command" not in container and "entryPoint" not in container
    ports = {p["appProtocol"]: p["containerPort"] for p in container["portMappings"]}
    assert ports == {"http": HTTP_PORT, "grpc": GRPC_PORT}
    assert "PORT" not in {e["name"] for e in container.get("environment", [])}
    assert container["image"].endswith("/yolo-v7:1.0.0-cpu")


def test_health_check_is_the_images():
    """The same command as the Dockerfile's HEALTHCHECK (run against a live task in test_platform_start)."""
    from tests.tools.dockerfile import Dockerfile
    from tests.unit.test_dockerfile import DOCKERFILE

    [container] = task()["containerDefinitions"]
    assert container["healthCheck"]["command"] == ["CMD", *healthcheck_command(Dockerfile.read(DOCKERFILE))]
