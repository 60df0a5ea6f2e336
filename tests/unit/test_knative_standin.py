"""The Knative admission stand-in (tests/platform/knative.py) refuses what Knative v1.23 refuses."""

from __future__ import annotations

import pytest

from tests.conftest import fixtures_root

pytestmark = pytest.mark.skipif(not (fixtures_root() / "knative" / "v1.23.0-src" / "features.yaml").is_file(),
                                reason="Knative fixtures (../shared/fixtures/knative) not found")


def _service(**pod: object) -> dict:
    container = {"name": "c", "image": "quay.io/x/y:1", "ports": [{"name": "http1", "containerPort": 8080}],
                 "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                     "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"template": {"spec": {"containers": [container], **pod}}}}


def test_stock_features_are_parsed_from_the_fixture():
    from tests.platform import knative

    stock = knative.STOCK_FEATURES
    assert stock["kubernetes.podspec-securitycontext"] == "disabled"
    assert stock["kubernetes.podspec-volumes-emptydir"] == "enabled"
    assert stock["multi-container"] == "enabled"
    assert sum(key.startswith("kubernetes.podspec-") for key in stock) >= 20


def test_a_plain_service_is_admitted():
    from tests.platform.knative import check_service

    assert check_service(_service()) == []


@pytest.mark.parametrize(("field", "value", "flag"), [
    ("securityContext", {"runAsNonRoot": True}, "kubernetes.podspec-securitycontext"),
    ("nodeSelector", {"a": "b"}, "kubernetes.podspec-nodeselector"),
    ("tolerations", [{"key": "k", "operator": "Exists"}], "kubernetes.podspec-tolerations"),
    ("affinity", {"nodeAffinity": {}}, "kubernetes.podspec-affinity"),
    ("priorityClassName", "high", "kubernetes.podspec-priorityclassname"),
    ("runtimeClassName", "nvidia", "kubernetes.podspec-runtimeclassname"),
])
def test_gated_pod_fields_need_their_flag(field, value, flag):
    from tests.platform.knative import check_service

    problems = check_service(_service(**{field: value}))
    assert len(problems) == 1 and flag in problems[0] and "fieldmask.go" in problems[0], problems
    assert check_service(_service(**{field: value}), {flag: "enabled"}) == []


def test_pod_fields_never_allowed_and_the_single_port_rule():
    from tests.platform.knative import check_service

    service = _service(restartPolicy="Always")
    service["spec"]["template"]["spec"]["containers"][0]["ports"].append({"name": "h2c", "containerPort": 8081})
    problems = check_service(service)
    assert any("restartPolicy" in p for p in problems)
    assert any("more than one container port" in p and "k8s_validation.go:535" in p for p in problems)


def test_startup_probe_needs_knative_1_15_and_port_names():
    from tests.platform.knative import check_service

    service = _service()
    container = service["spec"]["template"]["spec"]["containers"][0]
    container["startupProbe"] = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 5, "failureThreshold": 3}
    assert check_service(service) == []
    assert any("startupProbe" in p for p in check_service(service, minor=14))
    container["ports"][0]["name"] = "grpc"
    assert any("Port name grpc is not allowed" in p for p in check_service(service))
