"""Pure builders: a YoloDetector's spec → the KServe InferenceService that serves it. No I/O.

Everything here is a plain function of its arguments, so the whole manifest can be unit-tested by path
and read by the e2e test and the chart (``predictor_container(...)`` gives the container alone).

The container's arguments are rendered by ``predictor.settings.PredictorSettings.to_args()``: the predictor
declares its flags once, and the operator never spells a flag name itself (KServe's own ``--model_name``,
``--http_port`` and ``--grpc_port`` excepted).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from predictor.settings import MEASURED_ON_CPU, PredictorSettings, front_ends

from . import config as c
from .config import OperatorConfig

# The defaults of every YoloDetector field, in the spec's own shape. The CRD declares the same defaults
# (tests/unit/test_manifests.py checks that they agree), so a spec read from the API server is already
# complete; applying them here again keeps the builders total on partial specs (unit tests, old objects).
# variant/version are deliberately absent: with a storageUri the checkpoint names its own architecture.
# resources.cpuLimit is absent too: it defaults to resources.cpu (``normalise``).
SPEC_DEFAULTS: dict[str, Any] = {
    "thresholds": {"confidence": 0.25, "iou": 0.45, "maxDetections": 300, "classes": []},
    "inputSize": 0,
    "precision": "auto",
    "engine": "auto",
    "workers": 1,
    "batching": {"maxBatchSize": 8, "maxDelayMs": 5, "acceleration": "auto"},
    "limits": {"maxRequestBytes": 32 * 1024 * 1024, "maxImagePixels": 40_000_000, "maxImagesPerRequest": 64,
               "maxQueuedImages": 256},
    "resources": {"gpu": 0, "gpuResourceName": c.DEFAULT_GPU_RESOURCE, "cpu": "2", "memory": "4Gi"},
    "replicas": {"min": 1, "max": 1},
    "deploymentMode": "RawDeployment",
    "monitoring": {"podMonitor": True, "interval": "30s"},
    "access": {"networkPolicy": True},
}


class Spec(dict):
    """A YoloDetector spec with every default applied: made once per reconcile by ``normalise`` and handed to
    every builder and check, none of which applies defaults again."""


def normalise(spec: Mapping[str, Any] | None) -> Spec:
    """A deep copy of ``spec`` with ``SPEC_DEFAULTS`` filled in where a field is absent (or null), and
    ``resources.cpuLimit`` defaulting to ``resources.cpu``. A ``Spec`` is returned as it is."""
    if isinstance(spec, Spec):
        return spec

    def merge(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(given)
        for key, default in defaults.items():
            if out.get(key) is None:
                out[key] = copy.deepcopy(default)
            elif isinstance(default, Mapping) and isinstance(out[key], Mapping):
                out[key] = merge(default, out[key])
        return out

    out = Spec(merge(SPEC_DEFAULTS, copy.deepcopy(dict(spec or {}))))
    resources = out["resources"]
    if isinstance(resources, dict) and resources.get("cpuLimit") is None:
        resources["cpuLimit"] = resources.get("cpu")
    return out


# ----- KServe's deployment modes ------------------------------------------------------------------------
def normal_mode(name: str | None) -> str:
    """KServe >= 0.17's name for a mode (``constants.go:571-586``: RawDeployment → Standard, Serverless → Knative)."""
    legacy = {old: new for new, old in c.LEGACY_MODE_NAMES.items()}
    return legacy.get(name or "", name or "")


def is_serverless(spec: Mapping[str, Any]) -> bool:
    return normal_mode(normalise(spec)["deploymentMode"]) == c.KNATIVE


def stored_mode(isvc: Mapping[str, Any] | None) -> str:
    """The mode name KServe recorded in the InferenceService's status ('' before its first reconcile)."""
    return str(((isvc or {}).get("status") or {}).get("deploymentMode") or "")


def live_mode(isvc: Mapping[str, Any] | None) -> str:
    """The (normalised) mode a live InferenceService runs in: KServe's status, else its annotation; '' for none."""
    if isvc is None:
        return ""
    annotation = ((isvc.get("metadata") or {}).get("annotations") or {}).get(c.DEPLOYMENT_MODE_ANNOTATION)
    return normal_mode(stored_mode(isvc) or annotation or "")


def mode_name(mode: str, isvc: Mapping[str, Any] | None, config: OperatorConfig) -> str:
    """The annotation value to write for ``mode``, in the naming the cluster's KServe uses.

    KServe 0.15 knows only RawDeployment/Serverless; 0.16 stores ``status.deploymentMode: Standard`` and refuses
    any update whose annotation differs from it (``inference_service_validation.go:691-700``); 0.17+ rewrites the
    legacy names (``inference_service_defaults.go:166-176``). So: once KServe stored a mode name, write that naming;
    before, ``config.kserve_mode_names`` (auto = legacy, which every version accepts)."""
    mode = normal_mode(mode)
    stored = stored_mode(isvc)
    if stored in c.DEPLOYMENT_MODES:
        legacy = stored in c.LEGACY_MODE_NAMES.values()
    else:
        legacy = config.kserve_mode_names != "current"
    return c.LEGACY_MODE_NAMES.get(mode, mode) if legacy else mode


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
    spec = normalise(spec)
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
        workers=int(spec["workers"]),
        auth_token_file=f"{c.AUTH_TOKEN_DIR}/{token['key']}" if (token := token_secret(spec)) else "",
    )


# ----- the pieces of the InferenceService ------------------------------------------------------------
def container_args(name: str, spec: Mapping[str, Any], config: OperatorConfig) -> list[str]:
    """KServe's model-server flags, then every predictor option (``PredictorSettings.to_args()``). On the CPU the
    batch size and delay are left out while at their defaults: the predictor then measures whether batching pays
    (``predictor.batch_plan``); any other value is passed, and wins."""
    settings = predictor_settings(spec, config)
    return [
        f"--model_name={name}",
        f"--http_port={c.HTTP_PORT}",
        f"--grpc_port={c.GRPC_PORT}",
        *settings.to_args(only_changed_for=MEASURED_ON_CPU if settings.device == "cpu" else ()),
    ]


def container_resources(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Every request and limit written out: cpu (limit ``cpuLimit``, default the request) and memory, plus the GPUs
    (an extended resource is set as a limit). KServe's defaulting webhook fills only what is missing, from its
    ``inferenceservice-config`` (``inference_service_defaults.go:77-93``: stock cpuLimit "1"), which would put a
    limit under our request and have every pod refused."""
    spec = normalise(spec)
    resources = spec["resources"]
    memory = replica_memory(spec)
    requests = {"cpu": str(resources["cpu"]), "memory": memory}
    limits: dict[str, str] = {"cpu": str(resources["cpuLimit"]), "memory": memory}
    gpus = int(resources["gpu"])
    if gpus > 0:
        limits[resources["gpuResourceName"]] = str(gpus)
    return {"requests": requests, "limits": limits}


def front_end_processes(spec: Mapping[str, Any]) -> int:
    """Front-end processes per replica (0: one process serves alone): the predictor's own count for
    ``spec.workers`` (``predictor.settings.front_ends``), auto counting the cores of the CPU limit as the
    predictor does inside the pod (cgroup quota)."""
    spec = normalise(spec)
    resources = spec["resources"]
    device = "cuda" if int(resources["gpu"]) > 0 else "cpu"
    cores = max(1, math.ceil(parse_quantity(str(resources["cpuLimit"]))))  # rounded up: 1500m → 2
    count = front_ends(int(spec["workers"]), device, cores)
    return count if count > 1 else 0


def replica_memory(spec: Mapping[str, Any]) -> str:
    """The memory request and limit of a replica: ``resources.memory`` (the model process) plus
    ``FRONT_END_MEMORY`` per front-end process."""
    spec = normalise(spec)
    memory = str(spec["resources"]["memory"])
    count = front_end_processes(spec)
    if count == 0:
        return memory
    total = parse_quantity(memory) + count * parse_quantity(c.FRONT_END_MEMORY)
    mebibytes = total / (1 << 20)
    return f"{int(mebibytes)}Mi" if mebibytes == int(mebibytes) else str(math.ceil(total))


def container_security_context() -> dict[str, Any]:
    """OpenShift restricted-v2 compatible: no fixed uid/gid (the platform assigns them). Container-level only:
    Knative refuses a pod-level securityContext unless kubernetes.podspec-securitycontext is on (fieldmask.go:260)."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_ports(serverless: bool) -> list[dict[str, Any]]:
    """HTTP (KServe's ``http1``) and gRPC (``h2c``). Knative allows one port only: Serverless gets HTTP."""
    ports = [{"name": "http1", "containerPort": c.HTTP_PORT, "protocol": "TCP"}]
    if not serverless:
        ports.append({"name": "h2c", "containerPort": c.GRPC_PORT, "protocol": "TCP"})
    return ports


def _probe(path: str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": c.HTTP_PORT}, **timing}


STARTUP_PERIOD_SECONDS, STARTUP_FAILURES = 5, 60  # up to 5 minutes to load the model


def container_probes(serverless: bool, config: OperatorConfig) -> dict[str, Any]:
    """Startup, liveness and readiness probes on the v2 health routes. Where Knative refuses a startupProbe (before
    1.15), the liveness probe waits out the same start-up budget instead."""
    probes: dict[str, Any] = {
        "livenessProbe": _probe("/v2/health/live", periodSeconds=20, failureThreshold=3, timeoutSeconds=5),
        "readinessProbe": _probe("/v2/health/ready", periodSeconds=5, failureThreshold=3, timeoutSeconds=5),
    }
    if serverless and not config.knative_startup_probe():
        probes["livenessProbe"]["initialDelaySeconds"] = STARTUP_PERIOD_SECONDS * STARTUP_FAILURES
    else:
        probes["startupProbe"] = _probe("/v2/health/live", periodSeconds=STARTUP_PERIOD_SECONDS,
                                        failureThreshold=STARTUP_FAILURES, timeoutSeconds=5)
    return probes


def predictor_container(name: str, spec: Mapping[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The custom predictor's one container (``spec.predictor.containers[0]``)."""
    spec = normalise(spec)
    serverless = is_serverless(spec)
    source = model_source(spec, config)
    env = [{"name": "HOME", "value": "/tmp"}]
    if source["storageUri"]:
        # KServe's documented way for a custom container: its storage initializer downloads STORAGE_URI
        # to /mnt/models before the container starts.
        env.append({"name": "STORAGE_URI", "value": source["storageUri"]})
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    token = token_secret(spec)
    if token:  # the predictor reads the bearer token from this file (--auth_token_file, predictor/auth.py)
        mounts.append({"name": c.AUTH_VOLUME, "mountPath": c.AUTH_TOKEN_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": c.CONTAINER_NAME,
        "image": spec.get("image") or config.image,
        "command": ["python", "-m", "predictor"],
        "args": container_args(name, spec, config),
        "env": env,
        "ports": container_ports(serverless),
        "resources": container_resources(spec),
        **container_probes(serverless, config),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    if config.image_pull_policy:
        container["imagePullPolicy"] = config.image_pull_policy
    return container


# Predictor fields this operator owns. An owned field that the spec leaves unset is rendered as None, which
# a JSON merge patch turns into "remove": a manual edit or a field dropped from the spec is undone.
# securityContext (pod level) is owned so that the one older operators wrote is removed (Knative refuses it).
OWNED_PREDICTOR_FIELDS: tuple[str, ...] = (
    "containers", "volumes", "securityContext", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget",
    "canaryTrafficPercent", "nodeSelector", "tolerations", "serviceAccountName", "deploymentStrategy",
    # issue 16: scheduling, pull secrets, queue-depth autoscaling (KServe's autoScaling, component.go:102-104)
    "affinity", "topologySpreadConstraints", "priorityClassName", "runtimeClassName", "imagePullSecrets",
    "autoScaling",
)
# Pod-spec fields passed through from the spec as they are (validated by the API server on the pods, and by
# Knative's field mask when Serverless: validation._check_mode).
SCHEDULING_FIELDS: tuple[str, ...] = (
    "affinity", "topologySpreadConstraints", "priorityClassName", "runtimeClassName", "imagePullSecrets")


def token_secret(spec: Mapping[str, Any]) -> dict[str, str] | None:
    """``access.tokenSecret`` as ``{"name", "key"}`` (key default ``token``), or None when there is none."""
    secret = (normalise(spec).get("access") or {}).get("tokenSecret") or {}
    if not secret.get("name"):
        return None
    return {"name": str(secret["name"]), "key": str(secret.get("key") or "token")}


def queue_depth_query(name: str, namespace: str) -> str:
    """The PromQL KEDA runs for ``autoscaling.queueDepth``: images admitted now (decoding, queued or in a batch) over
    all the detector's predictor pods. KEDA divides it by the replica count and compares with the target (its
    default metric type for a trigger is AverageValue; KServe sets no other for External metrics)."""
    return (f'sum(yolo_images_in_flight{{namespace="{namespace}",'
            f'{c.ISVC_POD_LABEL.replace(".", "_").replace("/", "_")}="{name}"}})')


def keda_autoscaling(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """KServe's ``autoScaling`` for ``autoscaling.queueDepth``: one External metric, backend prometheus
    (component.go:134-170, 203-214, 279-292), target type Value as the KEDA validation wants it
    (inference_service_validation.go:600-612). None when the spec does not scale on queue depth."""
    depth = (normalise(spec).get("autoscaling") or {}).get("queueDepth")
    if not depth:
        return None
    metric = {"backend": "prometheus", "serverAddress": str(depth["serverAddress"]),
              "query": str(depth.get("query") or queue_depth_query(name, namespace))}
    return {"metrics": [{"type": "External", "external": {
        "metric": metric, "target": {"type": "Value", "value": str(int(depth.get("target") or 16))}}}]}


def deployment_strategy(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """``rollout.strategy`` as a Deployment strategy (RawDeployment only; KServe's default is RollingUpdate
    25%/25%, ``deployment_reconciler.go:341-349``, which a one-replica GPU detector cannot roll without a spare
    GPU: ``Recreate`` or ``maxSurge: 0`` can)."""
    strategy = (normalise(spec).get("rollout") or {}).get("strategy")
    if not strategy:
        return None
    kind = strategy.get("type") or "RollingUpdate"
    if kind == "Recreate":
        return {"type": "Recreate"}
    rolling = {key: strategy[key] for key in ("maxSurge", "maxUnavailable") if strategy.get(key) is not None}
    return {"type": "RollingUpdate", **({"rollingUpdate": rolling} if rolling else {})}


def predictor_spec(name: str, spec: Mapping[str, Any], config: OperatorConfig, namespace: str = "") -> dict[str, Any]:
    """``spec.predictor`` of the InferenceService (owned fields only; unset ones are None). ``namespace``: the
    detector's (the default queue-depth query selects on it)."""
    spec = normalise(spec)
    autoscaling = spec.get("autoscaling") or {}
    rollout = spec.get("rollout") or {}
    predictor: dict[str, Any] = dict.fromkeys(OWNED_PREDICTOR_FIELDS)
    predictor.update(
        containers=[predictor_container(name, spec, config)],
        volumes=[{"name": "tmp", "emptyDir": {}}],
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
    predictor["deploymentStrategy"] = deployment_strategy(spec)
    for key in SCHEDULING_FIELDS:
        if spec.get(key):
            predictor[key] = copy.deepcopy(spec[key])
    predictor["autoScaling"] = keda_autoscaling(name, namespace, spec)
    token = token_secret(spec)
    if token:
        predictor["volumes"].append({"name": c.AUTH_VOLUME, "secret": {
            "secretName": token["name"], "items": [{"key": token["key"], "path": token["key"]}]}})
    return predictor


def labels(name: str, spec: Mapping[str, Any], config: OperatorConfig) -> dict[str, str]:
    """The user's extra labels, then the operator's own (which win). Nothing else: KServe copies the
    InferenceService's labels into the pod template, so any other label change would restart the pods."""
    spec = normalise(spec)
    source = model_source(spec, config)
    out = {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}
    out.update({c.MANAGED_BY_LABEL: c.MANAGED_BY, c.DETECTOR_LABEL: name})
    if source["variant"]:
        out[c.VARIANT_LABEL] = source["variant"]
    return out


def annotations(spec: Mapping[str, Any], mode: str | None = None) -> dict[str, str | None]:
    """The user's extra annotations, then KServe's deployment mode (``mode``: the name to write, default the
    spec's) and the keys of the user's labels, so that a label dropped from spec.labels is removed later (None,
    i.e. absent, when there are none)."""
    spec = normalise(spec)
    out: dict[str, str | None] = {str(k): str(v) for k, v in (spec.get("annotations") or {}).items()}
    out[c.DEPLOYMENT_MODE_ANNOTATION] = mode or spec["deploymentMode"]
    out[c.USER_LABELS_ANNOTATION] = ",".join(sorted(str(k) for k in spec.get("labels") or {})) or None
    # queue-depth autoscaling: KServe's KEDA class (constants.go:118, 253); None removes it when dropped
    queue_depth = (spec.get("autoscaling") or {}).get("queueDepth")
    if queue_depth:
        out[c.AUTOSCALER_CLASS_ANNOTATION] = c.AUTOSCALER_CLASS_KEDA
    else:  # the user's own class (e.g. external), else none: a KEDA class left from queueDepth is removed
        out.setdefault(c.AUTOSCALER_CLASS_ANNOTATION, None)
    return out


def build_inference_service(
    name: str, namespace: str, spec: Mapping[str, Any], config: OperatorConfig, live: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The complete InferenceService for a YoloDetector (owner reference added later). ``live``: the existing
    InferenceService, whose recorded mode name decides which naming to write (``mode_name``)."""
    spec = normalise(spec)
    return {
        "apiVersion": c.ISVC_API_VERSION,
        "kind": c.ISVC_KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(name, spec, config),
            "annotations": annotations(spec, mode_name(spec["deploymentMode"], live, config)),
        },
        "spec": {"predictor": predictor_spec(name, spec, config, namespace)},
    }


def stale_labels(desired: Mapping[str, str], live: Mapping[str, Any], owner_labels: Mapping[str, str]) -> list[str]:
    """Labels on the live InferenceService that the operator put there and the spec no longer asks for: the user
    labels of the last apply (``USER_LABELS_ANNOTATION``), and the owner's own labels that older operators copied
    (``kopf.adopt``) and that still carry the owner's value."""
    meta = live.get("metadata") or {}
    current = meta.get("labels") or {}
    applied = [k for k in str((meta.get("annotations") or {}).get(c.USER_LABELS_ANNOTATION) or "").split(",") if k]
    copied = [k for k, v in owner_labels.items() if current.get(k) == v]
    return sorted({k for k in (*applied, *copied) if k in current and k not in desired})


def without_nulls(obj: Any) -> Any:
    """``obj`` with None-valued keys dropped (the body to POST; a merge patch keeps them as deletions)."""
    if isinstance(obj, Mapping):
        return {k: without_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [without_nulls(v) for v in obj]
    return obj


QUANTITY_KEYS = frozenset({"requests", "limits"})


def same_quantity(a: Any, b: Any) -> bool:
    """Whether two Kubernetes quantities are equal ("0.5" and KServe's round-tripped "500m" are)."""
    try:
        return parse_quantity(a) == parse_quantity(b)
    except (ValueError, TypeError):
        return a == b


def differs(desired: Any, live: Any, *, quantities: bool = False) -> bool:
    """Whether ``live`` lacks something ``desired`` says (None = must be absent).

    Mappings compare as subsets (the API server and KServe's webhook add defaults we do not own), lists
    element-wise with the same length, scalars by equality; values under ``requests``/``limits`` as quantities.
    """
    if desired is None:
        return live is not None
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return True
        return any(differs(value, live.get(key), quantities=quantities or key in QUANTITY_KEYS)
                   for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return True
        return any(differs(d, item, quantities=quantities) for d, item in zip(desired, live, strict=True))
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is not live
    if quantities:
        return not same_quantity(desired, live)
    return desired != live


def mode_differs(desired: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """Whether the live deploymentMode annotation must be rewritten: when KServe recorded a mode, exactly its name
    (0.16 refuses any other); before, only a different mode (0.17+ rewrites the names on its own)."""
    wanted = desired["metadata"]["annotations"][c.DEPLOYMENT_MODE_ANNOTATION]
    have = ((live.get("metadata") or {}).get("annotations") or {}).get(c.DEPLOYMENT_MODE_ANNOTATION)
    if stored_mode(live):
        return have != wanted
    return normal_mode(have) != normal_mode(wanted)


def model_status(spec: Mapping[str, Any], config: OperatorConfig) -> dict[str, str]:
    """``status.model``: what is being served (variant/version, or the custom storageUri)."""
    spec = normalise(spec)
    source = model_source(spec, config)
    if spec.get("storageUri"):
        out = {"storageUri": source["storageUri"]}
        if source["variant"]:
            out["variant"] = source["variant"]
        return out
    return {"variant": source["variant"], "version": source["version"]}
