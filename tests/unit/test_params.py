"""predictor.params: per-request parameters over the server defaults, from every protocol."""

from __future__ import annotations

import pytest

from predictor.errors import RequestError
from predictor.params import DetectParams, resolve_params

NAMES = ["person", "bicycle", "car"]
DEFAULTS = DetectParams(conf=0.25, iou=0.45, max_det=300)


# ----- parameters -------------------------------------------------------------------------------------
def test_resolve_params_overrides_and_defaults():
    assert resolve_params(None, DEFAULTS, NAMES) == DEFAULTS
    params = resolve_params(
        {"confidence": "0.05", "iou": 0.6, "max_detections": 7, "classes": "car,0", "agnostic": "true",
         "binary_data_output": False},
        DEFAULTS, NAMES,
    )
    assert params == DetectParams(conf=0.05, iou=0.6, max_det=7, classes=(0, 2), agnostic=True)
    assert resolve_params({"classes": ["Person", 1]}, DEFAULTS, NAMES).classes == (0, 1)
    assert resolve_params({"classes": ""}, DEFAULTS, NAMES).classes is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"confidence": 1.5}, "'confidence' must be in \\[0, 1\\]"),
        ({"iou": -0.1}, "'iou' must be in \\[0, 1\\]"),
        ({"confidence": "high"}, "'confidence' must be a number"),
        ({"max_detections": 0}, "'max_detections' must be in"),
        ({"max_detections": 2.5}, "must be an integer"),
        ({"classes": "person,unicorn"}, "unknown class name 'unicorn'"),
        ({"classes": [3]}, "class id 3 is out of range"),
        ({"agnostic": "maybe"}, "'agnostic' must be true or false"),
    ],
)
def test_resolve_params_errors(raw, message):
    with pytest.raises(RequestError, match=message):
        resolve_params(raw, DEFAULTS, NAMES)
