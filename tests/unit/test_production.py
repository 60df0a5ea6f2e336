"""Issue 16 without a cluster: queue-depth autoscaling through KServe's KEDA API, the companions (PodMonitor,
PodDisruptionBudget, NetworkPolicy), scheduling fields, the bearer-token Secret, operator metrics.

The KServe/Knative stand-ins (tests/platform) judge what the operator writes, on every profile; the cluster tier
(tests/cluster/test_production.py) repeats the companions on the real kube-apiserver.
"""

from __future__ import annotations

import logging

import pytest
from yolo_operator import companions, handlers, manifests, validation
from yolo_operator import config as c
from yolo_operator.config import OperatorConfig
from yolo_operator.metrics import operator_metrics

from predictor.settings import parse_args
from tests.platform import knative, kserve
from tests.platform.inmemory import InMemoryKServe

LOG = logging.getLogger("test")
NS = "shop"
QUEUE = {"queueDepth": {"target": 24, "serverAddress": "http://prometheus.monitoring:9090"}}
CONFIG = OperatorConfig()


def detector(spec: dict, name: str = "cams", generation: int = 1) -> dict:
    return {"apiVersion": c.API_VERSION, "kind": c.KIND, "spec": spec,
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": generation}}


def run(cluster: InMemoryKServe, body: dict, config: OperatorConfig = CONFIG) -> dict:
    cluster.detectors[(NS, body["metadata"]["name"])] = body
    status = handlers.reconcile(cluster, config, body, LOG)
    return {cond["type"]: cond for cond in status["conditions"]}


def problems(spec: dict, config: OperatorConfig = CONFIG) -> list[str]:
    return [str(p) for p in validation.errors(validation.validate("cams", spec, config, namespace=NS))]


# ----- queue-depth autoscaling --------------------------------------------------------------------------
def test_queue_depth_uses_kserves_keda_class_with_one_external_prometheus_metric():
    isvc = manifests.build_inference_service("cams", NS, {"replicas": {"min": 1, "max": 6}, "autoscaling": QUEUE},
                                             CONFIG)
    assert isvc["metadata"]["annotations"][c.AUTOSCALER_CLASS_ANNOTATION] == "keda"
    predictor = isvc["spec"]["predictor"]
    assert predictor["scaleMetric"] is None and predictor["scaleTarget"] is None
    (metric,) = predictor["autoScaling"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["target"] == {"type": "Value", "value": "24"}
    assert metric["external"]["metric"]["backend"] == "prometheus"
    assert metric["external"]["metric"]["serverAddress"] == "http://prometheus.monitoring:9090"
    query = metric["external"]["metric"]["query"]
    # the PodMonitor keeps the InferenceService label on every series (podTargetLabels), sanitised by Prometheus
    assert query == 'sum(yolo_images_in_flight{namespace="shop",serving_kserve_io_inferenceservice="cams"})'
    assert companions.pod_monitor("cams", NS, {})["spec"]["podTargetLabels"] == [c.ISVC_POD_LABEL]


def test_dropping_queue_depth_removes_the_keda_class_and_autoscaling():
    isvc = manifests.build_inference_service("cams", NS, {"autoscaling": {"metric": "cpu", "target": 60}}, CONFIG)
    assert isvc["metadata"]["annotations"][c.AUTOSCALER_CLASS_ANNOTATION] is None  # merge patch: delete
    assert isvc["spec"]["predictor"]["autoScaling"] is None
    own = manifests.build_inference_service("cams", NS, {"annotations": {c.AUTOSCALER_CLASS_ANNOTATION: "external"}},
                                            CONFIG)
    assert own["metadata"]["annotations"][c.AUTOSCALER_CLASS_ANNOTATION] == "external"  # the user's own class


@pytest.mark.parametrize("profile", kserve.PROFILES, ids=lambda p: p.name)
def test_queue_depth_passes_kserves_keda_validation_on_every_profile(profile):
    cluster = InMemoryKServe(profile)
    spec = {"deploymentMode": "RawDeployment", "replicas": {"min": 2, "max": 6}, "autoscaling": QUEUE}
    assert run(cluster, detector(spec))["Valid"]["status"] == "True"
    isvc = cluster.get_isvc(NS, "cams")
    assert isvc["spec"]["predictor"]["autoScaling"]["metrics"][0]["type"] == "External"
    # the stand-in is not lenient: what KServe refuses with KEDA, it refuses too
    with pytest.raises(kserve.Refused, match="ScaleMetric is not supported for KEDA"):
        kserve.validate_isvc({**isvc, "spec": {"predictor": {**isvc["spec"]["predictor"], "scaleMetric": "cpu"}}},
                             None, profile)
    broken = {**isvc["spec"]["predictor"], "autoScaling": {"metrics": [
        {"type": "External", "external": {"metric": {"backend": "prometheus"}, "target": {"value": "1"}}}]}}
    with pytest.raises(kserve.Refused, match="query should not be empty"):
        kserve.validate_isvc({**isvc, "spec": {"predictor": broken}}, None, profile)


def test_queue_depth_combinations_per_deployment_mode():
    serverless = problems({"deploymentMode": "Serverless", "autoscaling": QUEUE})
    assert any("autoscaling.queueDepth" in p and "concurrency" in p for p in serverless)
    both = problems({"autoscaling": {**QUEUE, "metric": "cpu"}})
    assert any("exclude each other" in p for p in both)
    annotated = problems({"autoscaling": QUEUE, "annotations": {c.AUTOSCALER_CLASS_ANNOTATION: "hpa"}})
    assert any("autoscalerClass" in p for p in annotated)
    assert problems({"deploymentMode": "Standard", "replicas": {"min": 1, "max": 4}, "autoscaling": QUEUE}) == []
    warnings = validation.warnings(validation.validate("cams", {"autoscaling": QUEUE, "monitoring": {
        "podMonitor": False}}, CONFIG))
    assert {p.field for p in warnings} == {"autoscaling.queueDepth"}  # max <= min, and nothing scraped


def test_queue_depth_without_keda_installed_is_invalid_and_writes_nothing():
    cluster = InMemoryKServe(kserve.PROFILES[2])
    del cluster.groups["keda.sh"]
    conditions = run(cluster, detector({"replicas": {"min": 1, "max": 4}, "autoscaling": QUEUE}))
    assert conditions["Valid"]["status"] == "False"
    assert "keda.sh" in conditions["Valid"]["message"]
    assert cluster.get_isvc(NS, "cams") is None


# ----- companions --------------------------------------------------------------------------------------
def test_disruption_budget_only_from_two_replicas():
    assert companions.disruption_budget("cams", NS, {"replicas": {"min": 1, "max": 3}}, "v1") is None
    pdb = companions.disruption_budget("cams", NS, {"replicas": {"min": 2, "max": 3}}, "v1beta1")
    assert pdb["apiVersion"] == "policy/v1beta1"
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {
        "serving.kserve.io/inferenceservice": "cams", "component": "predictor"}}}


def test_network_policy_admits_own_namespace_callers_and_listed_ones_only():
    config = OperatorConfig(caller_namespaces=("istio-system", "knative-serving"))
    policy = companions.network_policy("cams", NS, {"access": {"namespaces": ["checkout", NS],
                                                               "podLabels": {"app": "web"}}}, config)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"] == companions.pod_selector("cams")
    peers = policy["spec"]["ingress"][0]["from"]
    assert peers[0] == {"podSelector": {"matchLabels": {"app": "web"}}}  # own namespace: only these pods
    names = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers[1:]]
    assert names == ["checkout", "istio-system", "knative-serving"]
    assert companions.network_policy("cams", NS, {"access": {"networkPolicy": False}}, config) is None
    default = companions.network_policy("cams", NS, {}, CONFIG)["spec"]["ingress"][0]["from"]
    assert default[0] == {"podSelector": {}}


def test_companions_created_owned_updated_and_deleted_with_the_spec():
    cluster = InMemoryKServe(kserve.PROFILES[2])
    spec = {"replicas": {"min": 2, "max": 4}}
    run(cluster, detector(spec))
    kinds = {plural for plural, _, _ in cluster.objects}
    assert kinds == {"poddisruptionbudgets", "networkpolicies"}  # no monitoring.coreos.com: no PodMonitor
    for obj in cluster.objects.values():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-cams"
        assert obj["metadata"]["ownerReferences"][0]["kind"] == c.KIND
    cluster.groups["monitoring.coreos.com"] = ["v1"]
    run(cluster, detector({**spec, "monitoring": {"interval": "10s"}}, generation=2))
    monitor = cluster.objects[("podmonitors", NS, "cams-predictor")]
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "http1", "path": "/metrics", "interval": "10s"}]
    writes = dict(cluster.objects)
    run(cluster, detector({**spec, "monitoring": {"interval": "10s"}}, generation=2))
    assert cluster.objects == writes  # idle: nothing rewritten
    run(cluster, detector({"replicas": {"min": 1, "max": 4}, "monitoring": {"podMonitor": False}}, generation=3))
    assert {plural for plural, _, _ in cluster.objects} == {"networkpolicies"}


# ----- scheduling, pull secrets, the token Secret ------------------------------------------------------
SCHEDULING = {
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]}}},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway"}],
    "priorityClassName": "high", "runtimeClassName": "nvidia", "imagePullSecrets": [{"name": "pull"}],
}


def test_scheduling_fields_reach_the_predictor_and_are_removed_when_dropped():
    predictor = manifests.predictor_spec("cams", SCHEDULING, CONFIG)
    for key, value in SCHEDULING.items():
        assert predictor[key] == value
    assert all(manifests.predictor_spec("cams", {}, CONFIG)[key] is None for key in SCHEDULING)


def test_scheduling_fields_follow_the_knative_flags_when_serverless():
    serverless = {"deploymentMode": "Serverless", **SCHEDULING}
    found = {p.split(":")[0] for p in problems(serverless)}
    assert found == {"affinity", "topologySpreadConstraints", "priorityClassName", "runtimeClassName"}
    flags = frozenset(c.KNATIVE_FLAGS.values()) | c.KNATIVE_STOCK_ENABLED
    assert problems(serverless, OperatorConfig(knative_features=flags)) == []
    # imagePullSecrets and the token's secret volume need no flag: Knative's own admission agrees
    spec = {"deploymentMode": "Serverless", "imagePullSecrets": [{"name": "pull"}],
            "access": {"tokenSecret": {"name": "tok"}}}
    profile = kserve.PROFILES[2]
    isvc = kserve.default_isvc(manifests.without_nulls(manifests.build_inference_service("cams", NS, spec, CONFIG)),
                               profile)
    assert knative.check_service(kserve.knative_service(isvc, profile)) == []


def test_token_secret_is_mounted_and_named_to_the_predictor():
    spec = {"access": {"tokenSecret": {"name": "cams-token", "key": "bearer"}}}
    predictor = manifests.predictor_spec("cams", spec, CONFIG)
    assert {"name": c.AUTH_VOLUME, "secret": {"secretName": "cams-token", "items": [
        {"key": "bearer", "path": "bearer"}]}} in predictor["volumes"]
    box = predictor["containers"][0]
    assert {"name": c.AUTH_VOLUME, "mountPath": c.AUTH_TOKEN_DIR, "readOnly": True} in box["volumeMounts"]
    assert parse_args(box["args"][3:]).auth_token_file == f"{c.AUTH_TOKEN_DIR}/bearer"
    assert parse_args(manifests.predictor_container("cams", {}, CONFIG)["args"][3:]).auth_token_file == ""
    assert any("access.tokenSecret.key" in p for p in problems({"access": {"tokenSecret": {"name": "t",
                                                                                             "key": "a b"}}}))


# ----- the operator's own metrics ----------------------------------------------------------------------
def test_reconciles_are_counted_by_outcome_and_timed():
    metrics = operator_metrics()

    def value(name: str, labels: dict | None = None) -> float:
        return metrics.registry.get_sample_value(name, labels or {}) or 0.0

    ok, invalid = value("yolo_operator_reconciles_total", {"result": "ok"}), value(
        "yolo_operator_reconciles_total", {"result": "invalid"})
    timed = value("yolo_operator_reconcile_seconds_count")
    cluster = InMemoryKServe(kserve.PROFILES[2])
    body = detector({})
    cluster.detectors[(NS, "cams")] = body
    handlers.measured_reconcile(cluster, CONFIG, body, LOG)
    bad = detector({"replicas": {"min": 3, "max": 1}}, name="bad")
    cluster.detectors[(NS, "bad")] = bad
    handlers.measured_reconcile(cluster, CONFIG, bad, LOG)
    assert value("yolo_operator_reconciles_total", {"result": "ok"}) == ok + 1
    assert value("yolo_operator_reconciles_total", {"result": "invalid"}) == invalid + 1
    assert value("yolo_operator_reconcile_seconds_count") == timed + 2


def test_a_companion_race_or_failure_leaves_the_inference_service_alone():
    import kopf

    cluster = InMemoryKServe(kserve.PROFILES[2])
    create = cluster.create_object

    def raced(kind, body):  # a concurrent reconcile (the InferenceService's event) created it first: 409
        create(kind, body)

    cluster.create_object = raced
    conditions = run(cluster, detector({"replicas": {"min": 2, "max": 3}}))
    assert conditions["Ready"]["reason"] != "ApplyFailed"
    assert ("poddisruptionbudgets", NS, "cams-predictor") in cluster.objects

    def refused(kind, body):
        raise kopf.PermanentError(f"create {kind.kind}: 403 Forbidden")

    other = InMemoryKServe(kserve.PROFILES[2])
    other.create_object = refused
    with pytest.raises(kopf.TemporaryError, match="403 Forbidden"):
        run(other, detector({}, name="denied"))
    status = other.detectors[(NS, "denied")]["status"]
    ready = next(cond for cond in status["conditions"] if cond["type"] == "Ready")
    assert ready["reason"] != "ApplyFailed"
    assert other.get_isvc(NS, "denied") is not None


def test_operator_config_for_callers_and_metrics():
    assert OperatorConfig.from_env({}).metrics_port == 0
    assert OperatorConfig.from_env({}).caller_namespaces == c.DEFAULT_CALLER_NAMESPACES
    config = OperatorConfig.from_env({"YOLO_OPERATOR_CALLER_NAMESPACES": "gw, mon", "YOLO_OPERATOR_METRICS_PORT": "9"})
    assert config.caller_namespaces == ("gw", "mon") and config.metrics_port == 9
    assert OperatorConfig.from_env({"YOLO_OPERATOR_CALLER_NAMESPACES": ""}).caller_namespaces == ()
