"""Stand-ins for KServe's InferenceService webhooks and RawDeployment reconciler (v0.15 … v0.20), as pure functions.

Read from ``fixtures/kserve`` (Apache-2.0; facts, not code): the stock ``inferenceservice-config`` of v0.15.2 and
v0.20.0, and the v0.20.0 Go files under ``v0.20.0-src/`` (``D`` = inference_service_defaults.go, ``V`` =
inference_service_validation.go, ``K`` = constants.go, ``U`` = utils.go, ``P`` = predictor.go, ``PC`` =
predictor_custom.go, ``DR`` = deployment_reconciler.go, ``H`` = hpa_reconciler.go, ``KS`` = ksvc_reconciler.go,
``C`` = component.go). Facts from older tags (fixtures/README): 0.15 knows only RawDeployment/Serverless (another
name falls back to the configured default); 0.16 stores ``status.deploymentMode: Standard`` and compares later
annotations to it without normalising them; 0.17+ normalises the legacy names in the defaulter.

- ``default_isvc(isvc, profile)``: the mutating webhook (mode names, container name, resource defaults);
- ``validate_isvc(new, old, profile)``: the validating webhook rules that matter here;
- ``raw_objects(isvc, profile)``: the Deployment, Service and HPA the RawDeployment reconciler creates;
- ``knative_service(isvc)``: the Knative Service the Serverless reconciler creates (checked by ``knative.py``);
- ``status(isvc, profile, ...)``: what the controller writes back.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from tests.conftest import fixtures_root

D, V, K, U = "inference_service_defaults.go", "inference_service_validation.go", "constants.go", "utils.go"
P, PC, DR, H, KS, C = ("predictor.go", "predictor_custom.go", "deployment_reconciler.go", "hpa_reconciler.go",
                       "ksvc_reconciler.go", "component.go")
MODE = "serving.kserve.io/deploymentMode"  # K:115
LEGACY = {"RawDeployment": "Standard", "Serverless": "Knative"}  # K:562-566
CONTAINER = "kserve-container"  # PC:69-71 (constants.InferenceServiceContainerName)
SOURCE_URI = "internal.serving.kserve.io/storage-initializer-sourceuri"  # K:157-158
STORAGE_PREFIXES = ("gs://", "s3://", "pvc://", "file://", "https://", "http://", "hdfs://", "webhdfs://", "oci://",
                    "oci+native://", "hf://")  # U:48
AZURE_BLOB = re.compile(r"https://(.+?).blob.core.windows.net/(.+)")  # U:52-53
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # V:46, 55
KPA_METRICS, HPA_METRICS = ("concurrency", "rps"), ("cpu", "memory")  # K:284-294
DEFAULT_CPU_UTILIZATION = 80  # K:296-299
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"  # K:118
AUTOSCALER_CLASSES = ("hpa", "external", "keda", "none")  # K:277-282


class Refused(Exception):
    """What a KServe webhook answers with a denial."""


@dataclass(frozen=True)
class Profile:
    """One KServe (+ Knative) installation: version, ``inferenceservice-config`` and Knative's ``config-features``."""

    name: str
    kserve: tuple[int, int]
    config_file: str | None  # the inferenceservice-config fixture; None = no resource defaults (OpenShift AI)
    knative_features: Mapping[str, str] = field(default_factory=dict)  # beyond stock
    knative_minor: int = 23

    @property
    def new_names(self) -> bool:
        """Whether this KServe records the modes as Standard/Knative (0.16+)."""
        return self.kserve >= (0, 16)

    def config(self, key: str) -> dict[str, Any]:
        return _config(self.config_file).get(key, {}) if self.config_file else {}

    def operator_env(self) -> dict[str, str]:
        """What the cluster administrator tells the operator about this cluster (chart values knative.*)."""
        enabled = [flag for flag, value in self.knative_features.items() if value == "enabled"]
        return {"YOLO_OPERATOR_KNATIVE_FEATURES": ",".join(enabled),
                "YOLO_OPERATOR_KNATIVE_VERSION": f"1.{self.knative_minor}"}


@functools.cache
def _config(file: str) -> dict[str, Any]:
    doc = yaml.safe_load((fixtures_root() / "kserve" / file).read_text())
    return {key: json.loads(value) for key, value in doc["data"].items() if value.strip().startswith("{")}


# The four profiles of issue 10. 0.16 has no fixture of its own: its inferenceservice-config resource block is
# 0.15.2's and 0.20.0's alike. OpenShift AI's overlay has no resource block, and its KnativeServing enables the
# podspec flags for affinity, node selectors and tolerations (OpenShift Serverless 1.35 = Knative 1.15).
PROFILES: tuple[Profile, ...] = (
    Profile("kserve-0.15", (0, 15), "inferenceservice-config-v0.15.2.yaml"),
    Profile("kserve-0.16", (0, 16), "inferenceservice-config-v0.15.2.yaml"),
    Profile("kserve-0.20", (0, 20), "inferenceservice-config-v0.20.0.yaml"),
    Profile("openshift-ai", (0, 15), None, {"kubernetes.podspec-affinity": "enabled",
                                            "kubernetes.podspec-nodeselector": "enabled",
                                            "kubernetes.podspec-tolerations": "enabled"}, knative_minor=15),
)


def _annotations(isvc: Mapping[str, Any]) -> dict[str, str]:
    return dict((isvc.get("metadata") or {}).get("annotations") or {})


def effective_mode(isvc: Mapping[str, Any], profile: Profile) -> str:
    """The mode the controller runs an InferenceService in: "Standard" or "Knative" (after defaulting)."""
    name = _annotations(isvc).get(MODE) or profile.config("deploy").get("defaultDeploymentMode", "Serverless")
    if not profile.new_names and name not in LEGACY:  # 0.15: an unknown name falls back to the default
        name = profile.config("deploy").get("defaultDeploymentMode", "Serverless")
    return LEGACY.get(name, name)


# ----- the mutating webhook ---------------------------------------------------------------------------
def default_isvc(isvc: Mapping[str, Any], profile: Profile) -> dict[str, Any]:
    """``InferenceServiceDefaulter.Default`` for a custom predictor."""
    out = copy.deepcopy(dict(isvc))
    annotations = out.setdefault("metadata", {}).setdefault("annotations", {}) or {}
    out["metadata"]["annotations"] = annotations
    if profile.kserve >= (0, 17) and annotations.get(MODE) in LEGACY:  # D:166-176 (0.17+)
        annotations[MODE] = LEGACY[annotations[MODE]]
    predictor = out.setdefault("spec", {}).setdefault("predictor", {})
    containers = predictor.setdefault("containers", [{}])  # PC:66-68
    if len(containers) == 1 or not containers[0].get("name"):  # PC:69-71
        containers[0]["name"] = CONTAINER
    resources = containers[0].setdefault("resources", {})  # PC:72 -> D:60-93: only what is missing
    defaults = profile.config("inferenceService").get("resource") or {}
    for kind, cpu_key, memory_key in (("requests", "cpuRequest", "memoryRequest"), ("limits", "cpuLimit", "memoryLimit")):
        given = resources.setdefault(kind, {}) or {}
        resources[kind] = given
        for name, key in (("cpu", cpu_key), ("memory", memory_key)):
            if defaults.get(key) and name not in given:
                given[name] = defaults[key]
    return out


# ----- the validating webhook -------------------------------------------------------------------------
def validate_isvc(new: Mapping[str, Any], old: Mapping[str, Any] | None, profile: Profile) -> None:
    """``InferenceServiceValidator.ValidateCreate/ValidateUpdate``: raises ``Refused``."""
    if old is not None:
        # V:94-96 (0.17+) lets a deleted object's updates through; 0.16 refused its own finalizer removal (hung deletes)
        if (new.get("metadata") or {}).get("deletionTimestamp") and profile.kserve >= (0, 17):
            return
        stored = (old.get("status") or {}).get("deploymentMode") or ""
        if stored:  # V:691-700 (0.17+ parses the stored name, K:571-586; 0.15/0.16 compare it as it is)
            stored = LEGACY.get(stored, stored) if profile.kserve >= (0, 17) else stored
            annotation = _annotations(new).get(MODE)
            if annotation is not None and annotation != stored:
                raise Refused(f"update rejected: deploymentMode cannot be changed from '{stored}' to '{annotation}'")
    name = (new.get("metadata") or {}).get("name", "")
    if not ISVC_NAME.match(name):  # V:469-474
        raise Refused(f"the InferenceService {name!r} is invalid: a name must match {ISVC_NAME.pattern}")
    predictor = (new.get("spec") or {}).get("predictor") or {}
    low, high = predictor.get("minReplicas", 1), predictor.get("maxReplicas", 0)  # C:374-388
    if low < 0 or high < 0 or (low > high and high != 0):
        raise Refused("MinReplicas must be <= MaxReplicas (and neither negative)")
    if effective_mode(new, profile) == "Knative":  # V:446-466 -> V:645-669 (KPA)
        if predictor.get("deploymentStrategy") is not None:
            raise Refused("customizing deploymentStrategy is only supported for raw deployment mode")
        metric = predictor.get("scaleMetric") or "concurrency"
        if metric not in KPA_METRICS:  # V:636-643
            raise Refused(f"[{metric}] is not a supported metric")
    autoscaler = _annotations(new).get(AUTOSCALER_CLASS)
    if autoscaler is not None and autoscaler not in AUTOSCALER_CLASSES:  # V:477-491
        raise Refused(f"[{autoscaler}] is not a supported autoscaler class type")
    if effective_mode(new, profile) == "Standard" and autoscaler == "keda":  # V:451-457 -> V:569-616
        _validate_keda(predictor)
    # Standard with hpa: V:523-561 (metric cpu/memory, Resource metrics only), a class the operator never sets


def _validate_keda(predictor: Mapping[str, Any]) -> None:
    """``validateScalingKedaCompExtension`` (V:569-616) for the metric types the operator writes (External)."""
    if predictor.get("scaleMetric") is not None:  # V:570-572
        raise Refused("ScaleMetric is not supported for KEDA")
    for metric in (predictor.get("autoScaling") or {}).get("metrics") or []:
        kind = metric.get("type")
        if kind == "External":  # V:600-612
            external = metric.get("external")
            if external is None:
                raise Refused("metricSpec.External is not set for external metric source type")
            if not (external.get("metric") or {}).get("query"):
                raise Refused("the query should not be empty")
            target = external.get("target") or {}
            if target.get("value") is None:
                raise Refused("the target threshold value should not be empty")
            if target.get("type") == "AverageValue" and target.get("averageValue") is None:
                raise Refused("the AverageValue type should be set")  # V:508-526
        elif kind not in ("Resource", "PodMetric"):  # V:626-628 (Resource/PodMetric: never written by us)
            raise Refused(f"unknown KEDA metric type with value [{kind}].Valid types are Resource,External,PodMetric")


# ----- the controller ---------------------------------------------------------------------------------
def storage_uri(isvc: Mapping[str, Any]) -> str | None:
    """``CustomPredictor.GetStorageUri``: the STORAGE_URI env of kserve-container (PC:75-88)."""
    for container in (isvc["spec"]["predictor"].get("containers") or []):
        if container.get("name") == CONTAINER:
            return next((e.get("value") for e in container.get("env") or [] if e.get("name") == "STORAGE_URI"), None)
    return None


def check_storage_uri(uri: str | None) -> str:
    """``ValidateStorageURI`` (U:411-442), called by the predictor reconciler (P:294-303): '' = supported."""
    if uri is None or not re.search(r"\w+?://", uri):
        return ""
    if "blob.core.windows.net" in uri:
        ok = bool(AZURE_BLOB.match(uri))
    else:
        ok = uri.startswith(STORAGE_PREFIXES)
    return "" if ok else (f"StorageURI not supported: storage URI must start with one of {', '.join(STORAGE_PREFIXES)}"
                          f", got {uri}")


def pod_spec(isvc: Mapping[str, Any], profile: Profile) -> dict[str, Any]:
    """The predictor's pod spec as the controller builds it (P:138-156), storage initializer included (the pod
    mutator's work, driven by the source-URI annotation of P:113-120; image and resources from the config)."""
    predictor = isvc["spec"]["predictor"]
    component_fields = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "canaryTrafficPercent",
                        "deploymentStrategy", "containerConcurrency", "timeout", "logger", "batcher", "labels",
                        "annotations", "autoScaling", "storageUri", "storage", "model", "workerSpec", "name"}
    spec = copy.deepcopy({k: v for k, v in predictor.items() if k not in component_fields})
    for container in spec.get("containers") or []:  # P:151-156
        container.setdefault("env", []).append({"name": "INFERENCE_SERVICE_NAME", "value": isvc["metadata"]["name"]})
    uri = storage_uri(isvc)
    if uri:
        init = profile.config("storageInitializer") or {"image": "kserve/storage-initializer:latest",
                                                        "cpuRequest": "100m", "cpuLimit": "1",
                                                        "memoryRequest": "100Mi", "memoryLimit": "1Gi"}
        spec.setdefault("volumes", []).append({"name": "kserve-provision-location", "emptyDir": {}})  # K:209
        spec.setdefault("initContainers", []).append({
            "name": "storage-initializer", "image": init["image"], "args": [uri, "/mnt/models"],
            "resources": {"requests": {"cpu": init["cpuRequest"], "memory": init["memoryRequest"]},
                          "limits": {"cpu": init["cpuLimit"], "memory": init["memoryLimit"]}},
            "volumeMounts": [{"name": "kserve-provision-location", "mountPath": "/mnt/models"}]})
        for container in spec.get("containers") or []:
            if container.get("name") == CONTAINER:
                container.setdefault("volumeMounts", []).append(
                    {"name": "kserve-provision-location", "mountPath": "/mnt/models", "readOnly": True})
    return spec


def component_name(isvc: Mapping[str, Any]) -> str:
    return f"{isvc['metadata']['name']}-predictor"  # K:799-803


def _meta(isvc: Mapping[str, Any], name: str) -> dict[str, Any]:
    labels = dict(isvc["metadata"].get("labels") or {})
    labels.update({"serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
                   "component": "predictor", "app": f"isvc.{name}"})  # DR:146 (K:755-757)
    return {"name": name, "namespace": isvc["metadata"]["namespace"], "labels": labels}


def raw_objects(isvc: Mapping[str, Any], profile: Profile) -> list[dict[str, Any]]:
    """The Deployment, Service and HPA of ``createRawDefaultDeployment`` (DR:139-175), the predictor Service and
    ``createHPA`` (H:150-184), as the 1.20 API server takes them (HPA: autoscaling/v2beta2)."""
    name = component_name(isvc)
    predictor = isvc["spec"]["predictor"]
    meta = _meta(isvc, name)
    strategy = predictor.get("deploymentStrategy") or {  # DR:162-169, DR:341-349
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {"selector": {"matchLabels": {"app": f"isvc.{name}"}}, "strategy": strategy,
                 "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,  # DR:350-357
                 "template": {"metadata": {"labels": meta["labels"]}, "spec": pod_spec(isvc, profile)}},
    }
    ports = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta,
               "spec": {"selector": {"app": f"isvc.{name}"}, "ports": ports}}
    low = max(int(predictor.get("minReplicas") or 1), 1)  # H:153-158
    high = max(int(predictor.get("maxReplicas") or 0), low)  # H:160-166
    hpa = {"apiVersion": "autoscaling/v2beta2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicas": low, "maxReplicas": high, "metrics": hpa_metrics(predictor)}}
    return [deployment, service, hpa]


def hpa_metrics(predictor: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``getHPAMetrics`` (H:60-148): cpu (default) at scaleTarget or 80 %; memory only with a scaleTarget; any other
    metric (concurrency, rps) gives no metric at all."""
    metric = predictor.get("scaleMetric") or "cpu"
    target = predictor.get("scaleTarget")
    if metric == "cpu":
        utilization = target if target is not None else DEFAULT_CPU_UTILIZATION
    elif metric == "memory" and target is not None:
        utilization = target
    else:
        return []
    return [{"type": "Resource", "resource": {"name": metric, "target": {"type": "Utilization",
                                                                         "averageUtilization": utilization}}}]


def knative_service(isvc: Mapping[str, Any], profile: Profile) -> dict[str, Any]:
    """The ``serving.knative.dev/v1`` Service of ``createKnativeService`` (KS:89-215): the predictor's pod spec
    as the revision template's (the storage initializer is added to the pods later, by the pod mutator)."""
    name = component_name(isvc)
    spec = pod_spec({**isvc, "spec": {"predictor": {k: v for k, v in isvc["spec"]["predictor"].items()}}}, profile)
    spec.pop("initContainers", None)
    spec["volumes"] = [v for v in spec.get("volumes") or [] if v.get("name") != "kserve-provision-location"]
    for container in spec.get("containers") or []:
        container["volumeMounts"] = [m for m in container.get("volumeMounts") or []
                                     if m.get("name") != "kserve-provision-location"]
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": _meta(isvc, name),
            "spec": {"template": {"spec": spec}}}


def status(isvc: Mapping[str, Any], profile: Profile, *, ready: bool, reason: str = "", message: str = "",
           url: str | None = None) -> dict[str, Any]:
    """What the controller writes to ``status``: the mode it runs (0.15: legacy names; 0.16+: Standard/Knative),
    the generation it reconciled, and the predictor's and the whole service's Ready conditions."""
    mode = effective_mode(isvc, profile)
    stored = mode if profile.new_names else {v: k for k, v in LEGACY.items()}[mode]
    value = "True" if ready else "False"
    conditions = [{"type": kind, "status": value, **({"reason": reason} if reason and not ready else {}),
                   **({"message": message} if message and not ready else {})}
                  for kind in ("PredictorReady", "Ready")]
    out = {"deploymentMode": stored, "observedGeneration": isvc["metadata"].get("generation"),
           "conditions": conditions}
    if url:
        out["url"] = url
    return out
