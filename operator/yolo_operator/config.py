"""Operator configuration: constants shared with the image and the chart, and settings read from the environment.

Nothing here reads the environment at import time: ``OperatorConfig.from_env()`` does, when the operator starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

# ----- the YoloDetector resource ----------------------------------------------------------------------
GROUP = "detection.yolo-v7.io"
VERSION = "v1alpha1"
PLURAL = "yolodetectors"
KIND = "YoloDetector"
API_VERSION = f"{GROUP}/{VERSION}"

# ----- KServe's InferenceService -------------------------------------------------------------------
ISVC_GROUP = "serving.kserve.io"
ISVC_VERSION = "v1beta1"
ISVC_PLURAL = "inferenceservices"
ISVC_KIND = "InferenceService"
ISVC_API_VERSION = f"{ISVC_GROUP}/{ISVC_VERSION}"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
KNATIVE_SERVING_GROUP = "serving.knative.dev"
DEPLOYMENT_MODES: tuple[str, ...] = ("RawDeployment", "Standard", "Serverless", "Knative")
SERVERLESS_MODES: frozenset[str] = frozenset({"Serverless", "Knative"})
# KServe >= 0.16 names the modes Standard/Knative (and 0.17+ rewrites the legacy names to them, constants.go:559-586);
# 0.15 knows only RawDeployment/Serverless. Each mode's (current, legacy) name:
STANDARD, KNATIVE = "Standard", "Knative"
LEGACY_MODE_NAMES: dict[str, str] = {STANDARD: "RawDeployment", KNATIVE: "Serverless"}
# operator config `kserve_mode_names`: which names to write. auto = the names KServe stored in the live
# InferenceService's status.deploymentMode; before KServe has stored one, the legacy names (every version knows them).
MODE_NAMINGS: tuple[str, ...] = ("auto", "legacy", "current")

# ----- Knative Serving's config-features flags that gate pod-spec fields of a Serverless predictor --------
# (knative fieldmask.go:242-291; stock: all disabled except volumes-emptydir). The operator is told which ones a
# cluster enables (YOLO_OPERATOR_KNATIVE_FEATURES); a spec that needs one that is off is Valid=False.
KNATIVE_FLAGS: dict[str, str] = {
    "securityContext": "kubernetes.podspec-securitycontext",
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "tolerations": "kubernetes.podspec-tolerations",
    "affinity": "kubernetes.podspec-affinity",
    "priorityClassName": "kubernetes.podspec-priorityclassname",
    "runtimeClassName": "kubernetes.podspec-runtimeclassname",
    "topologySpreadConstraints": "kubernetes.podspec-topologyspreadconstraints",
}
KNATIVE_EMPTYDIR_FLAG = "kubernetes.podspec-volumes-emptydir"
KNATIVE_STOCK_ENABLED: frozenset[str] = frozenset({KNATIVE_EMPTYDIR_FLAG})
# startupProbe is refused by Knative before 1.15 (knative/serving#15309).
KNATIVE_STARTUP_PROBE_VERSION = (1, 15)
DEFAULT_KNATIVE_VERSION = "1.10"  # the oldest supported: no startupProbe unless told otherwise

# ----- what the operator makes besides the InferenceService (issue 16) -----------------------------------
# KServe labels every predictor pod, in both modes, with its InferenceService's name and the component
# (predictor.go:509-510; constants.go:61, 403); the PodMonitor, PodDisruptionBudget and NetworkPolicy select on both.
ISVC_POD_LABEL = f"{ISVC_GROUP}/inferenceservice"
COMPONENT_LABEL, PREDICTOR_COMPONENT = "component", "predictor"
# KServe's autoscaler class annotation (constants.go:118) and its KEDA class (constants.go:253, allowed list :277-282).
AUTOSCALER_CLASS_ANNOTATION = f"{ISVC_GROUP}/autoscalerClass"
AUTOSCALER_CLASS_KEDA = "keda"
KEDA_GROUP = "keda.sh"
# Prometheus Operator's PodMonitor (also OpenShift user-workload monitoring).
MONITORING_GROUP, MONITORING_VERSION, PODMONITOR_PLURAL, PODMONITOR_KIND = (
    "monitoring.coreos.com", "v1", "podmonitors", "PodMonitor")
# PodDisruptionBudget: policy/v1 from Kubernetes 1.21, policy/v1beta1 before (the newest served is used).
POLICY_GROUP, PDB_VERSIONS, PDB_PLURAL, PDB_KIND = "policy", ("v1", "v1beta1"), "poddisruptionbudgets", "PodDisruptionBudget"
NETWORKING_GROUP, NETWORKING_VERSION, NETPOL_PLURAL, NETPOL_KIND = (
    "networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
# Namespaces admitted by every detector's NetworkPolicy besides its own (label kubernetes.io/metadata.name, set by
# Kubernetes >= 1.21): the ingress gateways, Knative's activator, and the monitoring stacks that scrape /metrics.
DEFAULT_CALLER_NAMESPACES: tuple[str, ...] = (
    "istio-system", "knative-serving", "kserve", "openshift-ingress", "openshift-monitoring",
    "openshift-user-workload-monitoring", "monitoring")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# The bearer token of spec.access.tokenSecret, mounted read-only into the predictor here.
AUTH_TOKEN_DIR = "/var/run/yolo-v7/auth"
AUTH_VOLUME = "auth-token"
METRICS_PATH = "/metrics"

# ----- labels the operator puts on what it makes (and finds it again by) ---------------------------
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "yolo-v7-operator"
DETECTOR_LABEL = f"{GROUP}/detector"
VARIANT_LABEL = f"{GROUP}/variant"
# On the InferenceService: the keys of the spec.labels last applied (to remove the ones dropped from the spec).
USER_LABELS_ANNOTATION = f"{GROUP}/user-labels"
# Where kopf keeps its own bookkeeping on YoloDetectors (annotations, not status: the CRD prunes status).
KOPF_ANNOTATION_PREFIX = GROUP

# ----- the predictor image ------------------------------------------------------------------------
DEFAULT_IMAGE = "quay.io/yolo-v7/yolo-v7:1.0.0"
# Agreed with the Dockerfile: the predictor image bakes release weights in at this path.
# `make build WEIGHTS=yolov7` bakes /opt/yolo-v7/weights/yolov7.pt from the v0.1 release.
BAKED_WEIGHTS_DIR = "/opt/yolo-v7/weights"
BAKED_WEIGHTS_PATH = BAKED_WEIGHTS_DIR + "/{variant}.pt"
BAKED_RELEASE = "v0.1"
DEFAULT_BAKED_VARIANTS: tuple[str, ...] = ("yolov7",)
DEFAULT_VARIANT = "yolov7"
DEFAULT_RELEASE = "v0.1"
# Release weights that are not in the image are downloaded by KServe's storage initializer from here
# (`<base>/<version>/<variant>.pt`); point it at a mirror for air-gapped clusters.
DEFAULT_RELEASE_BASE_URL = "https://github.com/WongKinYiu/yolov7/releases/download"
# KServe mounts a storageUri's content here (and sets no other path).
MODEL_MOUNT_PATH = "/mnt/models"

CONTAINER_NAME = "kserve-container"
HTTP_PORT = 8080
GRPC_PORT = 8081
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
# Memory each front-end process adds to a replica (spec.workers > 1: the predictor's --workers), on top of
# resources.memory, which sizes the model process: ~135 MB resident per front end (no torch), its shared
# slots (up to max(maxImagesPerRequest, 2 x maxBatchSize) letterboxed images: 78 MB at 640) and decode room.
FRONT_END_MEMORY = "384Mi"

ENV_PREFIX = "YOLO_OPERATOR_"


def _split(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class OperatorConfig:
    """What the cluster administrator configures (Helm values → environment of the operator pod)."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = ""
    baked_variants: tuple[str, ...] = DEFAULT_BAKED_VARIANTS
    baked_release: str = BAKED_RELEASE
    release_base_url: str = DEFAULT_RELEASE_BASE_URL
    namespaces: tuple[str, ...] = field(default_factory=tuple)  # empty = cluster-wide
    resync_seconds: float = 60.0
    # Every watch is re-established (re-listed) at least this often.
    watch_timeout_seconds: float = 60.0
    liveness: str = "http://0.0.0.0:8080/healthz"
    # Knative config-features flags that this cluster enables (stock Knative: only volumes-emptydir).
    knative_features: frozenset[str] = KNATIVE_STOCK_ENABLED
    knative_version: str = DEFAULT_KNATIVE_VERSION
    kserve_mode_names: str = "auto"
    # Namespaces every detector's NetworkPolicy admits besides its own and spec.access.namespaces.
    caller_namespaces: tuple[str, ...] = DEFAULT_CALLER_NAMESPACES
    # Port of the operator's Prometheus /metrics (0 = off; the chart sets metricsPort).
    metrics_port: int = 0

    def knative_enabled(self, flag: str) -> bool:
        return flag in self.knative_features

    def knative_startup_probe(self) -> bool:
        """Whether the cluster's Knative admits a startupProbe (1.15 and later)."""
        try:
            version = tuple(int(part) for part in self.knative_version.lstrip("v").split(".")[:2])
        except ValueError:
            return False
        return version >= KNATIVE_STARTUP_PROBE_VERSION

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """``YOLO_OPERATOR_IMAGE``, ``_IMAGE_PULL_POLICY``, ``_BAKED_VARIANTS`` (comma list), ``_BAKED_RELEASE``,
        ``_RELEASE_BASE_URL``, ``_NAMESPACES`` (comma list; empty = all), ``_RESYNC_SECONDS``, ``_WATCH_TIMEOUT_SECONDS``,
        ``_LIVENESS``, ``_CALLER_NAMESPACES`` (comma list), ``_METRICS_PORT`` (0 = off), ``_KNATIVE_FEATURES`` (comma list of the config-features flags the cluster enables beyond
        stock Knative's), ``_KNATIVE_VERSION`` (e.g. 1.23), ``_KSERVE_MODE_NAMES`` (auto, legacy or current)."""
        env = os.environ if environ is None else environ
        default = cls()

        def get(key: str, fallback: str) -> str:
            return env.get(ENV_PREFIX + key, "").strip() or fallback

        baked = env.get(ENV_PREFIX + "BAKED_VARIANTS")
        features = env.get(ENV_PREFIX + "KNATIVE_FEATURES")
        callers = env.get(ENV_PREFIX + "CALLER_NAMESPACES")
        naming = get("KSERVE_MODE_NAMES", default.kserve_mode_names)
        if naming not in MODE_NAMINGS:
            raise ValueError(f"{ENV_PREFIX}KSERVE_MODE_NAMES must be one of {', '.join(MODE_NAMINGS)} (got {naming!r})")
        return cls(
            image=get("IMAGE", default.image),
            image_pull_policy=get("IMAGE_PULL_POLICY", default.image_pull_policy),
            baked_variants=default.baked_variants if baked is None else _split(baked),
            baked_release=get("BAKED_RELEASE", default.baked_release),
            release_base_url=get("RELEASE_BASE_URL", default.release_base_url).rstrip("/"),
            namespaces=_split(env.get(ENV_PREFIX + "NAMESPACES", "")),
            resync_seconds=float(get("RESYNC_SECONDS", str(default.resync_seconds))),
            watch_timeout_seconds=float(get("WATCH_TIMEOUT_SECONDS", str(default.watch_timeout_seconds))),
            liveness=get("LIVENESS", default.liveness),
            knative_features=default.knative_features | frozenset(_split(features or "")),
            knative_version=get("KNATIVE_VERSION", default.knative_version),
            kserve_mode_names=naming,
            caller_namespaces=default.caller_namespaces if callers is None else _split(callers),
            metrics_port=int(get("METRICS_PORT", str(default.metrics_port))),
        )
