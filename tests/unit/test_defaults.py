"""Every default and enumeration has one source (``predictor.settings``, ``predictor.yolov7.names``): the
copies that used to be written by hand in the engine, ops, params, CLI and operator now read it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from predictor.settings import (
    ACCELERATIONS,
    GPU_ACCELERATIONS,
    OPTIONS_BY_NAME,
    PRECISIONS,
    DetectParams,
    PredictorSettings,
)
from predictor.yolov7.names import COCO_NAMES


def test_detect_params_default_to_the_predictor_settings():
    params, settings = DetectParams(), PredictorSettings()
    assert (params.confidence, params.iou, params.max_detections) == (
        settings.conf_threshold, settings.iou_threshold, settings.max_detections)
    assert (params.classes, params.agnostic) == (None, False)
    # the bounds a request is held to are the flags' bounds
    for field, option in (("confidence", "conf_threshold"), ("iou", "iou_threshold"),
                          ("max_detections", "max_detections")):
        bounds = OPTIONS_BY_NAME[option]
        for inside in (bounds.minimum, bounds.maximum):
            DetectParams(**{field: inside})
        with pytest.raises(ValueError, match=field):
            DetectParams(**{field: bounds.maximum + 1})


def test_one_name_per_quantity_from_the_wire_to_the_nms():
    from predictor import ops, params
    from predictor.engine import Detector

    names = [field.name for field in dataclasses.fields(DetectParams)]
    assert names == ["confidence", "iou", "max_detections", "classes", "agnostic"]
    # the request parameters are the same names, read over the defaults
    raw = {"confidence": 0.5, "iou": 0.3, "max_detections": 7, "classes": "1", "agnostic": True}
    resolved = params.resolve_params(raw, DetectParams(), ["a", "b"])
    assert dataclasses.asdict(resolved) == {**raw, "classes": (1,)}
    assert params.resolve_params({}, DetectParams(), ["a"]) == DetectParams()
    # the engine and the NMS take DetectParams whole, with no threshold defaults of their own
    for function in (Detector.detect, Detector.postprocess):
        assert inspect.signature(function).parameters["params"].default == DetectParams()
    nms = inspect.signature(ops.non_max_suppression).parameters
    assert nms["params"].default is inspect.Parameter.empty
    assert not {"conf", "conf_thres", "iou_thres", "max_det", "classes", "agnostic"} & set(nms)


def test_cli_defaults_are_the_predictors():
    from yolo_cli.clients import Params

    help_text = _detect_help()
    defaults = DetectParams()
    assert f"predictor default {defaults.confidence:g}" in help_text
    assert f"predictor default {defaults.iou:g}" in help_text
    assert f"predictor default {defaults.max_detections}" in help_text
    # thresholds left unset are left to the predictor (remote) or DetectParams' defaults (--local)
    assert Params().chosen() == {} and Params().as_request_parameters() == {}
    assert DetectParams(**Params(iou=0.3).chosen()) == DetectParams(iou=0.3)


def _detect_help() -> str:
    import contextlib
    import io

    from yolo_cli.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["detect", "--help"])
    return " ".join(out.getvalue().split())


def test_precisions_and_accelerations_are_the_settings():
    import torch

    from predictor.engine import Detector, resolve_precision

    cpu = torch.device("cpu")
    for precision in PRECISIONS:
        if precision not in ("fp16", "bf16"):  # fp16: CUDA; bf16: the exported CPU engine's (runtimes)
            resolve_precision(precision, cpu)
    with pytest.raises(ValueError, match=str(PRECISIONS).replace("(", r"\(").replace(")", r"\)")):
        resolve_precision("int8", cpu)
    detector = Detector.__new__(Detector)
    detector.device = cpu
    assert {mode for mode in ACCELERATIONS if mode not in GPU_ACCELERATIONS} == {"auto", "eager"}
    for mode in ACCELERATIONS:
        if mode in GPU_ACCELERATIONS:
            with pytest.raises(ValueError, match="needs a CUDA device"):
                detector._resolve_accel(mode)
        else:
            assert detector._resolve_accel(mode) == "eager"
    with pytest.raises(ValueError, match="accel must be one of"):
        detector._resolve_accel("tensorrt")


def test_coco_names_have_one_copy():
    from yolo_cli import coco_categories
    from yolo_operator import validation

    assert len(COCO_NAMES) == 80 and len(set(COCO_NAMES)) == 80
    assert validation.COCO_NAMES is COCO_NAMES
    assert coco_categories.COCO_NAMES is COCO_NAMES
    assert [name for _, name in coco_categories.COCO_CATEGORIES] == list(COCO_NAMES)


def test_variant_names_are_the_architectures_built():
    from predictor.settings import VARIANT_NAMES
    from predictor.yolov7.variants import VARIANTS

    assert tuple(VARIANTS) == VARIANT_NAMES
