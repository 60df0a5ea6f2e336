"""Pure cross-field checks of a YoloDetector spec: what the CRD's OpenAPI schema cannot say.

``validate(...)`` returns a list of ``Problem``s; errors make the detector Valid=False (and leave any existing
InferenceService as it is), warnings are reported but do not block. No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from predictor.settings import GPU_ACCELERATIONS, VARIANT_NAMES, SettingsError
from predictor.yolov7.names import COCO_NAMES  # the class names of the official release weights

from . import config as c
from . import manifests
from .config import OperatorConfig

ERROR = "error"
WARNING = "warning"

# Exactly KServe's SupportedStorageURIPrefixList (v0.20.0 utils.go:48; Azure Blob goes as https://<account>.blob.
# core.windows.net/..., utils.go:52-53, 431-436). Anything else fails the predictor's reconcile (predictor.go:300).
STORAGE_SCHEMES: tuple[str, ...] = ("gs", "s3", "pvc", "file", "https", "http", "hdfs", "webhdfs", "oci",
                                    "oci+native", "hf")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_VERSION = re.compile(r"^v\d+(\.\d+)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")
# KServe names the predictor's Service "<name>-predictor" (constants.go:799-803), and Knative's route host label
# "<name>-predictor-<namespace>": each one DNS label.
DNS_LABEL_MAX = 63
PREDICTOR_SUFFIX = "-predictor"
RESERVED_LABELS = (c.MANAGED_BY_LABEL, c.DETECTOR_LABEL, c.VARIANT_LABEL)
RESERVED_ANNOTATIONS = (c.DEPLOYMENT_MODE_ANNOTATION, c.USER_LABELS_ANNOTATION)
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")  # a Secret's data key (Kubernetes' IsConfigMapKey)


@dataclass(frozen=True)
class Problem:
    field: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == ERROR]


def warnings(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == WARNING]


def summary(problems: list[Problem]) -> str:
    return "; ".join(str(p) for p in problems)


def _qualified_key(key: str) -> bool:
    """A label/annotation key: ``[prefix/]name``, prefix a DNS subdomain ≤ 253, name ≤ 63."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_classes(classes: Any, release: bool) -> list[Problem]:
    where = "thresholds.classes"
    if not isinstance(classes, list):
        return [Problem(where, "must be a list of class ids or names")]
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, item in enumerate(classes):
        at = f"{where}[{index}]"
        if isinstance(item, bool) or not isinstance(item, int | str):
            problems.append(Problem(at, f"must be a class id or a class name (got {item!r})"))
            continue
        text = str(item).strip()
        if not text:
            problems.append(Problem(at, "must not be empty"))
        elif "," in text:
            problems.append(Problem(at, f"must be one class, without commas (got {text!r})"))
        elif text.lstrip("-").isdigit():
            if int(text) < 0:
                problems.append(Problem(at, f"class id must be >= 0 (got {text})"))
            elif release and int(text) >= len(COCO_NAMES):
                problems.append(Problem(at, f"class id must be < {len(COCO_NAMES)} for the COCO release weights "
                                            f"(got {text})"))
        elif release and text not in COCO_NAMES:
            problems.append(Problem(at, f"{text!r} is not a COCO class name of the release weights"))
        if text in seen:
            problems.append(Problem(at, f"{text!r} is listed twice", WARNING))
        seen.add(text)
    return problems


def _check_map(where: str, mapping: Any, reserved: tuple[str, ...], check_values: bool) -> list[Problem]:
    if mapping is None:
        return []
    if not isinstance(mapping, Mapping):
        return [Problem(where, "must be a map of strings")]
    problems: list[Problem] = []
    for key, value in mapping.items():
        if key in reserved:
            problems.append(Problem(f"{where}[{key}]", "is set by the operator and cannot be overridden"
                                    + (" (use spec.deploymentMode)" if key == c.DEPLOYMENT_MODE_ANNOTATION else "")))
        elif not _qualified_key(str(key)):
            problems.append(Problem(f"{where}[{key}]", "is not a valid key ([prefix/]name)"))
        elif check_values and (len(str(value)) > 63 or not _LABEL_VALUE.match(str(value))):
            problems.append(Problem(f"{where}[{key}]", f"{value!r} is not a valid label value"))
    return problems


def _check_name(name: str, namespace: str, serverless: bool) -> list[Problem]:
    if not _ISVC_NAME.match(name):
        return [Problem("metadata.name", "must start with a letter and hold only lower-case letters, digits and '-' "
                                         "(KServe's InferenceService name rule)")]
    host = f"{name}{PREDICTOR_SUFFIX}" + (f"-{namespace}" if serverless else "")
    if len(host) > DNS_LABEL_MAX:
        what = "the Knative host label <name>-predictor-<namespace>" if serverless else "the Service <name>-predictor"
        return [Problem("metadata.name", f"too long: {what} ({host!r}, {len(host)} characters) must fit in one "
                                         f"{DNS_LABEL_MAX}-character DNS label")]
    return []


def _check_mode(spec: Mapping[str, Any], config: OperatorConfig, live: Mapping[str, Any] | None) -> list[Problem]:
    """Deployment-mode rules of KServe and Knative that the CRD cannot say."""
    problems: list[Problem] = []
    mode = spec["deploymentMode"]
    serverless = manifests.is_serverless(spec)
    running = manifests.live_mode(live)
    if running and running != manifests.normal_mode(mode):
        # KServe refuses any update whose mode differs from the recorded one (inference_service_validation.go:691-700)
        problems.append(Problem("deploymentMode", f"cannot change on a live detector (KServe refuses it): its "
                                                  f"InferenceService runs in {running} mode; set it back, or delete "
                                                  f"and re-create the detector to switch to {mode}"))
    metric = (spec.get("autoscaling") or {}).get("metric")
    target = (spec.get("autoscaling") or {}).get("target")
    if serverless and metric in ("cpu", "memory"):  # KPA metrics only (inference_service_validation.go:636-660)
        problems.append(Problem("autoscaling.metric", f"{metric} is not a Knative (KPA) metric: {mode} scales on "
                                                      "concurrency or rps"))
    if not serverless and metric in ("concurrency", "rps"):  # HPA metrics only (hpa_reconciler.go:105-146)
        problems.append(Problem("autoscaling.metric", f"{metric} is a Knative metric: {mode} scales on cpu or memory "
                                                      "(KServe would make an HPA without any metric)"))
    if not serverless and metric == "memory" and target is None:  # no target, no metric (hpa_reconciler.go:130)
        problems.append(Problem("autoscaling.target", "memory scaling needs a target (average utilisation in %)"))
    strategy = (spec.get("rollout") or {}).get("strategy") or {}
    if serverless and strategy:  # inference_service_validation.go:646-648
        problems.append(Problem("rollout.strategy", f"only RawDeployment/Standard has a Deployment strategy; {mode} "
                                                    "rolls out Knative revisions"))
    surge, unavailable = strategy.get("maxSurge"), strategy.get("maxUnavailable")
    if strategy.get("type") == "Recreate" and (surge is not None or unavailable is not None):
        problems.append(Problem("rollout.strategy", "maxSurge/maxUnavailable belong to RollingUpdate, not Recreate"))
    elif str(surge).rstrip("%") == "0" and str(unavailable).rstrip("%") == "0":  # Kubernetes' Deployment rule
        problems.append(Problem("rollout.strategy", "maxSurge and maxUnavailable cannot both be 0: nothing could "
                                                    "roll out (a one-GPU detector: maxSurge 0, maxUnavailable 1)"))
    if serverless:
        for field_name, flag in c.KNATIVE_FLAGS.items():
            if spec.get(field_name) and not config.knative_enabled(flag):
                problems.append(Problem(field_name, f"Knative refuses it unless config-features {flag} is enabled; "
                                                    "enable it and tell the operator (knativeFeatures), or use "
                                                    "RawDeployment"))
    return problems


def _check_resources(spec: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    resources = spec["resources"]
    gpus = resources.get("gpu")
    gpu_name = str(resources.get("gpuResourceName") or "")
    prefix, slash, rname = gpu_name.partition("/")
    if (not slash or not _DNS_SUBDOMAIN.match(prefix) or not _QUALIFIED_NAME.match(rname)
            or prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io")):
        problems.append(Problem("resources.gpuResourceName", "must be an extended resource name <domain>/<name> "
                                                             f"such as nvidia.com/gpu (got {gpu_name!r})"))
    quantities = {}
    for key in ("cpu", "cpuLimit", "memory"):
        if key == "cpuLimit" and resources.get(key) == resources.get("cpu") and "cpu" not in quantities:
            continue  # the default (= the request), already said
        if not _QUANTITY.match(str(resources.get(key))):
            problems.append(Problem(f"resources.{key}", f"is not a Kubernetes quantity (got {resources.get(key)!r})"))
        else:
            quantities[key] = parse_quantity(str(resources[key]))
    if "cpu" in quantities and "cpuLimit" in quantities and quantities["cpuLimit"] < quantities["cpu"]:
        problems.append(Problem("resources.cpuLimit", f"({resources['cpuLimit']}) must be >= the cpu request "
                                                      f"({resources['cpu']}): Kubernetes refuses the pods otherwise"))
    if _is_int(gpus) and gpus > 1:
        problems.append(Problem("resources.gpu", f"the predictor runs on one GPU, so {gpus} would leave {gpus - 1} "
                                                 "idle: set gpu 1 and scale out with replicas.max"))
    if spec["precision"] == "fp16" and gpus == 0:
        problems.append(Problem("precision", "fp16 needs a GPU: set resources.gpu >= 1, or precision auto/fp32"))
    engine = spec.get("engine", "auto")
    if engine in ("onnxruntime", "openvino") and _is_int(gpus) and gpus > 0:
        problems.append(Problem("engine", f"{engine} runs on the CPU only: set resources.gpu 0, or engine auto/torch"))
    if spec["precision"] == "bf16" and ((_is_int(gpus) and gpus > 0) or engine not in ("auto", "openvino")):
        problems.append(Problem("precision", "bf16 runs on the CPU engine openvino only: resources.gpu 0 and "
                                             "engine auto or openvino"))
    acceleration = spec["batching"].get("acceleration")
    if acceleration in GPU_ACCELERATIONS and gpus == 0:
        problems.append(Problem("batching.acceleration", f"{acceleration} needs a GPU: set resources.gpu >= 1, "
                                                         "or acceleration auto/eager"))
    return problems


def validate(
    name: str, spec: Mapping[str, Any] | None, config: OperatorConfig | None = None, *, isvc_exists: bool = False,
    namespace: str = "", live: Mapping[str, Any] | None = None,
) -> list[Problem]:
    """Every problem of ``spec`` (errors and warnings), in field order. ``live``: the detector's InferenceService
    if it exists (a canary rollout needs a previous revision to split traffic with; the mode cannot change).
    ``namespace``: the detector's (Knative hostnames include it)."""
    config = config or OperatorConfig()
    isvc_exists = isvc_exists or live is not None
    spec = manifests.normalise(spec)
    raw = spec  # the defaults add none of the fields read from `raw` (model source, labels, annotations, ...)
    problems: list[Problem] = []
    mode = spec["deploymentMode"]
    if mode not in c.DEPLOYMENT_MODES:
        return [Problem("deploymentMode", f"must be one of {', '.join(c.DEPLOYMENT_MODES)}")]
    serverless = manifests.is_serverless(spec)
    problems.extend(_check_name(name, namespace, serverless))

    # --- model ---
    variant, version, storage_uri = raw.get("variant"), raw.get("version"), raw.get("storageUri")
    if variant and variant not in VARIANT_NAMES:
        problems.append(Problem("variant", f"must be one of {', '.join(VARIANT_NAMES)} (got {variant!r})"))
    if storage_uri:
        scheme, sep, rest = str(storage_uri).partition("://")
        if not sep or not rest or scheme not in STORAGE_SCHEMES:
            problems.append(Problem("storageUri", f"must be <scheme>://<path> with a scheme KServe's storage "
                                                  f"initializer knows ({', '.join(STORAGE_SCHEMES)})"))
        if version:
            problems.append(Problem("version", "names an official release: set either version or storageUri, "
                                               "not both"))
    elif version and not _VERSION.match(str(version)):
        problems.append(Problem("version", f"must look like v0.1 (got {version!r})"))
    problems.extend(_check_mode(spec, config, live))

    # --- predictor options: bounds come from predictor.settings, the single source of truth ---
    problems.extend(_check_classes(spec["thresholds"].get("classes"), release=not storage_uri))
    try:
        if not any(p.field == "variant" for p in problems):  # already said
            manifests.predictor_settings(spec, config)
    except SettingsError as error:
        problems.append(Problem("spec", str(error)))
    except (TypeError, ValueError) as error:
        problems.append(Problem("spec", f"a value has the wrong type: {error}"))

    # --- input limits: a full request must fit in the admission queue, or it is never served ---
    limits = spec["limits"] if isinstance(spec["limits"], Mapping) else {}
    per_request, queued = limits.get("maxImagesPerRequest"), limits.get("maxQueuedImages")
    bounds_ok = not any(p.field == "spec" for p in problems)  # else already said (e.g. maxQueuedImages 0)
    if bounds_ok and _is_int(per_request) and _is_int(queued) and per_request > queued:
        problems.append(Problem("limits", f"maxImagesPerRequest ({per_request}) must be <= maxQueuedImages "
                                          f"({queued}): a larger request could never be admitted"))
    problems.extend(_check_resources(spec))

    # --- replicas, rollout ---
    low, high = spec["replicas"].get("min"), spec["replicas"].get("max")
    if isinstance(low, int) and isinstance(high, int):
        if low > high:
            problems.append(Problem("replicas", f"min ({low}) must be <= max ({high})"))
        if low == 0 and not serverless:
            problems.append(Problem("replicas.min", f"0 (scale to zero) needs deploymentMode Serverless; {mode} "
                                                    "keeps at least one replica", WARNING))
    canary = (spec.get("rollout") or {}).get("canaryPercent")
    if canary is not None:
        if not isvc_exists:
            problems.append(Problem("rollout.canaryPercent", "needs a running InferenceService to split traffic "
                                                             "with: create the detector without it, then set it "
                                                             "together with the model change"))
        elif not serverless:
            problems.append(Problem("rollout.canaryPercent", f"KServe splits traffic only in Serverless mode; "
                                                             f"{mode} ignores it", WARNING))

    # --- metadata passed through ---
    problems.extend(_check_map("labels", raw.get("labels"), RESERVED_LABELS, check_values=True))
    problems.extend(_check_map("annotations", raw.get("annotations"), RESERVED_ANNOTATIONS, check_values=False))
    problems.extend(_check_map("nodeSelector", raw.get("nodeSelector"), (), check_values=True))
    problems.extend(_check_production(spec, serverless))
    return problems


def _check_production(spec: Mapping[str, Any], serverless: bool) -> list[Problem]:
    """Queue-depth autoscaling, monitoring and access (issue 16)."""
    problems: list[Problem] = []
    autoscaling = spec.get("autoscaling") or {}
    depth = autoscaling.get("queueDepth")
    if depth:
        if serverless:  # KEDA is a Standard-mode autoscaler class (V:446-466); Knative scales with its KPA
            problems.append(Problem("autoscaling.queueDepth", f"needs deploymentMode RawDeployment/Standard (KServe's "
                                                              f"KEDA autoscaling); {spec['deploymentMode']} scales on "
                                                              "concurrency, Knative's own in-flight request count"))
        if c.AUTOSCALER_CLASS_ANNOTATION in (spec.get("annotations") or {}):
            problems.append(Problem("annotations", f"{c.AUTOSCALER_CLASS_ANNOTATION} is set by the operator for "
                                                   "autoscaling.queueDepth (keda): remove it"))
        if autoscaling.get("metric") or autoscaling.get("target") is not None:  # V:569-571
            problems.append(Problem("autoscaling", "metric/target and queueDepth exclude each other (KServe refuses "
                                                   "scaleMetric with KEDA)"))
        low, high = spec["replicas"].get("min"), spec["replicas"].get("max")
        if _is_int(low) and _is_int(high) and high <= low:
            problems.append(Problem("autoscaling.queueDepth", f"replicas.max ({high}) <= replicas.min ({low}): "
                                                              "there is nothing to scale", WARNING))
        if not depth.get("query") and not spec["monitoring"].get("podMonitor"):
            problems.append(Problem("autoscaling.queueDepth", "the default query reads what the detector's "
                                                              "PodMonitor scrapes, and monitoring.podMonitor is off",
                                    WARNING))
    token = (spec.get("access") or {}).get("tokenSecret") or {}
    key = token.get("key")
    if key is not None and not _SECRET_KEY.match(str(key)):
        problems.append(Problem("access.tokenSecret.key", f"{key!r} is not a Secret key ([-._a-zA-Z0-9]+)"))
    for i, namespace in enumerate((spec.get("access") or {}).get("namespaces") or []):
        if not re.match(rf"^{_DNS_LABEL}$", str(namespace)):
            problems.append(Problem(f"access.namespaces[{i}]", f"{namespace!r} is not a namespace name"))
    problems.extend(_check_map("access.podLabels", (spec.get("access") or {}).get("podLabels"), (),
                               check_values=True))
    return problems
