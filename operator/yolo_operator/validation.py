"""Pure cross-field checks of a YoloDetector spec: what the CRD's OpenAPI schema cannot say.

``validate(...)`` returns a list of ``Problem``s; errors make the detector Valid=False (and leave any existing
InferenceService as it is), warnings are reported but do not block. No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from predictor.settings import VARIANT_NAMES, SettingsError

from . import config as c
from . import manifests
from .config import OperatorConfig

ERROR = "error"
WARNING = "warning"

# The 80 COCO class names of the official release weights, in class-id order.
COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

STORAGE_SCHEMES: tuple[str, ...] = ("gs", "s3", "pvc", "http", "https", "hdfs", "webhdfs", "oci", "hf", "azure")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_VERSION = re.compile(r"^v\d+(\.\d+)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")
# KServe derives "<name>-predictor[-<namespace>]" names (Services, Knative routes) from the InferenceService's.
MAX_NAME_LENGTH = 45
RESERVED_LABELS = (c.MANAGED_BY_LABEL, c.DETECTOR_LABEL, c.VARIANT_LABEL)
RESERVED_ANNOTATIONS = (c.DEPLOYMENT_MODE_ANNOTATION,)


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


def validate(
    name: str, spec: Mapping[str, Any] | None, config: OperatorConfig | None = None, *, isvc_exists: bool = False
) -> list[Problem]:
    """Every problem of ``spec`` (errors and warnings), in field order. ``isvc_exists``: whether the detector's
    InferenceService already exists (a canary rollout needs a previous revision to split traffic with)."""
    config = config or OperatorConfig()
    raw = dict(spec or {})
    spec = manifests.with_defaults(raw)
    problems: list[Problem] = []
    mode = spec["deploymentMode"]
    serverless = mode in c.SERVERLESS_MODES

    if not _ISVC_NAME.match(name):
        problems.append(Problem("metadata.name", "must start with a letter and hold only lower-case letters, "
                                                 "digits and '-' (KServe's InferenceService name rule)"))
    elif len(name) > MAX_NAME_LENGTH:
        problems.append(Problem("metadata.name", f"must be at most {MAX_NAME_LENGTH} characters: KServe derives "
                                                 "longer names from it"))

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
    if mode not in c.DEPLOYMENT_MODES:
        problems.append(Problem("deploymentMode", f"must be one of {', '.join(c.DEPLOYMENT_MODES)}"))

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

    # --- resources ---
    resources = spec["resources"]
    gpus = resources.get("gpu")
    gpu_name = str(resources.get("gpuResourceName") or "")
    prefix, slash, rname = gpu_name.partition("/")
    if (not slash or not _DNS_SUBDOMAIN.match(prefix) or not _QUALIFIED_NAME.match(rname)
            or prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io")):
        problems.append(Problem("resources.gpuResourceName", "must be an extended resource name <domain>/<name> "
                                                             f"such as nvidia.com/gpu (got {gpu_name!r})"))
    for key in ("cpu", "memory"):
        if not _QUANTITY.match(str(resources.get(key))):
            problems.append(Problem(f"resources.{key}", f"is not a Kubernetes quantity (got {resources.get(key)!r})"))
    if spec["precision"] == "fp16" and isinstance(gpus, int) and gpus == 0:
        problems.append(Problem("precision", "fp16 needs a GPU: set resources.gpu >= 1, or precision auto/fp32"))
    engine = spec.get("engine", "auto")
    if engine in ("onnxruntime", "openvino") and isinstance(gpus, int) and gpus > 0:
        problems.append(Problem("engine", f"{engine} runs on the CPU only: set resources.gpu 0, or engine auto/torch"))
    if spec["precision"] == "bf16" and ((isinstance(gpus, int) and gpus > 0) or engine not in ("auto", "openvino")):
        problems.append(Problem("precision", "bf16 runs on the CPU engine openvino only: resources.gpu 0 and "
                                             "engine auto or openvino"))
    acceleration = spec["batching"].get("acceleration")
    if acceleration in ("cudagraph", "compile") and isinstance(gpus, int) and gpus == 0:
        problems.append(Problem("batching.acceleration", f"{acceleration} needs a GPU: set resources.gpu >= 1, "
                                                         "or acceleration auto/eager"))

    # --- replicas, autoscaling, rollout ---
    low, high = spec["replicas"].get("min"), spec["replicas"].get("max")
    if isinstance(low, int) and isinstance(high, int):
        if low > high:
            problems.append(Problem("replicas", f"min ({low}) must be <= max ({high})"))
        if low == 0 and not serverless:
            problems.append(Problem("replicas.min", f"0 (scale to zero) needs deploymentMode Serverless; {mode} "
                                                    "keeps at least one replica", WARNING))
    metric = (spec.get("autoscaling") or {}).get("metric")
    if metric in ("concurrency", "rps") and not serverless:
        problems.append(Problem("autoscaling.metric", f"{metric} is a Knative metric; {mode} scales on cpu or "
                                                      "memory", WARNING))
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
    return problems
