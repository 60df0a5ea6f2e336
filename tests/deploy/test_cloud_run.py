"""deploy/cloud-run/service*.yaml: Knative-style services within Cloud Run's own rules.

Cloud Run's rules, from its documentation (cloud.google.com/run/docs: "Container runtime contract",
"Configure container health checks", "GPU support"; the service YAML reference) and its Admin API v2 ``Probe``
reference (googleapis ``run:v2`` ``GoogleCloudRunV2Probe``): one container port, named ``http1`` or ``h2c``;
``PORT``, ``K_SERVICE``, ``K_REVISION`` and ``K_CONFIGURATION`` are reserved ("the environment variables defined
in the container runtime contract are reserved and cannot be set", Configure environment variables); a startup
probe's ``initialDelaySeconds`` and ``periodSeconds`` are at most 240, ``periodSeconds`` at least
``timeoutSeconds`` (the Probe reference), and ``failureThreshold × periodSeconds`` at most 240 s (Configure
container health checks); a GPU service has ``nvidia.com/gpu: 1``, the ``run.googleapis.com/accelerator`` node
selector, at least 4 CPUs and 16 GiB, and CPU always allocated (``run.googleapis.com/cpu-throttling: "false"``).
"""

from __future__ import annotations

import pytest

from tests.deploy.conftest import knative, load

FILES = ("cloud-run/service.yaml", "cloud-run/service-gpu.yaml")
RESERVED_ENV = {"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"}
GIB = 1024**3



def _memory(text: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    return int(text[:-2]) * units[text[-2:]] if text[-2:] in units else int(text)


def cloud_run_problems(service: dict) -> list[str]:
    problems = []
    template = service["spec"]["template"]
    spec = template["spec"]
    containers = spec["containers"]
    if len(containers) != 1:
        return ["one (ingress) container expected"]
    [container] = containers
    ports = container.get("ports", [])
    if len(ports) != 1 or ports[0].get("name", "http1") not in ("http1", "h2c"):
        problems.append(f"one port named http1 or h2c expected, got {ports}")
    reserved = RESERVED_ENV & {e["name"] for e in container.get("env", [])}
    if reserved:
        problems.append(f"reserved env set: {sorted(reserved)}")
    probe = container.get("startupProbe", {})
    period, failures = probe.get("periodSeconds", 10), probe.get("failureThreshold", 3)
    if period > 240 or probe.get("timeoutSeconds", 1) > period or probe.get("initialDelaySeconds", 0) > 240:
        problems.append("startupProbe periodSeconds and initialDelaySeconds <= 240, timeoutSeconds <= periodSeconds")
    if failures * period > 240:
        problems.append("startupProbe failureThreshold x periodSeconds over 240 s")
    for kind in ("startupProbe", "livenessProbe"):
        port = container.get(kind, {}).get("httpGet", {}).get("port")
        if port is not None and ports and port != ports[0]["containerPort"]:
            problems.append(f"{kind} port {port} is not the container port")
    limits = container.get("resources", {}).get("limits", {})
    if "nvidia.com/gpu" in limits:
        annotations = template["metadata"].get("annotations", {})
        if limits["nvidia.com/gpu"] != "1" or "run.googleapis.com/accelerator" not in spec.get("nodeSelector", {}):
            problems.append("GPU: nvidia.com/gpu 1 and the run.googleapis.com/accelerator node selector")
        if float(limits["cpu"]) < 4 or _memory(limits["memory"]) < 16 * GIB:
            problems.append("GPU: at least 4 CPUs and 16 GiB")
        if annotations.get("run.googleapis.com/cpu-throttling") != "false":
            problems.append("GPU: CPU must always be allocated")
    return problems


@pytest.mark.parametrize("path", FILES)
def test_cloud_run_rules(path):
    assert cloud_run_problems(load(path)) == []


def test_cloud_run_rules_catch_a_reserved_port_variable():
    service = load(FILES[0])
    service["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "PORT", "value": "8080"}]
    assert cloud_run_problems(service) == ["reserved env set: ['PORT']"]


@pytest.mark.parametrize(("probe", "problem"), [
    ({"periodSeconds": 241, "timeoutSeconds": 1, "failureThreshold": 1}, "periodSeconds and initialDelaySeconds"),
    ({"periodSeconds": 10, "timeoutSeconds": 11, "failureThreshold": 1}, "timeoutSeconds <= periodSeconds"),
    ({"initialDelaySeconds": 241, "periodSeconds": 10, "failureThreshold": 1}, "initialDelaySeconds <= 240"),
    ({"periodSeconds": 10, "failureThreshold": 25}, "failureThreshold x periodSeconds over 240 s"),
])
def test_cloud_run_rules_catch_a_startup_probe_it_refuses(probe, problem):
    service = load(FILES[0])
    service["spec"]["template"]["spec"]["containers"][0]["startupProbe"] = {"tcpSocket": {"port": 8080}, **probe}
    assert any(problem in found for found in cloud_run_problems(service)), cloud_run_problems(service)


@pytest.mark.parametrize("path", FILES)
def test_knative_admits_it(path):
    """Knative's own validation; Cloud Run enables the node selector its GPU services use."""
    features = knative().features_with({"kubernetes.podspec-nodeselector": "enabled"}) if "gpu" in path else None
    assert knative().check_service(load(path), features) == []


@pytest.mark.parametrize(("path", "tag"), [(FILES[0], "1.0.0-cpu"), (FILES[1], "1.0.0")])
def test_runs_the_image_as_built(path, tag):
    """The CPU image (make build-cpu) for CPU, the CUDA one for the GPU; no command/args: the image's defaults."""
    [container] = load(path)["spec"]["template"]["spec"]["containers"]
    assert "command" not in container and "args" not in container
    repository, _, image_tag = container["image"].rpartition(":")
    assert repository.endswith("/yolo-v7") and image_tag == tag
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
