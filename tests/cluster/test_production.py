"""Issue 16 on the real kube-apiserver: companions (PodDisruptionBudget, NetworkPolicy, PodMonitor) created, owned,
validated by the API server and garbage-collected with the detector; the PodMonitor only while the
monitoring.coreos.com API is served; queue-depth autoscaling only while KEDA's API is served, written through
KServe's own autoscaling fields (stored by KServe's real CRD schema); Normal events; the operator's /metrics.

The PodMonitor and ScaledObject CRDs are stand-ins (tests/platform/crds/), installed and removed by the tests.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.helpers import ROOT, Operator, condition, pretend_kserve_marks_ready, wait_for
from tests.tools.ports import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

CRDS = ROOT / "tests" / "platform" / "crds"
PODMONITORS, SCALEDOBJECTS = "podmonitors.monitoring.coreos.com", "scaledobjects.keda.sh"
RESYNC_SECONDS = 2


@pytest.fixture
def operator(kube, namespace, api, tmp_path):
    port = free_port()
    op = Operator(kube.kubeconfig, [namespace], log_path=tmp_path / "operator.log", resync_seconds=RESYNC_SECONDS,
                  env={"YOLO_OPERATOR_METRICS_PORT": str(port)})
    op.metrics_url = f"http://127.0.0.1:{port}/metrics"
    op.start()
    yield op
    op.stop()
    assert "Traceback" not in op.log_text(), op.log_tail(120)


def remove_crd(kube, name: str) -> None:
    kube.kubectl("delete", "crd", name, "--ignore-not-found", "--wait=true", check=False)


def get(kube, group: str, version: str, plural: str, namespace: str, name: str) -> dict | None:
    try:
        return client.CustomObjectsApi(kube.api_client()).get_namespaced_custom_object(
            group, version, namespace, plural, name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def owned_by(obj: dict, uid: str) -> bool:
    return any(ref["uid"] == uid and ref["kind"] == "YoloDetector" for ref in obj["metadata"]["ownerReferences"])


def test_companions_created_owned_validated_and_garbage_collected(kube, api, namespace, operator):
    remove_crd(kube, PODMONITORS)
    spec = {"replicas": {"min": 2, "max": 3}, "access": {"namespaces": ["checkout"], "podLabels": {"app": "web"}}}
    uid = api.create_detector(namespace, "prod", spec)["metadata"]["uid"]
    pdb_at = ("policy", "v1beta1", "poddisruptionbudgets", namespace, "prod-predictor")  # 1.20: no policy/v1
    netpol_at = ("networking.k8s.io", "v1", "networkpolicies", namespace, "prod-predictor")
    monitor_at = ("monitoring.coreos.com", "v1", "podmonitors", namespace, "prod-predictor")
    pdb = wait_for(lambda: get(kube, *pdb_at), timeout=30, what=f"PDB\n{operator.log_tail()}")
    netpol = wait_for(lambda: get(kube, *netpol_at), timeout=30, what="NetworkPolicy")
    assert owned_by(pdb, uid) and owned_by(netpol, uid)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["serving.kserve.io/inferenceservice"] == "prod"
    peers = netpol["spec"]["ingress"][0]["from"]
    assert peers[0] == {"podSelector": {"matchLabels": {"app": "web"}}}
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "checkout"}}} in peers
    # no monitoring.coreos.com: no PodMonitor, and no complaint either
    detector = wait_for(lambda: (lambda d: d if condition(d, "Valid").get("status") == "True" else None)(
        api.detector(namespace, "prod")), what="Valid")
    assert condition(detector, "Valid")["reason"] == "Valid"
    assert get(kube, *monitor_at) is None
    # idle resyncs rewrite nothing (the API server's defaults are not mistaken for drift)
    versions = [get(kube, *at)["metadata"]["resourceVersion"] for at in (pdb_at, netpol_at)]
    time.sleep(RESYNC_SECONDS * 2.5)
    assert [get(kube, *at)["metadata"]["resourceVersion"] for at in (pdb_at, netpol_at)] == versions
    try:
        kube.install_crd(CRDS / "podmonitors.yaml")  # the next resync makes one
        monitor = wait_for(lambda: get(kube, *monitor_at), timeout=30, what=f"PodMonitor\n{operator.log_tail()}")
        assert owned_by(monitor, uid)
        assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "http1", "path": "/metrics", "interval": "30s"}]
        # one replica: a PodDisruptionBudget could only block drains; it goes
        api.patch_detector(namespace, "prod", {"spec": {"replicas": {"min": 1}}})
        wait_for(lambda: get(kube, *pdb_at) is None, timeout=30, what="PDB deleted")
        # Normal events besides warnings
        core = client.CoreV1Api(kube.api_client())
        wait_for(lambda: api.isvc(namespace, "prod")["metadata"]["generation"] >= 2, what="InferenceService patched")
        pretend_kserve_marks_ready(api, namespace, "prod")
        wait_for(lambda: {"Created", "Updated", "Deleted", "RolloutComplete"} <= {
            e.reason for e in core.list_namespaced_event(
                namespace, field_selector="involvedObject.name=prod,type=Normal").items}, timeout=30, what="events")
        # deleting the detector: the garbage collector takes every companion with it
        api.delete_detector(namespace, "prod")
        wait_for(lambda: get(kube, *netpol_at) is None and get(kube, *monitor_at) is None, timeout=60,
                 what="companions garbage-collected")
    finally:
        remove_crd(kube, PODMONITORS)


def test_queue_depth_needs_keda_and_uses_kserves_autoscaling_api(kube, api, namespace, operator):
    remove_crd(kube, SCALEDOBJECTS)
    depth = {"target": 8, "serverAddress": "http://prometheus.monitoring:9090"}
    api.create_detector(namespace, "qd", {"replicas": {"min": 1, "max": 4}, "autoscaling": {"queueDepth": depth}})
    refused = wait_for(lambda: (lambda d: d if condition(d, "Valid").get("status") == "False" else None)(
        api.detector(namespace, "qd")), what="Valid=False without KEDA")
    assert "keda.sh" in condition(refused, "Valid")["message"]
    assert api.isvc(namespace, "qd") is None
    try:
        kube.install_crd(CRDS / "scaledobjects.yaml")
        isvc = wait_for(lambda: api.isvc(namespace, "qd"), timeout=30, what=f"InferenceService\n{operator.log_tail()}")
        # KServe's real CRD schema kept every field (an unknown one would have been pruned)
        assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
        (metric,) = isvc["spec"]["predictor"]["autoScaling"]["metrics"]
        assert metric["external"]["metric"]["query"] == (
            f'sum(yolo_images_in_flight{{namespace="{namespace}",serving_kserve_io_inferenceservice="qd"}})')
        assert metric["external"]["target"] == {"type": "Value", "value": "8"}
        api.patch_detector(namespace, "qd", {"spec": {"autoscaling": {"queueDepth": None, "metric": "cpu"}}})
        wait_for(lambda: (lambda i: "serving.kserve.io/autoscalerClass" not in i["metadata"]["annotations"]
                          and "autoScaling" not in i["spec"]["predictor"]
                          and i["spec"]["predictor"].get("scaleMetric") == "cpu")(api.isvc(namespace, "qd")),
                 timeout=30, what="KEDA class removed")
    finally:
        remove_crd(kube, SCALEDOBJECTS)


def test_crd_checks_the_new_fields(api, namespace):
    for bad in ({"topologySpreadConstraints": [{"topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]},
                {"monitoring": {"interval": "soon"}},
                {"autoscaling": {"queueDepth": {"target": 4}}},  # serverAddress required
                {"access": {"tokenSecret": {"key": "token"}}}):  # name required
        with pytest.raises(ApiException) as refused:
            api.create_detector(namespace, "bad", bad)
        assert refused.value.status == 422, bad
    created = api.create_detector(namespace, "defaults", {"access": {"tokenSecret": {"name": "t"}}})
    assert created["spec"]["access"] == {"networkPolicy": True, "tokenSecret": {"name": "t", "key": "token"}}
    assert created["spec"]["monitoring"] == {"podMonitor": True, "interval": "30s"}


def test_operator_serves_its_metrics(api, namespace, operator):
    api.create_detector(namespace, "counted", {})
    api.create_detector(namespace, "broken", {"replicas": {"min": 3, "max": 1}})

    def sample() -> dict[str, float]:
        with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
            text = response.read().decode()
        return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in text.splitlines()
                if line and not line.startswith("#")}

    values = wait_for(lambda: (lambda s: s if s.get('yolo_operator_reconciles_total{result="invalid"}', 0) >= 1
                               and s.get('yolo_operator_reconciles_total{result="ok"}', 0) >= 1 else None)(sample()),
                      timeout=30, what="reconciles counted")
    assert values["yolo_operator_reconcile_seconds_count"] >= 2
