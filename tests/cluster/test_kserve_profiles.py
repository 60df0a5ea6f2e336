"""Every example (and the chart's sample) on four KServe installations, on the real kube-apiserver (issue 10).

Per profile (KServe 0.15, 0.16, 0.20 stock; OpenShift-AI-like), in one namespace: KServe's admission webhooks
(served by tests/platform/webhook.py and called by the API server), KServe's controller (tests/platform/controller.py:
the Deployment, Service and HPA in the API server, a pod admitted from the template; Knative's admission for
Serverless) and the operator, told what the profile's administrator would tell it. Then: every detector Valid and
Ready (only once KServe reconciled its latest generation and its pods were admitted); idle resyncs patch nothing;
deleting the detectors removes everything.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client, dynamic

from tests.cluster.helpers import Api, Operator, condition, install_crd, wait_for
from tests.conftest import REPO_ROOT
from tests.platform import kserve
from tests.platform.controller import KServeController
from tests.platform.webhook import KServeWebhooks

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
RESYNC_SECONDS = 2
IDLE_RESYNCS = 3
GC_SECONDS = 150  # deletions by the garbage collector: up to two of its 30 s monitor re-syncs, on a loaded host


def _leftovers(items: list[dict]) -> list[dict]:
    """What keeps each object alive: its deletion timestamp, finalizers and owners."""
    return [{"name": o["metadata"]["name"], "deleting": o["metadata"].get("deletionTimestamp"),
             "finalizers": o["metadata"].get("finalizers"),
             "owners": [r.get("name") for r in o["metadata"].get("ownerReferences") or []]} for o in items]


def detectors() -> list[tuple[str, dict]]:
    """(name, spec) of every example and the chart's sample; names made unique (two examples share one)."""
    out = []
    for path in sorted((REPO_ROOT / "examples").glob("yolodetector*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out.append((path.stem.removeprefix("yolodetector").strip("-") or "basic", doc.get("spec") or {}))
    values = yaml.safe_load((REPO_ROOT / "charts" / "yolo-v7" / "values.yaml").read_text())
    out.append(("chart-sample", values["sample"]["spec"]))
    return out


def _wait_default_service_account(core: client.CoreV1Api, namespace: str) -> None:
    def found():
        try:
            return core.read_namespaced_service_account("default", namespace)
        except client.ApiException:
            return None
    wait_for(found, timeout=30, what=f"ServiceAccount {namespace}/default")


def _ready(api: Api, namespace: str, name: str) -> dict | None:
    detector = api.detector(namespace, name)
    if condition(detector, "Ready").get("status") == "True":
        return detector
    return None


@pytest.fixture
def short_namespace(kube_bare):
    """A namespace with a short name: Knative hostnames count it (<name>-predictor-<namespace> <= 63)."""
    name = f"kp-{uuid.uuid4().hex[:6]}"
    kube_bare.kubectl("create", "namespace", name)
    yield name
    kube_bare.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


PRODUCTION_PREREQUISITES = """
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: inference-high}
value: 1000
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: nvidia}
handler: nvidia
"""


@pytest.fixture(scope="module")
def production_prerequisites(kube):
    """What examples/yolodetector-production.yaml names: a PriorityClass and a RuntimeClass (the API server's
    admission refuses pods naming missing ones) and KEDA's API (the operator checks it for queueDepth). Once per
    module: every CRD added or removed makes the garbage collector re-sync its monitors, which delays deletions."""
    kube.kubectl("apply", "-f", "-", input=PRODUCTION_PREREQUISITES)
    kube.install_crd(REPO_ROOT / "tests" / "platform" / "crds" / "scaledobjects.yaml")
    yield
    kube.kubectl("delete", "crd", "scaledobjects.keda.sh", "--ignore-not-found", "--wait=true", check=False)


@pytest.mark.parametrize("profile", kserve.PROFILES, ids=lambda p: p.name)
def test_examples_on_profile(kube, short_namespace, tmp_path: Path, profile, production_prerequisites):
    namespace = short_namespace
    api = Api(kube.api_client())
    install_crd(kube)
    core = client.CoreV1Api(kube.api_client())
    hpas = dynamic.DynamicClient(kube.api_client()).resources.get(api_version="autoscaling/v2beta2",
                                                                  kind="HorizontalPodAutoscaler")
    _wait_default_service_account(core, namespace)
    operator = Operator(kube.kubeconfig, [namespace], log_path=tmp_path / "operator.log",
                        resync_seconds=RESYNC_SECONDS, env=profile.operator_env())
    with KServeWebhooks(kube.api_client(), profile, namespace) as hooks, \
            KServeController(kube.api_client(), profile, namespace) as kserve_controller, operator:
        specs = dict(detectors())
        for name, spec in specs.items():
            first = {**spec, "rollout": {k: v for k, v in (spec.get("rollout") or {}).items() if k != "canaryPercent"}}
            api.create_detector(namespace, name, first)
        for name in specs:
            detector = wait_for(lambda n=name: _ready(api, namespace, n), timeout=60,
                                what=f"{name} Ready on {profile.name}\n{operator.log_tail()}\n"
                                     f"{kserve_controller.errors}\n{api.detector(namespace, name)}")
            assert condition(detector, "Valid")["status"] == "True", detector
            isvc = api.isvc(namespace, name)
            assert isvc["status"]["observedGeneration"] == isvc["metadata"]["generation"]
            if kserve.effective_mode(isvc, profile) == "Standard":
                if isvc["metadata"]["annotations"].get(kserve.AUTOSCALER_CLASS) != "keda":  # KEDA: a ScaledObject
                    hpa = hpas.get(name=f"{name}-predictor", namespace=namespace)
                    assert hpa.spec.metrics, f"{name}: KServe made an HPA without any metric"
                pods = core.list_namespaced_pod(namespace, label_selector=f"app=isvc.{name}-predictor").items
                assert pods, f"{name}: no pod admitted"
        for name, spec in specs.items():  # the canary: set once the InferenceService exists
            if (spec.get("rollout") or {}).get("canaryPercent") is not None:
                api.patch_detector(namespace, name, {"spec": {"rollout": spec["rollout"]}})
                wait_for(lambda n=name: (lambda d: d if d["status"]["observedGeneration"] == d["metadata"]["generation"]
                                         and condition(d, "Ready").get("status") == "True" else None)(
                    api.detector(namespace, n)), timeout=60, what=f"{name} canary Ready\n{operator.log_tail()}")

        # idle: N resyncs, nothing written to any InferenceService
        versions = {name: api.isvc(namespace, name)["metadata"]["resourceVersion"] for name in specs}
        patches = operator.log_text().count("patching InferenceService")
        updates = sum(1 for _, op, _ in hooks.calls if op == "UPDATE")
        time.sleep(RESYNC_SECONDS * (IDLE_RESYNCS + 0.5))
        assert {name: api.isvc(namespace, name)["metadata"]["resourceVersion"] for name in specs} == versions
        assert operator.log_text().count("patching InferenceService") == patches
        assert sum(1 for _, op, _ in hooks.calls if op == "UPDATE") == updates
        assert not [call for call in hooks.calls if not call[2]], hooks.calls  # KServe refused nothing

        # delete: the detectors, their InferenceServices (KServe's finalizer removed) and what KServe made
        for name in specs:
            api.delete_detector(namespace, name)
        # The garbage collector deletes them (owner references); it stops collecting while it re-syncs its
        # monitors after a CRD came or went (every 30 s in kube-controller-manager 1.20), hence the margin.
        wait_for(lambda: not api.isvcs(namespace), timeout=GC_SECONDS,
                 what=lambda: f"InferenceServices gone on {profile.name}: {_leftovers(api.isvcs(namespace))}; "
                              f"finalizer updates refused: {kserve_controller.refused_finalizer_updates}, "
                              f"controller errors: {kserve_controller.loop_errors}\n{operator.log_tail(40)}\n"
                              f"{kube.logs().get('kube-controller-manager', '')[-3000:]}")
        apps = client.AppsV1Api(kube.api_client())
        wait_for(lambda: not apps.list_namespaced_deployment(namespace).items, timeout=GC_SECONDS,
                 what="Deployments gone")
    assert "Traceback" not in operator.log_text(), operator.log_tail(120)


def test_kserve_warnings_reach_the_detector(kube, short_namespace, tmp_path: Path):
    """A failure only the cluster sees (a missing ServiceAccount refuses the pods): KServe's Warning event is in
    the detector's Ready message, and Progressing says why it is stuck."""
    namespace, profile = short_namespace, next(p for p in kserve.PROFILES if p.name == "kserve-0.20")
    api = Api(kube.api_client())
    install_crd(kube)
    _wait_default_service_account(client.CoreV1Api(kube.api_client()), namespace)
    operator = Operator(kube.kubeconfig, [namespace], log_path=tmp_path / "operator.log",
                        resync_seconds=RESYNC_SECONDS, env=profile.operator_env())
    with KServeWebhooks(kube.api_client(), profile, namespace), \
            KServeController(kube.api_client(), profile, namespace), operator:
        api.create_detector(namespace, "nosa", {"serviceAccountName": "missing"})
        detector = wait_for(lambda: (lambda d: d if "InternalError:" in condition(d, "Ready").get("message", "")
                                     else None)(api.detector(namespace, "nosa")),
                            timeout=60, what=f"the Warning event in Ready\n{operator.log_tail()}")
        assert condition(detector, "Ready")["status"] == "False"
        assert "serviceaccount" in condition(detector, "Ready")["message"].lower()
        assert condition(detector, "Progressing")["status"] == "True"
