"""Pure tests of the cross-field rules the CRD's schema cannot express."""

from __future__ import annotations

import pytest
from yolo_operator import validation
from yolo_operator.validation import ERROR, WARNING, validate


def problems_of(spec: dict, name: str = "dets", **kw) -> dict[str, str]:
    """{field: severity} of every problem."""
    return {p.field: p.severity for p in validate(name, spec, **kw)}


def test_defaults_and_examples_of_good_specs_have_no_problems():
    assert validate("dets", {}) == []
    assert validate("dets", None) == []
    assert validate("dets", {"variant": "yolov7-e6e", "version": "v0.1", "resources": {"gpu": 1},
                             "precision": "fp16", "thresholds": {"classes": [0, "person", "2"]}}) == []
    assert validate("dets", {"storageUri": "gs://bucket/best.pt", "thresholds": {"classes": ["hardhat", 120]}}) == []


@pytest.mark.parametrize("name", ["9lives", "Upper", "under_score", "x" * 54])
def test_detector_name_must_suit_kserve(name):
    assert problems_of({}, name=name) == {"metadata.name": ERROR}


def test_replicas_min_must_not_exceed_max():
    problems = validate("dets", {"replicas": {"min": 3, "max": 2}})
    assert [(p.field, p.severity) for p in problems] == [("replicas", ERROR)]
    assert "min (3) must be <= max (2)" in problems[0].message


def test_scale_to_zero_outside_serverless_is_a_warning():
    assert problems_of({"replicas": {"min": 0, "max": 2}}) == {"replicas.min": WARNING}
    assert problems_of({"replicas": {"min": 0, "max": 2}, "deploymentMode": "Serverless"}) == {}


def test_canary_needs_an_existing_inference_service():
    spec = {"rollout": {"canaryPercent": 10}, "deploymentMode": "Serverless"}
    assert problems_of(spec, isvc_exists=False) == {"rollout.canaryPercent": ERROR}
    assert problems_of(spec, isvc_exists=True) == {}
    raw = {"rollout": {"canaryPercent": 10}}
    assert problems_of(raw, isvc_exists=True) == {"rollout.canaryPercent": WARNING}


@pytest.mark.parametrize("resource", ["gpu", "nvidia.com/", "/gpu", "kubernetes.io/gpu", "NVIDIA.com/gpu",
                                      "a.kubernetes.io/gpu", "nvidia.com/g pu"])
def test_gpu_resource_name_must_be_an_extended_resource(resource):
    assert problems_of({"resources": {"gpu": 1, "gpuResourceName": resource}}) == {
        "resources.gpuResourceName": ERROR}


@pytest.mark.parametrize("resource", ["nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915",
                                      "nvidia.com/mig-1g.5gb"])
def test_good_gpu_resource_names(resource):
    assert problems_of({"resources": {"gpu": 1, "gpuResourceName": resource}}) == {}


def test_fp16_without_a_gpu_is_invalid():
    problems = validate("dets", {"precision": "fp16"})
    assert [(p.field, p.severity) for p in problems] == [("precision", ERROR)]
    assert "needs a GPU" in problems[0].message
    assert problems_of({"precision": "fp16", "resources": {"gpu": 1}}) == {}
    assert problems_of({"precision": "fp32"}) == {}


def test_cpu_engines_and_bf16_need_the_cpu():
    assert problems_of({"engine": "openvino"}) == {}
    assert problems_of({"engine": "auto", "resources": {"gpu": 1}}) == {}
    [problem] = validate("dets", {"engine": "onnxruntime", "resources": {"gpu": 1}})
    assert (problem.field, problem.severity) == ("engine", ERROR) and "CPU only" in problem.message
    assert problems_of({"precision": "bf16", "engine": "openvino"}) == {}
    assert problems_of({"precision": "bf16"}) == {}  # auto means openvino for bf16
    for spec in ({"precision": "bf16", "engine": "onnxruntime"}, {"precision": "bf16", "resources": {"gpu": 1}}):
        [problem] = validate("dets", spec)
        assert (problem.field, problem.severity) == ("precision", ERROR) and "openvino only" in problem.message


@pytest.mark.parametrize(("classes", "where"), [
    ([""], "thresholds.classes[0]"),
    (["person,car"], "thresholds.classes[0]"),
    ([0, -1], "thresholds.classes[1]"),
    ([80], "thresholds.classes[0]"),
    (["unicorn"], "thresholds.classes[0]"),
    ([1.5], "thresholds.classes[0]"),
    ([True], "thresholds.classes[0]"),
])
def test_class_filter_entries(classes, where):
    assert problems_of({"thresholds": {"classes": classes}})[where] == ERROR


def test_class_names_and_ids_of_custom_weights_are_not_checked_against_coco():
    assert problems_of({"storageUri": "s3://b/w.pt", "thresholds": {"classes": ["unicorn", 150]}}) == {}


def test_duplicate_classes_are_a_warning():
    assert problems_of({"thresholds": {"classes": ["person", "person"]}}) == {"thresholds.classes[1]": WARNING}


def test_version_and_storage_uri_exclude_each_other():
    assert problems_of({"version": "v0.1", "storageUri": "s3://b/w.pt"}) == {"version": ERROR}


@pytest.mark.parametrize("uri", ["bucket/w.pt", "ftp://host/w.pt", "s3://"])
def test_storage_uri_scheme(uri):
    assert problems_of({"storageUri": uri}) == {"storageUri": ERROR}


def test_version_format_and_variant_names():
    assert problems_of({"version": "0.1"}) == {"version": ERROR}
    assert problems_of({"variant": "yolov8"}) == {"variant": ERROR}


def test_predictor_bounds_come_from_predictor_settings():
    problems = validate("dets", {"thresholds": {"confidence": 1.5}})
    assert [p.field for p in problems] == ["spec"]
    assert "--conf_threshold" in problems[0].message
    assert problems_of({"inputSize": 650}) == {"spec": ERROR}
    assert problems_of({"batching": {"maxBatchSize": 0}}) == {"spec": ERROR}
    assert problems_of({"thresholds": {"maxDetections": "many"}}) == {"spec": ERROR}
    assert problems_of({"limits": {"maxRequestBytes": 1023}}) == {"spec": ERROR}
    assert problems_of({"limits": {"maxImagePixels": 0}}) == {"spec": ERROR}
    assert problems_of({"limits": {"maxImagesPerRequest": 4097}}) == {"spec": ERROR}
    assert problems_of({"limits": {"maxQueuedImages": 0}}) == {"spec": ERROR}
    assert problems_of({"limits": {"maxRequestBytes": 1024, "maxImagePixels": 1, "maxImagesPerRequest": 1,
                                   "maxQueuedImages": 1}}) == {}


def test_a_full_request_must_fit_in_the_admission_queue():
    problems = validate("dets", {"limits": {"maxImagesPerRequest": 300}})  # over the default maxQueuedImages 256
    assert [(p.field, p.severity) for p in problems] == [("limits", ERROR)]
    assert "maxImagesPerRequest (300) must be <= maxQueuedImages (256)" in problems[0].message
    assert problems_of({"limits": {"maxImagesPerRequest": 8, "maxQueuedImages": 4}}) == {"limits": ERROR}
    assert problems_of({"limits": {"maxImagesPerRequest": 8, "maxQueuedImages": 8}}) == {}
    assert problems_of({"limits": {"maxImagesPerRequest": 4096, "maxQueuedImages": 4096}}) == {}
    # a value out of its bounds or of the wrong type is reported once, by the bounds check
    assert problems_of({"limits": {"maxImagesPerRequest": 8, "maxQueuedImages": "few"}}) == {"spec": ERROR}
    assert problems_of({"limits": {"maxImagesPerRequest": 8, "maxQueuedImages": 0}}) == {"spec": ERROR}


def test_quantities():
    assert problems_of({"resources": {"cpu": "two"}}) == {"resources.cpu": ERROR}
    assert problems_of({"resources": {"cpu": 4, "memory": "512Mi"}}) == {}


def test_operator_owned_labels_and_annotations_are_reserved():
    problems = problems_of({
        "labels": {"app.kubernetes.io/managed-by": "x", "ok": "fine", "bad value": "x", "v": "no spaces"},
        "annotations": {"serving.kserve.io/deploymentMode": "Serverless", "note": "any text at all"},
    })
    assert problems == {
        "labels[app.kubernetes.io/managed-by]": ERROR,
        "labels[bad value]": ERROR,
        "labels[v]": ERROR,
        "annotations[serving.kserve.io/deploymentMode]": ERROR,
    }


def test_knative_metrics_outside_serverless_are_refused():
    # finding 5: KServe would build an HPA without any metric (hpa_reconciler.go:105-146)
    assert problems_of({"autoscaling": {"metric": "rps", "target": 10}}) == {"autoscaling.metric": ERROR}
    assert problems_of({"autoscaling": {"metric": "cpu", "target": 10}}) == {}


def test_summary_names_each_problem():
    problems = validate("dets", {"replicas": {"min": 2, "max": 1}, "precision": "fp16",
                                 "batching": {"acceleration": "compile"}})
    text = validation.summary(validation.errors(problems))
    assert "replicas: min (2) must be <= max (1)" in text
    assert "precision: fp16 needs a GPU" in text
    assert "batching.acceleration: compile needs a GPU" in text
    gpu = {"resources": {"gpu": 1}}
    for acceleration in ("auto", "eager", "cudagraph", "compile"):
        assert not validation.errors(validate("dets", {**gpu, "batching": {"acceleration": acceleration}}))
    assert not validation.errors(validate("dets", {"batching": {"acceleration": "eager"}}))
