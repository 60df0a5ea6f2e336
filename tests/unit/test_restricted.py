"""tests/tools/restricted.py catches what restricted-v2 rejects, and the operator's InferenceService passes it."""

from __future__ import annotations

import copy

import pytest

from tests.tools.restricted import assert_restricted_v2, pod_specs, restricted_v2_problems

GOOD = {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [
        {
            "name": "app",
            "image": "x",
            "ports": [{"containerPort": 8080}],
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }
    ],
    "volumes": [{"name": "tmp", "emptyDir": {}}],
}


def test_good_spec_passes():
    assert restricted_v2_problems(GOOD) == []
    assert_restricted_v2(GOOD)


def _set(path: str, value):
    spec = copy.deepcopy(GOOD)
    node = spec
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    last = keys[-1]
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return spec


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        ("hostNetwork", True, "hostNetwork"),
        ("hostPID", True, "hostPID"),
        ("securityContext.runAsUser", 1000, "runAsUser"),
        ("securityContext.runAsGroup", 0, "runAsGroup"),
        ("securityContext.fsGroup", 1000, "fsGroup"),
        ("securityContext.seLinuxOptions", {"level": "s0:c1"}, "seLinuxOptions"),
        ("securityContext.runAsNonRoot", _DELETE, "runAsNonRoot"),
        ("securityContext.seccompProfile", _DELETE, "seccompProfile"),
        ("securityContext.seccompProfile", {"type": "Unconfined"}, "seccompProfile"),
        ("containers.0.securityContext.privileged", True, "privileged"),
        ("containers.0.securityContext.runAsUser", 0, "runAsUser"),
        ("containers.0.securityContext.allowPrivilegeEscalation", _DELETE, "allowPrivilegeEscalation"),
        ("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}, "drop must contain ALL"),
        ("containers.0.securityContext.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}, "SYS_ADMIN"),
        ("containers.0.securityContext.readOnlyRootFilesystem", False, "readOnlyRootFilesystem"),
        ("containers.0.ports", [{"containerPort": 80}], "< 1024"),
        ("containers.0.ports", [{"containerPort": 8080, "hostPort": 8080}], "hostPort"),
        ("volumes", [{"name": "h", "hostPath": {"path": "/"}}], "hostPath"),
    ],
)
def test_each_violation_is_reported(path, value, needle):
    spec = _set(path, value)
    problems = restricted_v2_problems(spec)
    assert any(needle in problem for problem in problems), problems
    with pytest.raises(AssertionError, match="restricted-v2"):
        assert_restricted_v2(spec)


def test_container_level_settings_may_replace_pod_level_ones():
    spec = _set("securityContext", {})
    spec["containers"][0]["securityContext"].update(runAsNonRoot=True, seccompProfile={"type": "RuntimeDefault"})
    assert restricted_v2_problems(spec) == []


def test_init_containers_are_checked_too():
    spec = copy.deepcopy(GOOD)
    spec["initContainers"] = [{"name": "init", "image": "x"}]
    assert any("initContainers[init]" in p for p in restricted_v2_problems(spec))


# ----- the operator's InferenceService -------------------------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"variant": "yolov7-tiny", "resources": {"gpu": 1}},
        {"storageUri": "s3://bucket/custom.pt", "deploymentMode": "Serverless"},
        {"variant": "yolov7x", "version": "v0.1", "nodeSelector": {"gpu": "a100"}, "serviceAccountName": "sa"},
    ],
)
def test_operator_inference_service_pod_is_restricted_v2(spec):
    from yolo_operator.config import OperatorConfig
    from yolo_operator.manifests import build_inference_service

    isvc = build_inference_service("det", "ns", spec, OperatorConfig())
    found = pod_specs(isvc)
    assert [name for name, _ in found] == ["InferenceService/det predictor"]
    for _, pod_spec in found:
        assert_restricted_v2(pod_spec)
