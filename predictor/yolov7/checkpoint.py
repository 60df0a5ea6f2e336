"""Loading YOLOv7 weights safely, and the project's own export format.

Three input formats are recognised by content (not by file name):

* ``official-pickle`` — a ``torch.save`` zip holding ``{'model': models.yolo.Model, ...}`` as released by
  the official repository (fp16). Read with :mod:`.safe_pickle`: no pickled code runs and no module named
  ``models``/``utils`` is imported; the state dict is rebuilt from the inert module tree using only
  ``_parameters``, ``_buffers``, ``_modules`` and the public ``names``/``nc``/``stride``.
* ``state-dict`` — a ``torch.save`` zip of a plain state dict (``{key: tensor}``), optionally wrapped as
  ``{'state_dict' | 'model': {...}, 'names': [...]}``; read with the same safe unpickler.
* ``safetensors`` — :func:`save_export` output: tensors plus metadata ``format=yolo-v7``,
  ``format_version``, ``variant``, ``names`` (JSON), ``anchors`` (JSON), ``strides`` (JSON).

The variant is recognised from the state dict's key/shape signature (the Detect layer index picks the
candidate, then every key and shape must match); the class count comes from the head conv's shape, so
fine-tuned checkpoints with any number of classes load.
"""

from __future__ import annotations

import functools
import json
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .names import default_names
from .safe_pickle import (
    MAX_PICKLE_BYTES,
    DisallowedGlobalError,
    Record,
    UnsafePickleError,
    load_bare_pickle,
    load_torch_zip,
    record_state,
)
from .variants import VARIANTS, VariantSpec

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "save_export",
    "build_model",
    "detect_variant",
]

EXPORT_FORMAT = "yolo-v7"
EXPORT_FORMAT_VERSION = "1"
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
_NON_PARAM_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "anchors", "anchor_grid")


class CheckpointError(ValueError):
    """A checkpoint cannot (or must not) be loaded; the message says why."""


@dataclass
class Checkpoint:
    """A YOLOv7 checkpoint in memory, independent of the file format it came from.

    ``state_dict`` uses the official unfused layout (``model.<layer>.<...>``), floating tensors in
    float32. ``anchors[i]`` is the flat ``[w0, h0, w1, h1, ...]`` pixel list of level ``i``.
    """

    variant: str
    names: list[str]
    num_classes: int
    state_dict: dict[str, Tensor]
    anchors: list[list[float]]
    strides: list[int]
    source_format: str
    source_dtype: str = "float32"
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        """Trainable parameters (excludes BN statistics and anchor buffers)."""
        return sum(t.numel() for k, t in self.state_dict.items() if not k.endswith(_NON_PARAM_SUFFIXES))


# --------------------------------------------------------------------------------------------------
# variant detection
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _signature(variant: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    from .network import YOLOv7

    with torch.device("meta"):
        model = YOLOv7(variant, num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


_DETECT_KEY = re.compile(r"^model\.(\d+)\.m\.0\.weight$")


def detect_variant(state_dict: Mapping[str, Tensor]) -> tuple[VariantSpec, int]:
    """Recognise ``(variant, num_classes)`` from an unfused state dict's keys and shapes.

    Raises :class:`CheckpointError` describing the mismatch when no variant fits.
    """
    indices = sorted(int(m.group(1)) for k in state_dict if (m := _DETECT_KEY.match(k)))
    if not indices:
        raise CheckpointError(
            "no YOLOv7 Detect head found (expected keys like 'model.105.m.0.weight'); is this a YOLOv7 "
            "checkpoint in the official layout?"
        )
    index = indices[-1]
    by_index = {spec.detect_index: spec for spec in VARIANTS.values()}
    spec = by_index.get(index)
    if spec is None:
        known = ", ".join(f"{s.name} (layer {i})" for i, s in sorted(by_index.items()))
        raise CheckpointError(
            f"no known YOLOv7 deploy variant has its Detect head at layer {index}; known: {known}"
        )
    head = state_dict[f"model.{index}.m.0.weight"]
    rows = head.shape[0]
    if rows % spec.num_anchors or rows // spec.num_anchors <= 5:
        raise CheckpointError(
            f"{spec.name}: head conv has {rows} output channels, not {spec.num_anchors} anchors × (5 + classes)"
        )
    num_classes = rows // spec.num_anchors - 5
    expected = _signature(spec.name, num_classes)
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [
        k
        for k in expected
        if k not in got and not k.endswith(_OPTIONAL_SUFFIXES + ("anchors", "anchor_grid"))
    ]
    unexpected = [k for k in got if k not in expected]
    wrong = [f"{k} {got[k]} != {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes (e.g. {'; '.join(wrong[:3])})")
        hint = ""
        if any(".ia." in k or ".im." in k or "implicit" in k for k in unexpected):
            hint = (
                " — this looks like a training-time model (IDetect with implicit layers); re-parameterise it "
                "into the deploy layout first"
            )
        raise CheckpointError(
            f"state dict does not match {spec.name} (Detect at layer {index}, {num_classes} classes): "
            + "; ".join(parts)
            + hint
        )
    return spec, num_classes


# --------------------------------------------------------------------------------------------------
# assembling a Checkpoint
# --------------------------------------------------------------------------------------------------
def _normalise_keys(sd: Mapping[str, Any]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(
                f"state dict entry {str(key)[:60]!r} is a {type(value).__name__}, expected a tensor"
            )
        if key.startswith("module."):
            key = key[len("module.") :]
        if key[:1].isdigit():
            key = "model." + key
        out[key] = value
    return out


def _anchors_from(sd: Mapping[str, Tensor], spec: VariantSpec) -> list[list[float]]:
    prefix = f"model.{spec.detect_index}."
    grid = sd.get(prefix + "anchor_grid")
    if grid is not None:
        return grid.detach().float().reshape(spec.num_levels, -1).tolist()
    anchors = sd.get(prefix + "anchors")
    if anchors is not None:
        strides = torch.tensor(spec.strides, dtype=torch.float32).view(-1, 1, 1)
        return (anchors.detach().float() * strides).reshape(spec.num_levels, -1).tolist()
    return [list(map(float, a)) for a in spec.anchors]


def _assemble(
    raw_sd: Mapping[str, Any],
    names: Any,
    source_format: str,
    strides: Any = None,
    metadata: dict[str, str] | None = None,
) -> Checkpoint:
    sd = _normalise_keys(raw_sd)
    spec, num_classes = detect_variant(sd)
    anchors = _anchors_from(sd, spec)
    floats = [t for t in sd.values() if t.is_floating_point()]
    source_dtype = str(floats[0].dtype).removeprefix("torch.") if floats else "float32"

    # Complete optional entries so the dict loads strictly into the unfused model.
    expected = _signature(spec.name, num_classes)
    prefix = f"model.{spec.detect_index}."
    a = torch.tensor(anchors, dtype=torch.float32).view(spec.num_levels, spec.num_anchors, 2)
    stride_t = torch.tensor(spec.strides, dtype=torch.float32).view(-1, 1, 1)
    sd.setdefault(prefix + "anchors", a / stride_t)
    sd.setdefault(prefix + "anchor_grid", a.view(spec.num_levels, 1, spec.num_anchors, 1, 1, 2))
    for key in expected:
        if key.endswith("num_batches_tracked"):
            sd.setdefault(key, torch.zeros((), dtype=torch.long))
    state_dict = {
        k: (sd[k].detach().to(torch.float32) if sd[k].is_floating_point() else sd[k].detach())
        .contiguous()
        .clone()
        for k in expected
    }

    if strides is not None:
        got = [int(round(float(s))) for s in (strides.tolist() if isinstance(strides, Tensor) else strides)]
        if got != list(spec.strides):
            raise CheckpointError(f"checkpoint strides {got} do not match {spec.name}'s {list(spec.strides)}")

    if names is None:
        names = default_names(num_classes)
    elif isinstance(names, Mapping):  # {index: name}
        try:
            names = [names[i] for i in range(len(names))]
        except KeyError:
            raise CheckpointError("checkpoint 'names' is a mapping without keys 0..n-1") from None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"checkpoint 'names' must be a list of strings, got {type(names).__name__}")
    if len(names) != num_classes:
        raise CheckpointError(
            f"checkpoint has {len(names)} class names but its head predicts {num_classes} classes"
        )
    return Checkpoint(
        variant=spec.name,
        names=list(names),
        num_classes=num_classes,
        state_dict=state_dict,
        anchors=anchors,
        strides=list(spec.strides),
        source_format=source_format,
        source_dtype=source_dtype,
        metadata=dict(metadata or {}),
    )


def _collect_record(rec: Record, prefix: str, out: dict[str, Tensor], depth: int = 0) -> None:
    """Rebuild ``state_dict`` entries from an inert module tree (``_parameters``, ``_buffers``, ``_modules``)."""
    if depth > 32:
        raise CheckpointError("module tree is nested too deeply")
    state = record_state(rec)
    for group in ("_parameters", "_buffers"):
        entries = state.get(group) or {}
        if not isinstance(entries, Mapping):
            raise CheckpointError(f"{rec.qualified_name}.{group} is not a mapping")
        for name, value in entries.items():
            if value is None:
                continue
            if not isinstance(value, Tensor):
                raise CheckpointError(f"{prefix}{name} is a {type(value).__name__}, expected a tensor")
            out[prefix + str(name)] = value
    children = state.get("_modules") or {}
    if not isinstance(children, Mapping):
        raise CheckpointError(f"{rec.qualified_name}._modules is not a mapping")
    for name, child in children.items():
        if child is None:
            continue
        if not isinstance(child, Record):
            raise CheckpointError(f"submodule {prefix}{name} is a {type(child).__name__}, not a module")
        _collect_record(child, f"{prefix}{name}.", out, depth + 1)


def _from_object(obj: Any, path: Path) -> Checkpoint:
    """Classify what the safe unpickler returned and assemble a Checkpoint."""
    model: Any = None
    names: Any = None
    if isinstance(obj, Mapping):
        model = obj.get("model")
        if model is None:
            model = obj.get("ema")
        if model is None and isinstance(obj.get("state_dict"), Mapping):
            model = obj["state_dict"]
        names = obj.get("names")
        if model is None and obj and all(isinstance(v, Tensor) for v in obj.values()):
            model = obj
    if isinstance(model, Record):
        state = record_state(model)
        sd: dict[str, Tensor] = {}
        _collect_record(model, "", sd)
        return _assemble(sd, state.get("names", names), "official-pickle", strides=state.get("stride"))
    if isinstance(model, Mapping):
        return _assemble(model, names, "state-dict")
    what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{path} does not contain a YOLOv7 model or state dict (found {what})")


def _load_safetensors(path: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors: {e}") from None
    names: Any = None
    if meta:
        if meta.get("format") not in (None, EXPORT_FORMAT):
            raise CheckpointError(
                f"{path}: safetensors metadata format {meta.get('format')!r} is not {EXPORT_FORMAT!r}"
            )
        version = meta.get("format_version")
        if version is not None and version != EXPORT_FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: export format_version {version!r} is not supported (this build reads "
                f"{EXPORT_FORMAT_VERSION!r})"
            )
        if "names" in meta:
            try:
                names = json.loads(meta["names"])
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: metadata 'names' is not valid JSON ({e})") from None
    ckpt = _assemble(tensors, names, "safetensors", metadata=meta)
    declared = meta.get("variant")
    if declared is not None and declared != ckpt.variant:
        raise CheckpointError(
            f"{path}: metadata says variant {declared!r} but the tensors are {ckpt.variant!r}"
        )
    return ckpt


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n <= size - 8 and head[8:9] == b"{"


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load an official ``.pt``, a plain state dict or a safetensors export (see module docstring).

    Never executes pickled code: a pickle that names anything outside the allow-list is refused with
    :class:`CheckpointError` ("refusing to load ...: the pickle calls os.system, which is not on the
    allow-list").
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} is not a file")
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(16)
    try:
        if zipfile.is_zipfile(p):
            try:
                with zipfile.ZipFile(p) as zf:
                    obj = load_torch_zip(zf, archive_bytes=size)
            except zipfile.BadZipFile as e:
                raise CheckpointError(f"cannot read {p}: damaged zip archive ({e})") from None
            return _from_object(obj, p)
        if _looks_like_safetensors(head, size):
            return _load_safetensors(p)
        if head[:1] == b"\x80":
            if size > MAX_PICKLE_BYTES:
                raise CheckpointError(f"{p}: a bare pickle of {size} bytes is over the limit of {MAX_PICKLE_BYTES}")
            obj = load_bare_pickle(p.read_bytes())
            if isinstance(obj, int):
                raise CheckpointError(
                    f"{p} uses torch's legacy (pre-1.6, non-zip) serialisation, which is not supported; "
                    "re-save it with a current torch.save"
                )
            return _from_object(obj, p)
    except DisallowedGlobalError as e:
        raise CheckpointError(f"refusing to load {p}: {e}") from None
    except UnsafePickleError as e:
        raise CheckpointError(f"cannot read {p}: {e}") from None
    except RecursionError:  # a structure the pickle scan let through, deep enough for our own walk
        raise CheckpointError(f"cannot read {p}: its objects are nested too deeply") from None
    raise CheckpointError(
        f"{p} is not a recognised checkpoint (expected a torch.save zip archive or a .safetensors export)"
    )


def save_export(ckpt: Checkpoint, path: str | os.PathLike[str], dtype: torch.dtype | None = None) -> Path:
    """Write ``ckpt`` as a safetensors export (unfused state dict + metadata); returns the path.

    ``dtype`` converts floating tensors (e.g. ``torch.float16`` halves the file; official weights are
    fp16 already, so that is lossless for them); default keeps float32. Written atomically.
    """
    from safetensors.torch import save_file

    out = Path(path)
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        for k, v in ckpt.state_dict.items()
    }
    metadata = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "variant": ckpt.variant,
        "num_classes": str(ckpt.num_classes),
        "names": json.dumps(list(ckpt.names)),
        "anchors": json.dumps(ckpt.anchors),
        "strides": json.dumps(list(ckpt.strides)),
        "source_format": ckpt.source_format,
    }
    tmp = out.with_name(out.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def build_model(ckpt: Checkpoint, fuse: bool = True):  # noqa: ANN201 - returns YOLOv7 (lazy import)
    """The :class:`~predictor.yolov7.network.YOLOv7` for ``ckpt``: float32, CPU, ``eval()``, no grads,
    fused unless ``fuse=False``. ``model.names`` holds the class names."""
    from .fuse import fuse_model
    from .network import YOLOv7

    with torch.device("meta"):
        model = YOLOv7(ckpt.variant, ckpt.num_classes, anchors=ckpt.anchors)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint does not fit {ckpt.variant}: {e}") from None
    model = model.float().eval().requires_grad_(False)
    model.names = list(ckpt.names)  # type: ignore[assignment]
    if fuse:
        fuse_model(model)
    return model
