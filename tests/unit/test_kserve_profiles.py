"""Every example through the operator and the KServe/Knative stand-ins, on four installations (issue 10).

For each profile (KServe 0.15, 0.16, 0.20 stock; OpenShift-AI-like) and each example (and the chart's sample): the
operator's InferenceService passes KServe's webhooks, the Deployment KServe would make keeps requests within
limits and its HPA has a metric (RawDeployment), the Knative Service passes Knative's admission (Serverless),
Ready follows KServe, and idle resyncs patch nothing. The cluster tier repeats this on the real kube-apiserver.
"""

from __future__ import annotations

import logging

import pytest
import yaml
from yolo_operator import handlers
from yolo_operator.config import OperatorConfig

from tests.conftest import REPO_ROOT, fixtures_root
from tests.platform import knative, kserve
from tests.platform.inmemory import InMemoryKServe, requests_within_limits

pytestmark = pytest.mark.skipif(not (fixtures_root() / "kserve" / "v0.20.0-src").is_dir(),
                                reason="KServe/Knative fixtures (../shared/fixtures) not found")
LOG = logging.getLogger("test")
NAMESPACE = "vision"
RESYNCS = 5


def examples() -> list[tuple[str, dict]]:
    out = []
    for path in sorted((REPO_ROOT / "examples").glob("yolodetector*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out.append((path.stem, doc))
    values = yaml.safe_load((REPO_ROOT / "charts" / "yolo-v7" / "values.yaml").read_text())
    out.append(("chart-sample", {"metadata": {"name": values["sample"]["name"]}, "spec": values["sample"]["spec"]}))
    return out


def detector(name: str, spec: dict, generation: int = 1, labels: dict | None = None) -> dict:
    return {"apiVersion": "detection.yolo-v7.io/v1alpha1", "kind": "YoloDetector",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"det-{name}", "generation": generation,
                         "labels": labels or {}},
            "spec": spec}


def operator_config(profile: kserve.Profile) -> OperatorConfig:
    return OperatorConfig.from_env(profile.operator_env())


def run(cluster: InMemoryKServe, config: OperatorConfig, body: dict) -> dict:
    cluster.detectors[(NAMESPACE, body["metadata"]["name"])] = body
    return handlers.reconcile(cluster, config, body, LOG)


def conditions(status: dict) -> dict[str, dict]:
    return {cond["type"]: cond for cond in status["conditions"]}


@pytest.mark.parametrize("profile", kserve.PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize(("example", "doc"), examples(), ids=[name for name, _ in examples()])
def test_example_on_profile(profile, example, doc):
    cluster, config = InMemoryKServe(profile), operator_config(profile)
    name, spec = doc["metadata"]["name"], dict(doc.get("spec") or {})
    canary = (spec.get("rollout") or {}).get("canaryPercent")
    first = {**spec, "rollout": {k: v for k, v in (spec.get("rollout") or {}).items() if k != "canaryPercent"}}
    status = run(cluster, config, detector(name, first))
    assert conditions(status)["Valid"]["status"] == "True", status
    assert conditions(status)["Ready"]["status"] != "True"  # KServe has not reported yet
    isvc = cluster.get_isvc(NAMESPACE, name)

    # what KServe builds from it is admitted
    if kserve.effective_mode(isvc, profile) == "Standard":
        deployment, _, hpa = kserve.raw_objects(isvc, profile)
        assert requests_within_limits(deployment["spec"]["template"]["spec"]) == []
        if isvc["metadata"]["annotations"].get(kserve.AUTOSCALER_CLASS) != "keda":  # KEDA: a ScaledObject instead
            assert hpa["spec"]["metrics"], "KServe would make an HPA without any metric"
    else:
        features = knative.features_with(profile.knative_features)
        assert knative.check_service(kserve.knative_service(isvc, profile), features, profile.knative_minor) == []

    # Ready only when KServe says so, for the generation it saw
    cluster.reconcile_kserve(NAMESPACE, name, ready=False)
    assert conditions(run(cluster, config, detector(name, first)))["Ready"]["status"] == "False"
    cluster.reconcile_kserve(NAMESPACE, name, ready=True)
    generation = 1
    if canary is not None:
        generation = 2
        status = run(cluster, config, detector(name, spec, generation))
        assert conditions(status)["Valid"]["status"] == "True", status
        assert conditions(status)["Ready"]["status"] == "Unknown"  # the new generation is not seen yet
        cluster.reconcile_kserve(NAMESPACE, name, ready=True)
    status = run(cluster, config, detector(name, spec, generation))
    assert conditions(status)["Ready"]["status"] == "True", status
    assert conditions(status)["Progressing"]["status"] == "False"

    # idle resyncs change nothing
    writes = len(cluster.writes)
    for _ in range(RESYNCS):
        run(cluster, config, detector(name, spec, generation))
        cluster.reconcile_kserve(NAMESPACE, name, ready=True)
    assert cluster.writes[writes:] == []
