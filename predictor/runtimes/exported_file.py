"""Reading an exported model someone else may have made: its metadata JSON and the runtime's load, bounded.

An exported ``.onnx`` given as ``--weights`` (or found at KServe's ``/mnt/models``) is input like a
checkpoint: it runs no code (ONNX Runtime and OpenVINO refuse external-data paths that leave the model's
folder), but a wrong, truncated or hostile file must end in one clear ``ValueError`` naming the file and
the problem, never a traceback from a runtime or a model that answers with the wrong shapes later.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from predictor.runtimes.export import metadata_path

__all__ = ["MAX_METADATA_BYTES", "MAX_MODEL_BYTES", "open_checked", "read_metadata"]

MAX_METADATA_BYTES = 1 << 20  # names of 80 classes take ~1 KB
MAX_MODEL_BYTES = 2 << 30  # a protobuf's own limit; yolov7-e6e exported is ~600 MB
MAX_CLASSES = 10_000
MAX_NAME_CHARS = 200
INPUT_SIZES = range(32, 4097)  # a multiple of the largest stride within


def _fail(onnx_path: str | Path, problem: str) -> ValueError:
    return ValueError(f"{onnx_path}: {problem}")


def _said(error: BaseException, onnx_path: str | Path) -> str:
    """A runtime's error on one line, without the path (the message names it once), at most 300 characters."""
    text = " ".join(str(error).replace(str(onnx_path), "the model").split()) or type(error).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """The metadata JSON beside ``onnx_path`` (see :func:`predictor.runtimes.export.write_metadata`), checked:
    ``names`` (1…10,000 strings), ``strides`` (positive ints), ``input_size`` (32…4096, a multiple of the
    largest stride), ``variant``. Raises ``ValueError`` naming what is wrong."""
    meta_file = metadata_path(onnx_path)
    try:
        size = meta_file.stat().st_size
        if size > MAX_METADATA_BYTES:
            raise _fail(onnx_path, f"metadata {meta_file.name} is {size} bytes (at most {MAX_METADATA_BYTES})")
        meta = json.loads(meta_file.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(onnx_path, f"no readable metadata {meta_file.name} beside it ({error}); export with "
                               "python -m predictor.runtimes.export") from None
    if not isinstance(meta, dict):
        raise _fail(onnx_path, f"metadata {meta_file.name} is not a JSON object")
    names, strides, size = meta.get("names"), meta.get("strides", [8, 16, 32]), meta.get("input_size")
    if not (isinstance(names, list) and 0 < len(names) <= MAX_CLASSES
            and all(isinstance(n, str) and 0 < len(n) <= MAX_NAME_CHARS for n in names)):
        raise _fail(onnx_path, f"metadata names must be 1 to {MAX_CLASSES} class names of at most "
                               f"{MAX_NAME_CHARS} characters")
    if not (isinstance(strides, list) and strides and all(type(s) is int and 0 < s <= 128 for s in strides)):
        raise _fail(onnx_path, f"metadata strides must be positive integers up to 128, got {str(strides)[:80]}")
    if not (type(size) is int and size in INPUT_SIZES and size % max(strides) == 0):
        raise _fail(onnx_path, f"metadata input_size must be an integer in 32…4096 divisible by {max(strides)}, "
                               f"got {str(size)[:40]}")
    variant = meta.get("variant", "custom")
    return {"names": names, "strides": strides, "input_size": size,
            "variant": variant if isinstance(variant, str) else "custom"}


def open_checked(onnx_path: str | Path, meta: dict[str, Any], build: Callable[[], Any]) -> Any:
    """``build()`` the runtime for ``onnx_path`` (size-bounded first), then check one forward's shapes against
    ``meta``: input ``[1, 3, S, S]`` → output ``[1, R, 5 + len(names)]`` with R = 3 anchors per cell of every
    stride. Returns the runtime; raises ``ValueError`` for anything the runtime or the check refuses."""
    try:
        size = Path(onnx_path).stat().st_size
    except OSError as error:
        raise _fail(onnx_path, f"cannot read it ({error.strerror or error})") from None
    if size > MAX_MODEL_BYTES:
        raise _fail(onnx_path, f"{size} bytes, over the limit of {MAX_MODEL_BYTES}")
    try:
        runtime = build()
    except Exception as error:  # noqa: BLE001 - ONNX Runtime's Fail/InvalidProtobuf/... are bare Exceptions,
        # OpenVINO's a RuntimeError or a UnicodeDecodeError; ours (an engine that does not run the precision) too
        raise _fail(onnx_path, f"the runtime cannot load it: {_said(error, onnx_path)}") from None
    s, nc = meta["input_size"], len(meta["names"])
    rows = 3 * sum((s // stride) ** 2 for stride in meta["strides"])
    try:
        out = runtime.run(np.zeros((1, 3, s, s), dtype=np.float32))
    except Exception as error:  # noqa: BLE001 - as above
        raise _fail(onnx_path, f"a forward at {s}x{s} fails: {_said(error, onnx_path)}") from None
    shape = tuple(getattr(out, "shape", ()))
    if shape != (1, rows, 5 + nc) or getattr(out, "dtype", None) != np.float32:
        raise _fail(onnx_path, f"answers {shape} {getattr(out, 'dtype', type(out))} for one {s}x{s} image; "
                               f"its metadata means float32 (1, {rows}, {5 + nc})")
    return runtime
