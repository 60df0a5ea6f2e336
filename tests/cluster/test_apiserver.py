"""Smoke tests of the cluster harness itself: the API server, KServe's CRD, GC, RBAC."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.cluster

ISVC_API = ("serving.kserve.io", "v1beta1", "inferenceservices")


def _isvc(name: str, predictor: dict) -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"predictor": predictor},
    }


def _minimal_predictor() -> dict:
    return {"containers": [{"name": "kserve-container", "image": "yolo-v7:1.0.0",
                            "args": ["--model_name=yolov7"]}]}


def test_apiserver_ready_and_version(kube):
    proc = kube.kubectl("get", "--raw", "/readyz")
    assert proc.stdout.strip() == "ok"
    version = json.loads(kube.kubectl("get", "--raw", "/version").stdout)
    if kube.local:
        assert version["gitVersion"] == "v1.20.2"
    assert version["major"] == "1"


def test_kserve_crd_established(kube):
    from kubernetes import client

    with kube.api_client() as api:
        crd = client.ApiextensionsV1Api(api).read_custom_resource_definition("inferenceservices.serving.kserve.io")
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions.get("Established") == "True"
    assert any(v.name == "v1beta1" and v.served for v in crd.spec.versions)


def test_inferenceservice_schema_enforced(kube, namespace):
    """KServe's real schema: an unknown field under spec.predictor is rejected, a minimal ISVC accepted.

    v1.20 has no server-side field validation (1.25+): the rejection comes from kubectl's validation
    against the server's published OpenAPI, which includes the CRD's schema. A client that skips
    validation (the Python client) gets unknown fields pruned silently instead, as asserted below.
    """
    from kubernetes import client

    bad = _isvc("bad", {**_minimal_predictor(), "notAField": {"x": 1}})
    proc = kube.kubectl("create", "-n", namespace, "--validate=true", "-f", "-", input=json.dumps(bad),
                        check=False)
    assert proc.returncode != 0, proc.stdout
    assert "notAField" in proc.stderr and "unknown field" in proc.stderr, proc.stderr
    bad_type = _isvc("badtype", {"containers": "not-a-list"})
    proc = kube.kubectl("create", "-n", namespace, "--validate=false", "-f", "-", input=json.dumps(bad_type),
                        check=False)
    assert proc.returncode != 0 and "containers" in proc.stderr, (proc.stdout, proc.stderr)

    kube.kubectl("create", "-n", namespace, "--validate=true", "-f", "-", input=json.dumps(_isvc("ok", _minimal_predictor())))
    group, version, plural = ISVC_API
    with kube.api_client() as api:
        custom = client.CustomObjectsApi(api)
        got = custom.get_namespaced_custom_object(group, version, namespace, plural, "ok")
        assert got["spec"]["predictor"]["containers"][0]["image"] == "yolo-v7:1.0.0"
        pruned = custom.create_namespaced_custom_object(group, version, namespace, plural,
                                                        _isvc("pruned", {**_minimal_predictor(), "zzz": 1}))
        assert "zzz" not in pruned["spec"]["predictor"]


def test_owner_reference_garbage_collection(kube, namespace):
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    with kube.api_client() as api:
        core = client.CoreV1Api(api)
        owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}, "data": {"a": "1"}})
        core.create_namespaced_config_map(namespace, {
            "metadata": {"name": "child", "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}]},
            "data": {"b": "2"},
        })
        core.delete_namespaced_config_map("owner", namespace)
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            try:
                core.read_namespaced_config_map("child", namespace)
            except ApiException as exc:
                assert exc.status == 404
                return
            time.sleep(0.5)
        pytest.fail("the garbage collector did not delete the owned ConfigMap within 45 s")


def test_rbac_enforced(kube, namespace):
    sa = f"system:serviceaccount:{namespace}:nobody"
    proc = kube.kubectl("auth", "can-i", "create", "configmaps", "-n", namespace, "--as", sa, check=False)
    assert proc.stdout.strip() == "no", (proc.stdout, proc.stderr)
    proc = kube.kubectl("auth", "can-i", "create", "configmaps", "-n", namespace, check=False)
    assert proc.stdout.strip() == "yes", (proc.stdout, proc.stderr)
    denied = kube.kubectl("get", "configmaps", "-n", namespace, "--as", sa, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()


def test_restart_apiserver(kube, namespace):
    kube.kubectl("create", "configmap", "survivor", "-n", namespace, "--from-literal=k=v")
    t0 = time.monotonic()
    kube.restart_apiserver()
    assert time.monotonic() - t0 < 60
    got = kube.kubectl("get", "configmap", "survivor", "-n", namespace, "-o", "jsonpath={.data.k}")
    assert got.stdout == "v"
