"""The twelve findings of issue 10 ("works on a real KServe and Knative install"), one test (or more) each, plus
issue 13's "normalise the spec once". Each fails on the operator before the fix; they run the operator's own
builders, checks and reconcile against the KServe/Knative stand-ins of tests/platform."""

from __future__ import annotations

import logging
import re

import pytest
from yolo_operator import config as c
from yolo_operator import handlers, manifests, validation
from yolo_operator.config import OperatorConfig

from tests.conftest import fixtures_root
from tests.platform import knative, kserve
from tests.platform.inmemory import InMemoryKServe, canonical_quantity, requests_within_limits

pytestmark = pytest.mark.skipif(not (fixtures_root() / "kserve" / "v0.20.0-src").is_dir(),
                                reason="KServe/Knative fixtures (../shared/fixtures) not found")
LOG = logging.getLogger("test")
CONFIG = OperatorConfig()
NS = "vision"
P15, P16, P20, OSAI = kserve.PROFILES


def detector(spec: dict, name: str = "dets", generation: int = 1, labels: dict | None = None) -> dict:
    return {"apiVersion": "detection.yolo-v7.io/v1alpha1", "kind": "YoloDetector",
            "metadata": {"name": name, "namespace": NS, "uid": "det-uid", "generation": generation,
                         "labels": labels or {}}, "spec": spec}


def reconcile(cluster: InMemoryKServe, body: dict, config: OperatorConfig = CONFIG) -> dict:
    cluster.detectors[(NS, body["metadata"]["name"])] = body
    return handlers.reconcile(cluster, config, body, LOG)


def cond(status: dict, kind: str) -> dict:
    return next(x for x in status["conditions"] if x["type"] == kind)


def errors(spec: dict, **kw) -> dict[str, str]:
    return {p.field: p.message for p in validation.validate("dets", spec, CONFIG, **kw) if p.severity == "error"}


def isvc_of(spec: dict, profile: kserve.Profile, config: OperatorConfig = CONFIG) -> dict:
    built = manifests.without_nulls(manifests.build_inference_service("dets", NS, spec, config))
    return kserve.default_isvc(built, profile)


# 1 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", [P15, P20], ids=lambda p: p.name)
def test_1_cpu_request_never_above_the_limit_kserve_injects(profile):
    isvc = isvc_of({"resources": {"cpu": "2"}}, profile)
    deployment = kserve.raw_objects(isvc, profile)[0]
    assert requests_within_limits(deployment["spec"]["template"]["spec"]) == []
    limits = isvc["spec"]["predictor"]["containers"][0]["resources"]["limits"]
    assert limits["cpu"] == "2"  # ours, not KServe's stock "1"
    assert errors({"resources": {"cpu": "2", "cpuLimit": "1"}}) == {
        "resources.cpuLimit": "(1) must be >= the cpu request (2): Kubernetes refuses the pods otherwise"}


# 2 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("minor", [10, 14, 23])
def test_2_serverless_predictor_passes_stock_knative(minor):
    config = OperatorConfig(knative_version=f"1.{minor}")
    isvc = isvc_of({"deploymentMode": "Serverless", "replicas": {"min": 0, "max": 2}}, P20, config)
    assert knative.check_service(kserve.knative_service(isvc, P20), None, minor) == []
    box = isvc["spec"]["predictor"]["containers"][0]
    assert ("startupProbe" in box) == (minor >= 15)


def test_2_fields_knative_gates_need_the_flag_the_operator_is_told():
    spec = {"deploymentMode": "Knative", "nodeSelector": {"gpu": "a10"},
            "tolerations": [{"key": "gpu", "operator": "Exists"}]}
    found = errors(spec)
    assert "kubernetes.podspec-nodeselector" in found["nodeSelector"]
    assert "kubernetes.podspec-tolerations" in found["tolerations"]
    config = OperatorConfig.from_env({"YOLO_OPERATOR_KNATIVE_FEATURES": "kubernetes.podspec-nodeselector,"
                                                                        "kubernetes.podspec-tolerations"})
    assert validation.errors(validation.validate("dets", spec, config)) == []
    features = knative.features_with({"kubernetes.podspec-nodeselector": "enabled",
                                      "kubernetes.podspec-tolerations": "enabled"})
    assert knative.check_service(kserve.knative_service(isvc_of(spec, P20, config), P20), features) == []
    cluster = InMemoryKServe(P20)
    status = reconcile(cluster, detector(spec))
    assert cond(status, "Valid")["status"] == "False" and "podspec-nodeselector" in cond(status, "Valid")["message"]
    assert cluster.writes == []


# 3 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", kserve.PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("mode", ["RawDeployment", "Standard", "Serverless", "Knative"])
def test_3_mode_names_follow_kserve_and_idle_resyncs_patch_nothing(profile, mode):
    cluster = InMemoryKServe(profile)
    spec = {"deploymentMode": mode, **({"replicas": {"min": 0, "max": 2}} if mode in c.SERVERLESS_MODES else {})}
    reconcile(cluster, detector(spec))
    cluster.reconcile_kserve(NS, "dets")
    assert kserve.effective_mode(cluster.get_isvc(NS, "dets"), profile) == manifests.normal_mode(mode)
    reconcile(cluster, detector(spec))  # 0.16: the one patch that writes the name KServe stored
    writes = len(cluster.writes)
    for _ in range(5):
        status = reconcile(cluster, detector(spec))
        cluster.reconcile_kserve(NS, "dets")
    assert cluster.writes[writes:] == []
    assert cond(status, "Ready")["status"] == "True"
    # KServe's own update (e.g. removing its finalizer) is not refused: the annotation is what it stored
    live = cluster.get_isvc(NS, "dets")
    kserve.validate_isvc(live, live, profile)


def test_3_an_update_kserve_016_would_refuse_is_never_sent():
    cluster = InMemoryKServe(P16)
    reconcile(cluster, detector({}))
    assert cluster.get_isvc(NS, "dets")["metadata"]["annotations"][c.DEPLOYMENT_MODE_ANNOTATION] == "RawDeployment"
    cluster.reconcile_kserve(NS, "dets")  # 0.16 stores Standard
    with pytest.raises(kserve.Refused):
        kserve.validate_isvc(cluster.get_isvc(NS, "dets"), cluster.get_isvc(NS, "dets"), P16)
    status = reconcile(cluster, detector({"thresholds": {"confidence": 0.5}}, generation=2))
    assert cond(status, "Ready")["reason"] != "ApplyFailed"
    assert cluster.get_isvc(NS, "dets")["metadata"]["annotations"][c.DEPLOYMENT_MODE_ANNOTATION] == "Standard"


def test_3_current_names_when_configured():
    config = OperatorConfig.from_env({"YOLO_OPERATOR_KSERVE_MODE_NAMES": "current"})
    isvc = manifests.build_inference_service("dets", NS, {"deploymentMode": "Serverless"}, config)
    assert isvc["metadata"]["annotations"][c.DEPLOYMENT_MODE_ANNOTATION] == "Knative"
    with pytest.raises(ValueError):
        OperatorConfig.from_env({"YOLO_OPERATOR_KSERVE_MODE_NAMES": "newest"})


# 4 -------------------------------------------------------------------------------------------------
def test_4_changing_the_mode_of_a_live_detector_is_refused_and_blocks_nothing():
    cluster = InMemoryKServe(P20)
    reconcile(cluster, detector({}))
    cluster.reconcile_kserve(NS, "dets")
    before = cluster.get_isvc(NS, "dets")
    status = reconcile(cluster, detector({"deploymentMode": "Serverless", "replicas": {"min": 0}}, generation=2))
    valid = cond(status, "Valid")
    assert valid["status"] == "False" and valid["message"].startswith("deploymentMode: cannot change on a live")
    assert cond(status, "Ready")["status"] == "True"  # the InferenceService keeps serving, not ApplyFailed
    assert cluster.get_isvc(NS, "dets") == before
    status = reconcile(cluster, detector({"thresholds": {"confidence": 0.4}}, generation=3))  # set back + a change
    assert cond(status, "Valid")["status"] == "True"
    assert cond(status, "Ready")["reason"] == "KServeReconciling"


# 5 -------------------------------------------------------------------------------------------------
def test_5_autoscaling_metric_per_mode():
    assert "autoscaling.metric" in errors({"deploymentMode": "Serverless", "autoscaling": {"metric": "cpu"}})
    assert "autoscaling.metric" in errors({"deploymentMode": "Knative", "autoscaling": {"metric": "memory"}})
    assert "autoscaling.metric" in errors({"autoscaling": {"metric": "concurrency", "target": 4}})
    assert "autoscaling.target" in errors({"autoscaling": {"metric": "memory"}})
    assert errors({"autoscaling": {"metric": "memory", "target": 70}}) == {}
    assert errors({"deploymentMode": "Knative", "autoscaling": {"metric": "rps", "target": 9}}) == {}
    # what the stand-ins say about the refused combinations
    with pytest.raises(kserve.Refused):
        kserve.validate_isvc(isvc_of({"deploymentMode": "Serverless", "autoscaling": {"metric": "cpu"}}, P20), None, P20)
    assert kserve.hpa_metrics({"scaleMetric": "concurrency"}) == []


# 6 -------------------------------------------------------------------------------------------------
def test_6_ready_waits_for_kserve_to_see_the_latest_generation():
    isvc = {"metadata": {"generation": 3}, "status": {"observedGeneration": 2, "conditions": [
        {"type": "Ready", "status": "True"}, {"type": "PredictorReady", "status": "True"}]}}
    ready = handlers.ready_condition(isvc, [])
    assert (ready["status"], ready["reason"]) == ("Unknown", "KServeReconciling")
    assert handlers.progressing_condition(ready, [])["status"] == "True"
    isvc["status"]["observedGeneration"] = 3
    isvc["status"]["conditions"][1] = {"type": "PredictorReady", "status": "False", "reason": "CrashLoop",
                                       "message": "back-off restarting"}
    ready = handlers.ready_condition(isvc, [], warning="BackOff: restarting failed container")
    assert (ready["status"], ready["reason"]) == ("False", "CrashLoop")
    assert "BackOff" in ready["message"]


def test_6_knative_not_installed_and_kserve_warnings_are_conditions():
    cluster = InMemoryKServe(P20, knative_installed=False)
    status = reconcile(cluster, detector({"deploymentMode": "Serverless", "replicas": {"min": 0}}))
    assert cond(status, "Ready")["reason"] == "KnativeNotInstalled"
    assert (cond(status, "Progressing")["status"], cond(status, "Progressing")["reason"]) == \
        ("False", "KnativeNotInstalled")
    cluster = InMemoryKServe(P20)
    cluster.warnings[(NS, "dets")] = "InternalError: fails to reconcile predictor"
    reconcile(cluster, detector({}))
    cluster.reconcile_kserve(NS, "dets", ready=False)
    assert "fails to reconcile predictor" in cond(reconcile(cluster, detector({})), "Ready")["message"]


# 7 -------------------------------------------------------------------------------------------------
def test_7_owner_labels_stay_off_and_removed_labels_go():
    cluster = InMemoryKServe(P20)
    owner = {"app.kubernetes.io/instance": "gitops-42", "team": "vision"}
    reconcile(cluster, detector({"labels": {"team": "vision", "tier": "gold"}}, labels=owner))
    labels = cluster.get_isvc(NS, "dets")["metadata"]["labels"]
    assert "app.kubernetes.io/instance" not in labels and labels["tier"] == "gold"
    cluster.reconcile_kserve(NS, "dets")
    writes = len(cluster.writes)
    reconcile(cluster, detector({"labels": {"team": "vision", "tier": "gold"}},
                                labels={**owner, "app.kubernetes.io/instance": "gitops-43"}))  # relabelled owner
    assert cluster.writes[writes:] == []  # no patch, so no pod restart
    reconcile(cluster, detector({"labels": {"team": "vision"}}, generation=2, labels=owner))
    assert "tier" not in cluster.get_isvc(NS, "dets")["metadata"]["labels"]


def test_7_labels_an_older_operator_copied_from_the_owner_are_removed():
    live = {"metadata": {"labels": {"app.kubernetes.io/instance": "gitops-42", "team": "x"}}}
    assert manifests.stale_labels({"team": "x"}, live, {"app.kubernetes.io/instance": "gitops-42"}) == \
        ["app.kubernetes.io/instance"]


# 8 -------------------------------------------------------------------------------------------------
def test_8_quantities_compare_canonically():
    assert canonical_quantity("0.5") == "500m" and canonical_quantity("4096Mi") == "4Gi"
    assert not manifests.differs({"resources": {"requests": {"cpu": "0.5"}}}, {"resources": {"requests": {"cpu": "500m"}}})
    assert manifests.differs({"resources": {"requests": {"cpu": "0.5"}}}, {"resources": {"requests": {"cpu": "1"}}})
    cluster = InMemoryKServe(P20)
    spec = {"resources": {"cpu": "0.5", "cpuLimit": "1.5", "memory": "4096Mi"}}
    reconcile(cluster, detector(spec))
    assert cluster.get_isvc(NS, "dets")["spec"]["predictor"]["containers"][0]["resources"]["requests"]["cpu"] == "500m"
    writes = len(cluster.writes)
    reconcile(cluster, detector(spec))
    assert cluster.writes[writes:] == []


# 9 -------------------------------------------------------------------------------------------------
def test_9_name_length_counts_the_namespace_for_serverless():
    name = "a" * 40
    assert validation.validate(name, {}, CONFIG, namespace="n" * 20) == []  # RawDeployment: 50 characters
    found = {p.field for p in validation.validate(name, {"deploymentMode": "Serverless", "replicas": {"min": 0}},
                                                  CONFIG, namespace="n" * 20)}
    assert found == {"metadata.name"}  # 40 + 11 + 20 = 71 > 63
    assert validation.validate("a" * 30, {"deploymentMode": "Serverless", "replicas": {"min": 0}}, CONFIG,
                               namespace="n" * 20) == []


# 10 ------------------------------------------------------------------------------------------------
def test_10_storage_schemes_are_exactly_kserves():
    source = (fixtures_root() / "kserve" / "v0.20.0-src" / "utils.go").read_text()
    listed = re.search(r"SupportedStorageURIPrefixList = \[\]string\{([^}]*)\}", source).group(1)
    prefixes = [item.strip().strip('"') for item in listed.split(",")]
    assert [f"{scheme}://" for scheme in validation.STORAGE_SCHEMES] == prefixes == list(kserve.STORAGE_PREFIXES)
    assert "storageUri" in errors({"storageUri": "azure://container/best.pt"})
    for uri in ("file:///models/best.pt", "oci+native://registry/model:1",
                "https://acct.blob.core.windows.net/models/best.pt"):
        assert errors({"storageUri": uri}) == {}, uri
        assert kserve.check_storage_uri(uri) == ""
    assert kserve.check_storage_uri("azure://container/best.pt") != ""


# 11 ------------------------------------------------------------------------------------------------
def test_11_more_than_one_gpu_is_refused_with_a_pointer_to_replicas():
    found = errors({"resources": {"gpu": 2}})
    assert "replicas.max" in found["resources.gpu"]
    assert errors({"resources": {"gpu": 1}}) == {}


# 12 ------------------------------------------------------------------------------------------------
def test_12_deployment_strategy_for_raw_deployments():
    spec = {"resources": {"gpu": 1}, "rollout": {"strategy": {"type": "RollingUpdate", "maxSurge": 0,
                                                              "maxUnavailable": 1}}}
    isvc = isvc_of(spec, P20)
    assert isvc["spec"]["predictor"]["deploymentStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {
        "maxSurge": 0, "maxUnavailable": 1}}
    assert kserve.raw_objects(isvc, P20)[0]["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    recreate = isvc_of({"rollout": {"strategy": {"type": "Recreate"}}}, P20)
    assert recreate["spec"]["predictor"]["deploymentStrategy"] == {"type": "Recreate"}
    assert "rollout.strategy" in errors({"deploymentMode": "Serverless", "replicas": {"min": 0},
                                         "rollout": {"strategy": {"type": "Recreate"}}})
    assert "rollout.strategy" in errors({"rollout": {"strategy": {"maxSurge": 0, "maxUnavailable": "0%"}}})
    assert "rollout.strategy" in errors({"rollout": {"strategy": {"type": "Recreate", "maxSurge": 1}}})


# issue 13 ------------------------------------------------------------------------------------------
def test_the_spec_is_normalised_once_per_reconcile(monkeypatch):
    real, calls = manifests.normalise, []

    def counting(spec):
        if not isinstance(spec, manifests.Spec):
            calls.append(spec)
        return real(spec)

    monkeypatch.setattr(manifests, "normalise", counting)
    reconcile(InMemoryKServe(P20), detector({"resources": {"gpu": 1}, "labels": {"a": "b"}}))
    assert len(calls) == 1
