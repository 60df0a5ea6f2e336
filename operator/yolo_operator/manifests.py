"""Pure builders: a YoloDetector's spec → the KServe InferenceService that serves it. No I/O.

Everything here is a plain function of its arguments, so the whole manifest can be unit-tested by path
and read by the e2e test and the chart (``predictor_container(...)`` gives the container alone).

The container's arguments are rendered by ``predictor.settings.PredictorSettings.to_args()``: the predictor
declares its flags once, and the operator never spells a flag name itself (KServe's own ``--model_name``,
``--http_port`` and ``--grpc_port`` excepted).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from predictor.settings import PredictorSettings

from . import config as c
from .config import OperatorConfig

# The defaults of every YoloDetector field, in the spec's own shape. The CRD declares the same defaults
# (tests/unit/test_manifests.py checks that they agree), so a spec read from the API server is already
# complete; applying them here again keeps the builders total on partial specs (unit tests, old objects).
# variant/version are deliberately absent: with a storageUri the checkpoint names its own architecture.
SPEC_DEFAULTS: dict[str, Any] = {
    "thresholds": {"confidence": 0.25, "iou": 0.45, "maxDetections": 300, "classes": []},
    "inputSize": 0,
    "precision": "auto",
    "engine": "auto",
    "batching": {"maxBatchSize": 8, "maxDelayMs": 5, "acceleration": "auto"},
    "limits": {"maxRequestBytes": 32 * 1024 * 1024, "maxImagePixels": 40_000_000, "maxImagesPerRequest": 64,
               "maxQueuedImages": 256},
    "resources": {"gpu": 0, "gpuResourceName": c.DEFAULT_GPU_RESOURCE, "cpu": "2", "memory": "4Gi"},
    "replicas": {"min": 1, "max": 1},
    "deploymentMode": "RawDeployment",
}


def with_defaults(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deep copy of ``spec`` with ``SPEC_DEFAULTS`` filled in where a field is absent (or null)."""

    def merge(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(dict(given))
        for key, default in defaults.items():
            if out.get(key) is None:
                out[key] = copy.deepcopy(default)
            elif isinstance(default, Mapping) and isinstance(out[key], Mapping):
                out[key] = merge(default, out[key])
        return out

    return merge(SPEC_DEFAULTS, spec or {})


# ----- the model: which weights, from where ---------------------------------------------------------
def model_source(spec: Mapping[str, Any], config: OperatorConfig) -> dict[str, str]:
    """Where the predictor finds its checkpoint.

    Returns ``{"variant", "version", "storageUri", "weights"}`` (empty strings where not applicable):
    - ``spec.storageUri`` (custom weights): KServe's storage initializer fetches it to /mnt/models;
      the variant is the spec's, or empty = detected from the checkpoint.
    - a release (variant + version) that the image bakes in: the file inside the image, no download.
    - any other release: the official release asset, fetched by the storage initializer from
      ``config.release_base_url`` (a mirror in air-gapped clusters).
    """
    storage_uri = (spec.get("storageUri") or "").strip()
    variant = spec.get("variant") or ""
    if storage_uri:
        return {"variant": variant, "version": "", "storageUri": storage_uri, "weights": c.MODEL_MOUNT_PATH}
    variant = variant or c.DEFAULT_VARIANT
    version = spec.get("version") or c.DEFAULT_RELEASE
    if version == config.baked_release and variant in config.baked_variants:
        return {"variant": variant, "version": version, "storageUri": "",
                "weights": c.BAKED_WEIGHTS_PATH.format(variant=variant)}
    return {
        "variant": variant,
        "version": version,
        "storageUri": f"{config.release_base_url}/{version}/{variant}.pt",
        "weights": f"{c.MODEL_MOUNT_PATH}/{variant}.pt",
    }


def predictor_settings(spec: Mapping[str, Any], config: OperatorConfig) -> PredictorSettings:
    """The predictor's settings for ``spec``. Raises ``predictor.settings.SettingsError`` when out of bounds."""
    spec = with_defaults(spec)
    source = model_source(spec, config)
    thresholds, batching, limits, resources = spec["thresholds"], spec["batching"], spec["limits"], spec["resources"]
    return PredictorSettings(
        weights=source["weights"],
        variant=source["variant"],
        device="cuda" if int(resources["gpu"]) > 0 else "cpu",
        precision=spec["precision"],
        engine=spec["engine"],
        accel=str(batching["acceleration"]),
        input_size=int(spec["inputSize"]),
        conf_threshold=float(thresholds["confidence"]),
        iou_threshold=float(thresholds["iou"]),
        max_detections=int(thresholds["maxDetections"]),
        classes=tuple(str(item) for item in thresholds["classes"]),
        max_batch_size=int(batching["maxBatchSize"]),
        max_batch_delay_ms=float(batching["maxDelayMs"]),
        max_request_bytes=int(limits["maxRequestBytes"]),
        max_image_pixels=int(limits["maxImagePixels"]),
        max_images_per_request=int(limits["maxImagesPerRequest"]),
        max_queued_images=int(limits["maxQueuedImages"]),
    )


# ----- the pieces of the InferenceService ------------------------------------------------------------
def container_args(name: str, spec: Mapping[str, Any], config: OperatorConfig) -> list[str]:
    """KServe's model-server flags, then every predictor option (``PredictorSettings.to_args()``)."""
    return [
        f"--model_name={name}",
        f"--http_port={c.HTTP_PORT}",
        f"--grpc_port={c.GRPC_PORT}",
        *predictor_settings(spec, config).to_args(),
    ]


def container_resources(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Requests cpu + memory; limits memory (+ the GPUs: an extended resource is set as a limit)."""
    resources = with_defaults(spec)["resources"]
    requests = {"cpu": str(resources["cpu"]), "memory": str(resources["memory"])}
    limits: dict[str, str] = {"memory": str(resources["memory"])}
    gpus = int(resources["gpu"])
    if gpus > 0:
        limits[resources["gpuResourceName"]] = str(gpus)
    return {"requests": requests, "limits": limits}


def container_security_context() -> dict[str, Any]:
    """OpenShift restricted-v2 compatible: no fixed uid/gid (the platform assigns them)."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_ports(deployment_mode: str) -> list[dict[str, Any]]:
    """HTTP (KServe's ``http1``) and gRPC (``h2c``). Knative allows one port only: Serverless gets HTTP."""
    ports = [{"name": "http1", "containerPort": c.HTTP_PORT, "protocol": "TCP"}]
    if deployment_mode not in c.SERVERLESS_MODES:
        ports.append({"name": "h2c", "containerPort": c.GRPC_PORT, "protocol": "TCP"})
    return ports


def _probe(path: str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": c.HTTP_PORT}, **timing}


def predictor_container(name: str, spec: Mapping[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The custom predictor's one container (``spec.predictor.containers[0]``)."""
    spec = with_defaults(spec)
    source = model_source(spec, config)
    env = [{"name": "HOME", "value": "/tmp"}]
    if source["storageUri"]:
        # KServe's documented way for a custom container: its storage initializer downloads STORAGE_URI
        # to /mnt/models before the container starts.
        env.append({"name": "STORAGE_URI", "value": source["storageUri"]})
    container: dict[str, Any] = {
        "name": c.CONTAINER_NAME,
        "image": spec.get("image") or config.image,
        "command": ["python", "-m", "predictor"],
        "args": container_args(name, spec, config),
        "env": env,
        "ports": container_ports(spec["deploymentMode"]),
        "resources": container_resources(spec),
        "startupProbe": _probe("/v2/health/live", periodSeconds=5, failureThreshold=60, timeoutSeconds=5),
        "livenessProbe": _probe("/v2/health/live", periodSeconds=20, failureThreshold=3, timeoutSeconds=5),
        "readinessProbe": _probe("/v2/health/ready", periodSeconds=5, failureThreshold=3, timeoutSeconds=5),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if config.image_pull_policy:
        container["imagePullPolicy"] = config.image_pull_policy
    return container


# Predictor fields this operator owns. An owned field that the spec leaves unset is rendered as None, which
# a JSON merge patch turns into "remove": a manual edit or a field dropped from the spec is undone.
OWNED_PREDICTOR_FIELDS: tuple[str, ...] = (
    "containers", "volumes", "securityContext", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget",
    "canaryTrafficPercent", "nodeSelector", "tolerations", "serviceAccountName",
)


def predictor_spec(name: str, spec: Mapping[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """``spec.predictor`` of the InferenceService (owned fields only; unset ones are None)."""
    spec = with_defaults(spec)
    autoscaling = spec.get("autoscaling") or {}
    rollout = spec.get("rollout") or {}
    predictor: dict[str, Any] = dict.fromkeys(OWNED_PREDICTOR_FIELDS)
    predictor.update(
        containers=[predictor_container(name, spec, config)],
        volumes=[{"name": "tmp", "emptyDir": {}}],
        securityContext={"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        minReplicas=int(spec["replicas"]["min"]),
        maxReplicas=int(spec["replicas"]["max"]),
    )
    if autoscaling.get("metric"):
        predictor["scaleMetric"] = autoscaling["metric"]
    if autoscaling.get("target") is not None:
        predictor["scaleTarget"] = int(autoscaling["target"])
    if rollout.get("canaryPercent") is not None:
        predictor["canaryTrafficPercent"] = int(rollout["canaryPercent"])
    if spec.get("nodeSelector"):
        predictor["nodeSelector"] = dict(spec["nodeSelector"])
    if spec.get("tolerations"):
        predictor["tolerations"] = [dict(item) for item in spec["tolerations"]]
    if spec.get("serviceAccountName"):
        predictor["serviceAccountName"] = spec["serviceAccountName"]
    return predictor


def labels(name: str, spec: Mapping[str, Any], config: OperatorConfig) -> dict[str, str]:
    """The user's extra labels, then the operator's own (which win)."""
    source = model_source(with_defaults(spec), config)
    out = {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}
    out.update({c.MANAGED_BY_LABEL: c.MANAGED_BY, c.DETECTOR_LABEL: name})
    if source["variant"]:
        out[c.VARIANT_LABEL] = source["variant"]
    return out


def annotations(spec: Mapping[str, Any]) -> dict[str, str]:
    """The user's extra annotations, then KServe's deployment mode (which wins)."""
    out = {str(k): str(v) for k, v in (spec.get("annotations") or {}).items()}
    out[c.DEPLOYMENT_MODE_ANNOTATION] = with_defaults(spec)["deploymentMode"]
    return out


def build_inference_service(
    name: str, namespace: str, spec: Mapping[str, Any], config: OperatorConfig
) -> dict[str, Any]:
    """The complete InferenceService for a YoloDetector (owner reference added later by ``kopf.adopt``)."""
    return {
        "apiVersion": c.ISVC_API_VERSION,
        "kind": c.ISVC_KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(name, spec, config),
            "annotations": annotations(spec),
        },
        "spec": {"predictor": predictor_spec(name, spec, config)},
    }


def without_nulls(obj: Any) -> Any:
    """``obj`` with None-valued keys dropped (the body to POST; a merge patch keeps them as deletions)."""
    if isinstance(obj, Mapping):
        return {k: without_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [without_nulls(v) for v in obj]
    return obj


def differs(desired: Any, live: Any) -> bool:
    """Whether ``live`` lacks something ``desired`` says (None = must be absent).

    Mappings compare as subsets (the API server and KServe's webhook add defaults we do not own), lists
    element-wise with the same length, scalars by equality.
    """
    if desired is None:
        return live is not None
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return True
        return any(differs(value, live.get(key)) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return True
        return any(differs(d, item) for d, item in zip(desired, live, strict=True))
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is not live
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return desired != live
    return desired != live


def model_status(spec: Mapping[str, Any], config: OperatorConfig) -> dict[str, str]:
    """``status.model``: what is being served (variant/version, or the custom storageUri)."""
    source = model_source(with_defaults(spec), config)
    if spec.get("storageUri"):
        out = {"storageUri": source["storageUri"]}
        if source["variant"]:
            out["variant"] = source["variant"]
        return out
    return {"variant": source["variant"], "version": source["version"]}
