"""Per-request detection parameters: read once from the wire into a :class:`~predictor.settings.DetectParams`
(which checks the ranges, once), then passed whole.

Names on the wire (v1 ``parameters``, v2 request ``parameters``, gRPC ``parameters`` map) are the
``DetectParams`` fields: ``confidence``, ``iou``, ``max_detections``, ``classes`` (ids or names, a list or
a comma-separated string; empty = all) and ``agnostic``. A missing or ``null`` value means the server
default; a value that cannot be read is a :class:`~predictor.errors.RequestError` (HTTP 400,
INVALID_ARGUMENT), never the default. Other names are ignored (clients add their own, e.g.
``binary_data_output``).

gRPC carries ``bool_param``, ``int64_param`` and ``string_param`` (KServe's ``grpc_predict_v2.proto``);
Triton's clients also send ``double_param``/``uint64_param``, fields this protocol does not have: they
arrive as unknown fields of an empty parameter. :func:`grpc_parameters` decodes those two from the
unknown-field bytes when it can, and refuses the parameter when it cannot.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

from predictor.errors import RequestError
from predictor.settings import DetectParams

__all__ = ["PARAMETER_NAMES", "grpc_parameters", "resolve_classes", "resolve_params"]

PARAMETER_NAMES = tuple(field.name for field in fields(DetectParams))


def _bad(name: str, problem: str) -> RequestError:
    return RequestError(f"parameter '{name}' {problem}", "parameter")


def _as_float(name: str, value: Any) -> float:
    """A number (its range is :class:`DetectParams`' to check)."""
    if isinstance(value, bool):
        raise _bad(name, f"must be a number in [0, 1], got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise _bad(name, f"must be a number in [0, 1], got {value!r:.100}") from None


def _as_int(name: str, value: Any) -> int:
    """An integer, or a float without a fraction (its range is :class:`DetectParams`' to check)."""
    if isinstance(value, bool):
        raise _bad(name, f"must be an integer, got {value!r}")
    number: int | None
    try:
        if isinstance(value, float):
            number = int(value) if value.is_integer() else None
        elif isinstance(value, str) and len(value) > 20:
            number = None
        else:
            number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None:
        raise _bad(name, f"must be an integer, got {value!r:.100}")
    return number


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise _bad(name, f"must be true or false, got {value!r:.100}")


def resolve_classes(value: Any, names: Sequence[str], source: str = "parameter 'classes'") -> tuple[int, ...] | None:
    """Class ids or names (a list, or a comma-separated string) → sorted ids; empty → None (all)."""
    if value is None:
        return None
    if isinstance(value, str):
        items: list[Any] = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise RequestError(f"{source} must be class ids or names (a list or a comma-separated string)", "parameter")
    if not items:
        return None
    lookup = {name: index for index, name in enumerate(names)}
    folded = {name.lower(): index for index, name in enumerate(names)}
    ids: set[int] = set()
    for item in items:
        if isinstance(item, str) and len(item) < 20 and item.strip().lstrip("-").isdigit():
            item = int(item)
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < len(names):
                raise RequestError(f"{source}: class id {item} is out of range (the model has {len(names)} "
                                   f"classes, 0..{len(names) - 1})", "parameter")
            ids.add(item)
        elif isinstance(item, str):
            index = lookup.get(item.strip(), folded.get(item.strip().lower()))
            if index is None:
                raise RequestError(f"{source}: unknown class name {item[:100]!r} (see the model metadata for the "
                                   "class names)", "parameter")
            ids.add(index)
        else:
            raise RequestError(f"{source}: {item!r:.100} is neither a class id nor a class name", "parameter")
    return tuple(sorted(ids))


def resolve_params(raw: Mapping[str, Any] | None, defaults: DetectParams, names: Sequence[str]) -> DetectParams:
    """Request parameters over the server defaults (see the module docstring)."""
    if raw is not None and not isinstance(raw, Mapping):
        raise RequestError(f"'parameters' must be an object, got {type(raw).__name__}", "parameter")
    raw = dict(raw or {})
    values: dict[str, Any] = {}
    for name, parse in (("confidence", _as_float), ("iou", _as_float), ("max_detections", _as_int),
                        ("agnostic", _as_bool)):
        if raw.get(name) is not None:
            values[name] = parse(name, raw[name])
    if "classes" in raw:
        values["classes"] = resolve_classes(raw["classes"], names)
    if not values:  # the usual request: the defaults as they are (a frozen dataclass, checked once)
        return defaults
    try:
        return replace(defaults, **values)
    except ValueError as error:  # out of bounds: DetectParams names the parameter
        raise RequestError(f"parameter {error}", "parameter") from None


# Triton's InferParameter fields that KServe's proto lacks: field number -> (wire type, struct format).
_FOREIGN_FIELDS = {4: (1, "<d"), 5: (0, None)}  # double_param (64-bit), uint64_param (varint)


def _foreign_value(key: str, value: Any) -> Any:
    """The value of a Triton ``double_param``/``uint64_param`` kept as unknown bytes, or an error."""
    raw = value.SerializeToString()  # the unknown fields, re-serialised as they came
    if raw:
        tag = raw[0]
        field, wire = tag >> 3, tag & 7
        kind = _FOREIGN_FIELDS.get(field)
        if kind is not None and kind[0] == wire:
            if wire == 1 and len(raw) == 9:
                return struct.unpack("<d", raw[1:])[0]
            if wire == 0:
                number, shift = 0, 0
                for byte in raw[1:11]:
                    number |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        return number
    raise RequestError(
        f"parameter '{key}' has no value this server can read (KServe's gRPC protocol carries bool_param, "
        "int64_param or string_param; send the number as a string, e.g. \"0.5\")", "parameter"
    )


def grpc_parameters(parameters: Any) -> dict[str, Any]:
    """gRPC ``InferParameter`` map (or a REST dict) → plain values; an unreadable value is an error."""
    out: dict[str, Any] = {}
    for key, value in (parameters or {}).items():
        if hasattr(value, "WhichOneof"):
            field = value.WhichOneof("parameter_choice")
            if field:
                out[key] = getattr(value, field)
            elif key in PARAMETER_NAMES:  # someone else's parameter may stay unread
                out[key] = _foreign_value(key, value)
        else:
            out[key] = value
    return out
