"""deploy/openshift-serverless/service.yaml: a standalone Knative Service that stock Knative admits and that
OpenShift's restricted-v2 SCC admits (arbitrary UID, nothing added)."""

from __future__ import annotations

import copy

from tests.deploy.conftest import knative, load
from tests.tools.restricted import restricted_v2_problems


def service() -> dict:
    return load("openshift-serverless/service.yaml")


def test_stock_knative_admits_it():
    assert knative().check_service(service()) == []


def test_the_check_is_not_vacuous():
    """Two ports (gRPC beside REST) or a hostPath are what stock Knative refuses; the check must say so."""
    two_ports = copy.deepcopy(service())
    two_ports["spec"]["template"]["spec"]["containers"][0]["ports"].append({"name": "h2c", "containerPort": 8081})
    assert knative().check_service(two_ports)
    host_path = copy.deepcopy(service())
    host_path["spec"]["template"]["spec"]["volumes"] = [{"name": "tmp", "hostPath": {"path": "/tmp"}}]
    assert knative().check_service(host_path)


def test_restricted_v2_admits_its_pod():
    pod = service()["spec"]["template"]["spec"]
    assert restricted_v2_problems(pod, read_only_root=True) == []


def test_runs_the_image_defaults():
    """No command/args/PORT: Knative sets PORT to the one containerPort; the image does the rest."""
    [container] = service()["spec"]["template"]["spec"]["containers"]
    assert "command" not in container and "args" not in container
    assert "PORT" not in {e["name"] for e in container.get("env", [])}
    assert container["image"].rsplit(":", 1)[1] == "1.0.0-cpu"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp"}  # the only writable path the predictor needs
