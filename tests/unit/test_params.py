"""predictor.params: per-request parameters over the server defaults, from every protocol."""

from __future__ import annotations

import pytest

from predictor.errors import RequestError
from predictor.params import resolve_params
from predictor.settings import DetectParams

NAMES = ["person", "bicycle", "car"]
DEFAULTS = DetectParams(confidence=0.25, iou=0.45, max_detections=300)


# ----- parameters -------------------------------------------------------------------------------------
def test_resolve_params_overrides_and_defaults():
    for nothing in (None, {}, {"binary_data_output": True}, {"confidence": None}):  # the server's own, checked once
        assert resolve_params(nothing, DEFAULTS, NAMES) is DEFAULTS
    params = resolve_params(
        {"confidence": "0.05", "iou": 0.6, "max_detections": 7, "classes": "car,0", "agnostic": "true",
         "binary_data_output": False},
        DEFAULTS, NAMES,
    )
    assert params == DetectParams(confidence=0.05, iou=0.6, max_detections=7, classes=(0, 2), agnostic=True)
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


# ----- issue 12.3: gRPC parameters we cannot read are errors, never the default ----------------------
def _grpc_parameter(raw: bytes):
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    parameter = pb.InferParameter()
    parameter.MergeFromString(raw)
    return parameter


def test_grpc_parameters_read_tritons_double_and_uint64_fields():
    """tritonclient sends floats as ``double_param`` (field 4), which KServe's proto lacks: it arrived empty
    and the default threshold was used (confidence=0.9 gave the default's 139 detections)."""
    import struct

    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    from predictor.params import grpc_parameters

    double = _grpc_parameter(b"\x21" + struct.pack("<d", 0.9))  # field 4, wire type 1 (64-bit)
    uint64 = _grpc_parameter(b"\x28\x07")  # field 5, varint 7
    assert double.WhichOneof("parameter_choice") is None  # what KServe's proto sees
    raw = grpc_parameters({"confidence": double, "max_detections": uint64, "iou": pb.InferParameter(string_param="0.3"),
                           "agnostic": pb.InferParameter(bool_param=True)})
    assert raw == {"confidence": 0.9, "max_detections": 7, "iou": "0.3", "agnostic": True}
    assert resolve_params(raw, DEFAULTS, NAMES) == DetectParams(confidence=0.9, iou=0.3, max_detections=7, agnostic=True)
    with pytest.raises(RequestError, match=r"'confidence' must be in \[0, 1\], got 1.5"):
        resolve_params(grpc_parameters({"confidence": _grpc_parameter(b"\x21" + struct.pack("<d", 1.5))}),
                       DEFAULTS, NAMES)


@pytest.mark.parametrize("raw", [b"", b"\x35\0\0\0\0", b"\x4a\x01x"])
def test_grpc_parameter_without_a_readable_value_is_an_error(raw):
    from predictor.params import grpc_parameters

    with pytest.raises(RequestError, match="parameter 'confidence' has no value this server can read"):
        grpc_parameters({"confidence": _grpc_parameter(raw)})
    assert grpc_parameters({"someone_elses": _grpc_parameter(raw)}) == {}
