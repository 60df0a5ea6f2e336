"""Pure tests of the operator's builders: YoloDetector spec → InferenceService dict, checked by exact paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from yolo_operator import config as c
from yolo_operator import manifests, validation
from yolo_operator.config import OperatorConfig

from predictor.settings import (
    ENGINES,
    OPTIONS_BY_NAME,
    PRECISIONS,
    VARIANT_NAMES,
    PredictorSettings,
    parse_args,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = OperatorConfig()


def build(spec: dict | None = None, name: str = "dets", config: OperatorConfig = CONFIG) -> dict:
    return manifests.build_inference_service(name, "vision", spec or {}, config)


def container(isvc: dict) -> dict:
    return isvc["spec"]["predictor"]["containers"][0]


def crd_schema() -> dict:
    crd = yaml.safe_load((ROOT / "crds" / "yolodetector.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


# ----- the minimal detector -------------------------------------------------------------------------
def test_minimal_detector_is_a_custom_kserve_predictor():
    isvc = build()
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["name"] == "dets"
    assert isvc["metadata"]["namespace"] == "vision"
    assert isvc["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "RawDeployment",
                                               "detection.yolo-v7.io/user-labels": None,
                                               "serving.kserve.io/autoscalerClass": None}
    assert isvc["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "yolo-v7-operator",
        "detection.yolo-v7.io/detector": "dets",
        "detection.yolo-v7.io/variant": "yolov7",
    }
    box = container(isvc)
    assert box["name"] == "kserve-container"
    assert box["image"] == "quay.io/yolo-v7/yolo-v7:1.0.0"
    assert box["command"] == ["python", "-m", "predictor"]
    assert box["args"][:3] == ["--model_name=dets", "--http_port=8080", "--grpc_port=8081"]
    assert box["ports"] == [
        {"name": "http1", "containerPort": 8080, "protocol": "TCP"},
        {"name": "h2c", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert box["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] == 1
    assert predictor["maxReplicas"] == 1


def test_release_baked_into_the_image_needs_no_download():
    box = container(build({"variant": "yolov7", "version": "v0.1"}))
    settings = parse_args(box["args"])
    assert settings.weights == "/opt/yolo-v7/weights/yolov7.pt"
    assert settings.variant == "yolov7"
    assert settings.device == "cpu"
    assert [e["name"] for e in box["env"]] == ["HOME"]


def test_release_not_in_the_image_is_fetched_by_the_storage_initializer():
    box = container(build({"variant": "yolov7-e6e", "version": "v0.1"}))
    assert parse_args(box["args"]).weights == "/mnt/models/yolov7-e6e.pt"
    env = {e["name"]: e["value"] for e in box["env"]}
    assert env["STORAGE_URI"] == "https://github.com/WongKinYiu/yolov7/releases/download/v0.1/yolov7-e6e.pt"


def test_release_base_url_and_baked_variants_are_operator_config():
    config = OperatorConfig.from_env({
        "YOLO_OPERATOR_RELEASE_BASE_URL": "https://mirror.example/yolo/",
        "YOLO_OPERATOR_BAKED_VARIANTS": "yolov7-tiny,yolov7x",
        "YOLO_OPERATOR_IMAGE": "registry.example/yolo:2",
    })
    tiny = container(build({"variant": "yolov7-tiny"}, config=config))
    assert tiny["image"] == "registry.example/yolo:2"
    assert parse_args(tiny["args"]).weights == "/opt/yolo-v7/weights/yolov7-tiny.pt"
    other = container(build({"variant": "yolov7"}, config=config))
    assert {e["name"]: e["value"] for e in other["env"]}["STORAGE_URI"] == "https://mirror.example/yolo/v0.1/yolov7.pt"


def test_custom_weights_from_storage_uri():
    box = container(build({"storageUri": "s3://bucket/models/best.pt"}))
    settings = parse_args(box["args"])
    assert settings.weights == "/mnt/models"
    assert settings.variant == ""  # detected from the checkpoint
    assert {e["name"]: e["value"] for e in box["env"]}["STORAGE_URI"] == "s3://bucket/models/best.pt"
    labels = build({"storageUri": "s3://bucket/models/best.pt"})["metadata"]["labels"]
    assert "detection.yolo-v7.io/variant" not in labels
    assert manifests.model_status({"storageUri": "s3://b/x.pt"}, CONFIG) == {"storageUri": "s3://b/x.pt"}
    assert manifests.model_status({}, CONFIG) == {"variant": "yolov7", "version": "v0.1"}


def test_cpu_detectors_leave_default_batching_to_the_predictors_measurement():
    """CPU, spec batching at its defaults: no batching flag, so the predictor measures whether batching pays
    (predictor.batch_plan); a changed value, or a GPU detector, passes the flags, which win."""
    cpu_default = container(build({"resources": {"gpu": 0}}))["args"]
    assert not any(arg.startswith(("--max_batch_size", "--max_batch_delay_ms")) for arg in cpu_default)
    settings = parse_args(cpu_default)
    assert not settings.is_explicit("max_batch_size") and not settings.is_explicit("max_batch_delay_ms")
    cpu_changed = container(build({"resources": {"gpu": 0}, "batching": {"maxBatchSize": 4}}))["args"]
    assert "--max_batch_size=4" in cpu_changed and "--max_batch_delay_ms=5.0" not in cpu_changed
    assert parse_args(cpu_changed).is_explicit("max_batch_size")
    gpu_default = container(build({"resources": {"gpu": 1}}))["args"]
    assert "--max_batch_size=8" in gpu_default and "--max_batch_delay_ms=5.0" in gpu_default


def test_every_predictor_option_rendered_through_predictor_settings():
    spec = {
        "variant": "yolov7x",
        "thresholds": {"confidence": 0.4, "iou": 0.6, "maxDetections": 50, "classes": [0, "dog"]},
        "inputSize": 1280,
        "precision": "fp16",
        "workers": 4,
        "batching": {"maxBatchSize": 16, "maxDelayMs": 2.5, "acceleration": "compile"},
        "limits": {"maxRequestBytes": 4096, "maxImagePixels": 1920 * 1080, "maxImagesPerRequest": 8,
                   "maxQueuedImages": 32},
        "resources": {"gpu": 1},
    }
    args = container(build(spec))["args"]
    expected = PredictorSettings(
        weights="/mnt/models/yolov7x.pt", variant="yolov7x", device="cuda", precision="fp16", accel="compile",
        input_size=1280,
        conf_threshold=0.4, iou_threshold=0.6, max_detections=50, classes=("0", "dog"), max_batch_size=16,
        max_batch_delay_ms=2.5, max_request_bytes=4096, max_image_pixels=2073600, max_images_per_request=8,
        max_queued_images=32, workers=4,
    )
    assert args[3:] == expected.to_args()
    assert "--workers=4" in args
    assert parse_args(args) == expected
    assert "--conf_threshold=0.4" in args and "--accel=compile" in args
    for arg in ("--max_request_bytes=4096", "--max_image_pixels=2073600", "--max_images_per_request=8",
                "--max_queued_images=32"):
        assert arg in args


def test_input_limits_default_to_the_predictors_and_may_be_given_one_by_one():
    args = container(build())["args"]
    assert "--max_request_bytes=33554432" in args
    assert "--max_image_pixels=40000000" in args
    assert "--max_images_per_request=64" in args
    assert "--max_queued_images=256" in args
    settings = parse_args(container(build({"limits": {"maxImagePixels": 1000}}))["args"])
    assert settings == PredictorSettings(weights=settings.weights, variant="yolov7", device="cpu",
                                         max_image_pixels=1000)


def test_gpus_are_limits_of_the_configured_resource_name():
    box = container(build({"resources": {"gpu": 2, "gpuResourceName": "amd.com/gpu", "cpu": "500m",
                                         "memory": "8Gi"}}))
    assert box["resources"] == {
        "requests": {"cpu": "500m", "memory": "8Gi"},
        "limits": {"cpu": "500m", "memory": "8Gi", "amd.com/gpu": "2"},
    }
    assert parse_args(box["args"]).device == "cuda"
    default = container(build({"resources": {"gpu": 1}}))
    assert default["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_openshift_restricted_security_context():
    isvc = build()
    box = container(isvc)
    assert box["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # container level only: Knative refuses a pod-level one on stock clusters (None: a merge patch removes it)
    assert isvc["spec"]["predictor"]["securityContext"] is None
    for forbidden in ("runAsUser", "runAsGroup", "fsGroup"):
        assert forbidden not in box["securityContext"]
    assert box["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert isvc["spec"]["predictor"]["volumes"] == [{"name": "tmp", "emptyDir": {}}]


def test_probes_use_the_v2_health_routes():
    box = container(build())
    assert box["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert box["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert box["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}


@pytest.mark.parametrize("mode", ["Serverless", "Knative"])
def test_serverless_gets_one_port_and_the_annotation(mode):
    isvc = build({"deploymentMode": mode})
    # before KServe recorded a mode, the legacy name every KServe version knows (see test_kserve_versions.py)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert container(isvc)["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]


def test_scaling_rollout_and_placement():
    spec = {
        "replicas": {"min": 2, "max": 5},
        "autoscaling": {"metric": "concurrency", "target": 4},
        "rollout": {"canaryPercent": 10},
        "nodeSelector": {"gpu": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "serviceAccountName": "detector",
    }
    predictor = build(spec)["spec"]["predictor"]
    assert predictor["minReplicas"] == 2
    assert predictor["maxReplicas"] == 5
    assert predictor["scaleMetric"] == "concurrency"
    assert predictor["scaleTarget"] == 4
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["nodeSelector"] == {"gpu": "a100"}
    assert predictor["tolerations"] == spec["tolerations"]
    assert predictor["serviceAccountName"] == "detector"


def test_unset_owned_fields_are_null_so_a_merge_patch_removes_them():
    predictor = build()["spec"]["predictor"]
    for key in ("scaleMetric", "scaleTarget", "canaryTrafficPercent", "nodeSelector", "tolerations",
                "serviceAccountName"):
        assert key in predictor and predictor[key] is None
    body = manifests.without_nulls(build())
    assert "canaryTrafficPercent" not in body["spec"]["predictor"]


def test_extra_labels_and_annotations_never_override_the_operators():
    isvc = build({"labels": {"team": "vision", "app.kubernetes.io/managed-by": "me"},
                  "annotations": {"owner": "ops", "serving.kserve.io/deploymentMode": "Serverless"}})
    assert isvc["metadata"]["labels"]["team"] == "vision"
    assert isvc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "yolo-v7-operator"
    assert isvc["metadata"]["annotations"] == {"owner": "ops", "serving.kserve.io/deploymentMode": "RawDeployment",
                                               "detection.yolo-v7.io/user-labels": "app.kubernetes.io/managed-by,team",
                                               "serving.kserve.io/autoscalerClass": None}


def test_image_override_and_pull_policy():
    config = OperatorConfig.from_env({"YOLO_OPERATOR_IMAGE_PULL_POLICY": "IfNotPresent"})
    box = container(build({"image": "my.registry/yolo:dev"}, config=config))
    assert box["image"] == "my.registry/yolo:dev"
    assert box["imagePullPolicy"] == "IfNotPresent"
    assert "imagePullPolicy" not in container(build())


def test_builders_do_not_mutate_the_spec():
    spec = {"thresholds": {"classes": ["person"]}, "tolerations": [{"key": "a", "operator": "Exists"}]}
    snapshot = yaml.safe_dump(spec)
    build(spec)
    assert yaml.safe_dump(spec) == snapshot


# ----- live-vs-desired comparison --------------------------------------------------------------------
def test_differs_treats_mappings_as_subsets_and_none_as_absent():
    assert not manifests.differs({"a": 1}, {"a": 1, "extra": 2})
    assert manifests.differs({"a": 1}, {"a": 2})
    assert manifests.differs({"a": None}, {"a": 5})
    assert not manifests.differs({"a": None}, {})
    assert not manifests.differs([{"n": 1}], [{"n": 1, "defaulted": True}])
    assert manifests.differs([{"n": 1}], [{"n": 1}, {"n": 2}])
    assert manifests.differs({"x": True}, {"x": 1})
    assert not manifests.differs({"f": 5.0}, {"f": 5})


def test_built_manifest_does_not_differ_from_itself_as_the_server_returns_it():
    isvc = build({"tolerations": [{"key": "k", "operator": "Exists"}], "rollout": {"canaryPercent": 5}})
    live = manifests.without_nulls(isvc)
    live["metadata"]["uid"] = "123"
    live["status"] = {"url": "http://x"}
    assert not manifests.differs(isvc, live)
    live["spec"]["predictor"]["containers"][0]["args"][4] = "--variant=yolov7x"
    assert manifests.differs(isvc, live)


def test_replica_memory_grows_by_one_increment_per_front_end():
    """resources.memory sizes the model process; each front-end process (spec.workers > 1) adds
    FRONT_END_MEMORY to the request and the limit. Auto (0) counts the cores of the CPU limit on a GPU."""
    from kubernetes.utils.quantity import parse_quantity

    def memory(**spec) -> tuple:
        resources = container(build(spec))["resources"]
        return parse_quantity(resources["requests"]["memory"]), parse_quantity(resources["limits"]["memory"])

    gpu = {"gpu": 1, "cpu": "4", "memory": "4Gi"}
    step = parse_quantity(c.FRONT_END_MEMORY)
    base = parse_quantity("4Gi")
    assert memory(resources=gpu) == (base, base)  # workers 1: one process, as before
    assert memory(resources=gpu, workers=4) == (base + 4 * step,) * 2
    assert memory(resources={**gpu, "cpuLimit": "1500m"}, workers=0) == (base + 2 * step,) * 2  # auto: 2 cores
    assert memory(resources={"cpu": "4", "memory": "4Gi"}, workers=0) == (base, base)  # auto on the CPU: 1
    assert memory(resources={"memory": "3G"}, workers=2) == (parse_quantity("3G") + 2 * step,) * 2
    described = " ".join(crd_schema()["properties"]["workers"]["description"].split())
    assert c.FRONT_END_MEMORY in described  # the CRD tells users what the operator adds


# ----- the CRD and the builders agree -------------------------------------------------------------
def test_crd_identity():
    crd = yaml.safe_load((ROOT / "crds" / "yolodetector.yaml").read_text())
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{c.PLURAL}.{c.GROUP}"
    assert crd["spec"]["group"] == c.GROUP
    assert crd["spec"]["names"]["kind"] == c.KIND
    assert crd["spec"]["names"]["shortNames"] == ["yd"]
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == c.VERSION
    assert version["subresources"] == {"status": {}}
    assert [col["name"] for col in version["additionalPrinterColumns"]] == ["Variant", "Ready", "URL", "Age"]
    assert "x-kubernetes-validations" not in (ROOT / "crds" / "yolodetector.yaml").read_text()  # no CEL


def test_crd_enums_match_the_code():
    schema = crd_schema()["properties"]
    assert tuple(schema["variant"]["enum"]) == VARIANT_NAMES
    assert set(schema["precision"]["enum"]) == set(PRECISIONS)
    assert tuple(schema["engine"]["enum"]) == ENGINES
    assert tuple(schema["deploymentMode"]["enum"]) == c.DEPLOYMENT_MODES
    assert schema["inputSize"]["multipleOf"] == 32


def _crd_defaults(schema: dict) -> dict:
    out = {}
    for key, prop in schema.get("properties", {}).items():
        if prop.get("type") == "object" and "properties" in prop and "default" in prop:
            out[key] = _crd_defaults(prop)
        elif "default" in prop:
            out[key] = prop["default"]
    return out


def test_crd_defaults_are_the_builders_defaults_and_the_predictors():
    assert _crd_defaults(crd_schema()) == manifests.SPEC_DEFAULTS
    predictor_defaults = PredictorSettings()
    thresholds = manifests.SPEC_DEFAULTS["thresholds"]
    assert thresholds["confidence"] == predictor_defaults.conf_threshold
    assert thresholds["iou"] == predictor_defaults.iou_threshold
    assert thresholds["maxDetections"] == predictor_defaults.max_detections
    assert manifests.SPEC_DEFAULTS["batching"]["maxBatchSize"] == predictor_defaults.max_batch_size
    assert manifests.SPEC_DEFAULTS["batching"]["maxDelayMs"] == predictor_defaults.max_batch_delay_ms
    assert manifests.SPEC_DEFAULTS["batching"]["acceleration"] == predictor_defaults.accel
    assert manifests.SPEC_DEFAULTS["inputSize"] == predictor_defaults.input_size
    assert manifests.SPEC_DEFAULTS["precision"] == predictor_defaults.precision
    assert manifests.SPEC_DEFAULTS["workers"] == predictor_defaults.workers
    limits = manifests.SPEC_DEFAULTS["limits"]
    assert limits["maxRequestBytes"] == predictor_defaults.max_request_bytes
    assert limits["maxImagePixels"] == predictor_defaults.max_image_pixels
    assert limits["maxImagesPerRequest"] == predictor_defaults.max_images_per_request
    assert limits["maxQueuedImages"] == predictor_defaults.max_queued_images


def test_crd_limits_bounds_are_the_predictors():
    limits = crd_schema()["properties"]["limits"]["properties"]
    for field, option in (("maxRequestBytes", "max_request_bytes"), ("maxImagePixels", "max_image_pixels"),
                          ("maxImagesPerRequest", "max_images_per_request"), ("maxQueuedImages", "max_queued_images")):
        assert limits[field]["type"] == "integer"
        assert limits[field].get("minimum") == OPTIONS_BY_NAME[option].minimum, field
        assert limits[field].get("maximum") == OPTIONS_BY_NAME[option].maximum, field


def _field_paths(schema: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, prop in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths.append(path)
        if prop.get("type") == "object" and "properties" in prop:
            paths.extend(_field_paths(prop, path + "."))
    return paths


def test_reference_doc_covers_every_field():
    doc = (ROOT / "docs" / "yolodetector.md").read_text()
    missing = [path for path in _field_paths(crd_schema()) if f"`{path}`" not in doc]
    assert not missing, f"docs/yolodetector.md lacks {missing}"


def test_examples_are_valid_and_the_full_one_sets_every_field():
    examples = sorted((ROOT / "examples").glob("yolodetector*.yaml"))
    assert ROOT / "examples" / "yolodetector.yaml" in examples
    seen: set[str] = set()
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] == c.API_VERSION and doc["kind"] == c.KIND, path
            problems = validation.validate(doc["metadata"]["name"], doc.get("spec"), CONFIG, isvc_exists=True)
            assert not validation.errors(problems), (path, problems)
            seen.update(_field_paths({"properties": {k: _as_schema(v) for k, v in (doc.get("spec") or {}).items()}}))
    crd_paths = set(_field_paths(crd_schema()))
    # storageUri and version exclude each other: the examples together cover every field
    assert crd_paths <= seen, f"no example sets {sorted(crd_paths - seen)}"


def _as_schema(value):
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        return {"type": "object", "properties": {k: _as_schema(v) for k, v in value.items()}}
    return {}


# ----- the real KServe schema knows every field we write ---------------------------------------------
def _unknown_fields(obj, schema: dict, path: str = "") -> list[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(obj, dict):
        if "properties" not in schema:
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                return [p for k, v in obj.items() for p in _unknown_fields(v, extra, f"{path}.{k}")]
            return []
        out = []
        for key, value in obj.items():
            if key not in schema["properties"]:
                out.append(f"{path}.{key}")
            else:
                out.extend(_unknown_fields(value, schema["properties"][key], f"{path}.{key}"))
        return out
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _unknown_fields(v, schema.get("items", {}), f"{path}[{i}]")]
    return []


def test_every_field_is_known_to_kserves_crd(kserve_fixtures):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 1.9 MB
    crd = yaml.load((kserve_fixtures / "serving.kserve.io_inferenceservices.yaml").read_text(), Loader=loader)
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")["schema"]["openAPIV3Schema"]
    full = {
        "variant": "yolov7-tiny", "resources": {"gpu": 1}, "replicas": {"min": 1, "max": 3},
        "autoscaling": {"metric": "cpu", "target": 80}, "rollout": {"canaryPercent": 20},
        "nodeSelector": {"a": "b"}, "tolerations": [{"key": "k", "operator": "Exists"}],
        "serviceAccountName": "sa", "labels": {"x": "y"}, "annotations": {"z": "w"},
    }
    body = manifests.without_nulls(build(full))
    body["metadata"].pop("labels")
    body["metadata"].pop("annotations")
    assert _unknown_fields({k: v for k, v in body.items() if k != "metadata"}, schema) == []
