"""A restricted unpickler for ``torch.save`` files that never executes pickled code.

A pickle can name any importable callable (``os.system``, ``builtins.eval``, ...) and have the unpickler
call it. :class:`SafeUnpickler` resolves names only from an allow-list:

* plain containers: ``collections.OrderedDict``, ``set``, ``frozenset``;
* torch's tensor rebuild functions (``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``, ...),
  replaced by local equivalents that only slice a storage read from the archive;
* storage type names (``torch.HalfStorage`` ...) and dtypes, as inert markers;
* classes of the official code base (``models.*``) and of ``torch.nn.modules.*`` (and numpy scalars
  that trainer checkpoints carry), replaced by **inert record classes**: instances only keep the state
  the pickle gives them; no module is imported and no method of the real class runs.

Anything else raises :class:`UnsafePickleError` *before* the name is resolved, so nothing runs.
Storages (``persistent_load``) are read from the zip archive as raw little-endian bytes.

Bounded before anything is built or inflated: the pickle's nesting depth and object count
(:mod:`.pickle_scan`), and every archive entry by the size its zip directory *declares* — the pickle
(:data:`MAX_PICKLE_BYTES`), the archive's total (:data:`MAX_ARCHIVE_BYTES`, and at most
:data:`MAX_INFLATION` times the file's size), each storage (exactly what its tensor needs) — so a zip
bomb is refused without inflating it (``zipfile`` never inflates an entry past its declared size).

The loader's own objects are out of the pickle's reach: the allow-listed functions and storage markers
refuse ``BUILD`` (a pickle could otherwise set their slots and swap the function), the tables are
read-only, and ``OrderedDict`` is a subclass whose ``BUILD`` accepts only torch's ``_metadata``
attribute (a pickle could otherwise shadow ``get``/``items`` on the instance the loader reads).
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections import OrderedDict
from types import MappingProxyType
from typing import Any

import torch

from .pickle_scan import PickleShapeError, scan

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_INFLATION",
    "MAX_PICKLE_BYTES",
    "UnsafePickleError",
    "DisallowedGlobalError",
    "Record",
    "SafeUnpickler",
    "load_torch_zip",
    "load_bare_pickle",
    "record_state",
]


MAX_PICKLE_BYTES = 16 << 20  # an official yolov7-e6e.pt's data.pkl is well under 1 MiB
MAX_ARCHIVE_BYTES = 2 << 30  # every entry inflated; the largest official checkpoint is ~300 MB
MAX_INFLATION = 16  # torch.save stores entries uncompressed (1x); fp32 weights deflate by ~1.1x


def _refuse_build(self: Any, state: Any) -> None:
    raise UnsafePickleError("malformed pickle: state applied to a loader object")


class UnsafePickleError(ValueError):
    """The pickle is malformed, or names something outside the allow-list."""


class DisallowedGlobalError(UnsafePickleError):
    """The pickle names a global (function or class) that is not on the allow-list."""


class Record:
    """An inert stand-in for a pickled object of an allow-listed class.

    ``pickle_module`` / ``pickle_name`` name the original class; :func:`record_state` returns the state
    (normally the original ``__dict__``) the pickle stored.
    """

    __slots__ = ("_args", "_state")
    pickle_module = ""
    pickle_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Record:
        if not (isinstance(cls, type) and issubclass(cls, Record)):  # pragma: no cover - defensive
            raise UnsafePickleError("malformed pickle: bad record construction")
        obj = object.__new__(cls)
        obj._args = args
        obj._state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if not isinstance(self, Record):  # BUILD applied to the record *class*
            raise UnsafePickleError("malformed pickle: state applied to a class")
        self._state = state

    @property
    def qualified_name(self) -> str:
        return f"{self.pickle_module}.{self.pickle_name}"

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


def record_state(obj: Any) -> dict[str, Any]:
    """The attribute dict a :class:`Record` was given (``{}`` when none); merges ``(dict, slots)`` state."""
    if not isinstance(obj, Record):
        raise TypeError(f"expected an inert record, got {type(obj).__name__}")
    state = obj._state
    if state is None:
        return {}
    if isinstance(state, tuple) and len(state) == 2:
        merged: dict[str, Any] = {}
        for part in state:
            if isinstance(part, dict):
                merged.update(part)
        return merged
    if isinstance(state, dict):
        return state
    return {}


class _StorageType:
    """Marker for ``torch.<X>Storage`` names: just the element dtype."""

    __slots__ = ("dtype", "name")
    __setstate__ = _refuse_build

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype


class _Func:
    """An allow-listed callable. No ``__dict__``, and ``BUILD`` (which would set its slots) is refused."""

    __slots__ = ("_fn", "_name")
    __setstate__ = _refuse_build

    def __init__(self, name: str, fn: Any) -> None:
        self._name = name
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __repr__(self) -> str:
        return f"<allowed {self._name}>"


_STORAGE_DTYPES = MappingProxyType({
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
})
_DTYPE_NAMES = frozenset({
    "float16",
    "half",
    "float32",
    "float",
    "float64",
    "double",
    "bfloat16",
    "int64",
    "long",
    "int32",
    "int",
    "int16",
    "short",
    "int8",
    "uint8",
    "bool",
})
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Classes replaced by inert records: the official code base and torch.nn's module classes.
_RECORD_MODULE_PREFIXES = ("models.", "torch.nn.modules.")
_RECORD_EXACT = frozenset({
    # numpy scalars / arrays that trainer checkpoints carry (e.g. best_fitness); never needed here.
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
})


def _is_index_tuple(t: Any) -> bool:
    return isinstance(t, (tuple, list)) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in t
    )


def _check_tensor_args(storage: Any, offset: Any, size: Any, stride: Any) -> None:
    if not isinstance(storage, torch.Tensor) or storage.dim() != 1:
        raise UnsafePickleError("malformed pickle: tensor rebuilt from something that is not a storage")
    if not (
        isinstance(offset, int)
        and offset >= 0
        and _is_index_tuple(size)
        and _is_index_tuple(stride)
        and len(size) == len(stride)
    ):
        raise UnsafePickleError("malformed pickle: bad tensor geometry")


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    _check_tensor_args(storage, offset, size, stride)
    try:
        return storage.as_strided(tuple(size), tuple(stride), offset)
    except RuntimeError as e:
        raise UnsafePickleError(f"malformed pickle: tensor does not fit its storage ({e})") from None


def _rebuild_tensor_v3(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, dtype: Any, *_: Any
) -> torch.Tensor:
    if not isinstance(dtype, torch.dtype):
        raise UnsafePickleError("malformed pickle: bad dtype")
    if isinstance(storage, torch.Tensor) and storage.dtype != dtype:
        storage = storage.view(torch.uint8).view(dtype)
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("malformed pickle: parameter without tensor data")
    return data


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol-2 pickles store ``bytes`` as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("malformed pickle: _codecs.encode used for something other than bytes")
    return text.encode("latin1")


class _OrderedDict(OrderedDict):
    """``collections.OrderedDict`` as unpickled: ``BUILD`` may only set torch's ``_metadata`` (dropped)."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(self, _OrderedDict):  # BUILD applied to the class
            raise UnsafePickleError("malformed pickle: state applied to a class")
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]
        if not isinstance(state, dict) or set(state) - {"_metadata"}:
            names = sorted(map(str, state))[:3] if isinstance(state, dict) else type(state).__name__
            raise UnsafePickleError(f"malformed pickle: an OrderedDict given attributes {names}")


_FUNCS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("_codecs", "encode"): _codecs_encode,
}
_FUNCS = MappingProxyType(_FUNCS)
_CONTAINERS = MappingProxyType({
    ("collections", "OrderedDict"): _OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
})


class SafeUnpickler(pickle.Unpickler):
    """Unpickles with :meth:`find_class` limited to the allow-list above.

    ``storage_reader(key, expected_bytes) -> bytearray`` supplies ``persistent_load`` storages; without one, a pickle that
    references storages is refused.
    """

    def __init__(self, file: io.BufferedIOBase, storage_reader=None) -> None:  # noqa: ANN001
        super().__init__(file)
        self._storage_reader = storage_reader
        self._storages: dict[str, torch.Tensor] = {}
        self._records: dict[tuple[str, str], type[Record]] = {}
        self.record_classes_seen: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _FUNCS:
            return _Func(f"{module}.{name}", _FUNCS[key])
        if key in _CONTAINERS:
            return _CONTAINERS[key]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPE_NAMES:
            return getattr(torch, name)
        if (
            _MODULE.match(module)
            and _IDENT.match(name)
            and (module.startswith(_RECORD_MODULE_PREFIXES) or key in _RECORD_EXACT)
        ):
            return self._record_class(module, name)
        raise DisallowedGlobalError(f"the pickle calls {module}.{name}, which is not on the allow-list")

    def _record_class(self, module: str, name: str) -> type[Record]:
        cls = self._records.get((module, name))
        if cls is None:
            # A fresh class per load: nothing a pickle does to it outlives this unpickler.
            cls = type(name, (Record,), {"__slots__": (), "pickle_module": module, "pickle_name": name})
            self._records[(module, name)] = cls
            self.record_classes_seen.add(f"{module}.{name}")
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"malformed pickle: unsupported persistent id {str(pid)[:80]!r}")
        storage_type, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
        if (
            not isinstance(storage_type, _StorageType)
            or not isinstance(key, str)
            or not isinstance(numel, int)
        ):
            raise UnsafePickleError("malformed pickle: bad storage reference")
        if self._storage_reader is None:
            raise UnsafePickleError(
                "the pickle references tensor storages but is not inside a torch zip archive"
            )
        cached = self._storages.get(key)
        if cached is None:
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            expected = numel if storage_type.name == "UntypedStorage" else numel * itemsize
            if expected < 0:
                raise UnsafePickleError(f"malformed pickle: storage {key} has {numel} elements")
            raw = self._storage_reader(key, expected)  # refuses a size other than expected, unread
            cached = (
                torch.frombuffer(raw, dtype=storage_type.dtype)
                if raw
                else torch.empty(0, dtype=storage_type.dtype)
            )
            self._storages[key] = cached
        if cached.dtype != storage_type.dtype:
            return cached.view(torch.uint8).view(storage_type.dtype)
        return cached


def _check_declared_sizes(zf: zipfile.ZipFile, archive_bytes: int) -> None:
    """Refuse a zip bomb from its directory alone: what its entries declare, before inflating any."""
    total = sum(info.file_size for info in zf.infolist())
    budget = min(MAX_ARCHIVE_BYTES, max(MAX_INFLATION * archive_bytes, 64 << 20))
    if total > budget:
        raise UnsafePickleError(
            f"malformed archive: its entries declare {total} bytes in all, over the limit of {budget} bytes "
            f"(at most {MAX_INFLATION}x the {archive_bytes}-byte file and at most {MAX_ARCHIVE_BYTES} bytes)"
        )


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytearray:
    """One entry, inflated straight into a buffer of its declared size (never past it)."""
    buffer = bytearray(info.file_size)
    with zf.open(info) as f:
        view, filled = memoryview(buffer), 0
        while filled < len(buffer):
            got = f.readinto(view[filled:])
            if not got:
                raise UnsafePickleError(f"malformed archive: {info.filename} is shorter than it declares")
            filled += got
        if f.read(1):
            raise UnsafePickleError(f"malformed archive: {info.filename} is longer than it declares")
    return buffer


def load_torch_zip(zf: zipfile.ZipFile, archive_bytes: int | None = None) -> Any:
    """Unpickle the ``<prefix>/data.pkl`` of a ``torch.save`` zip archive with :class:`SafeUnpickler`.

    ``archive_bytes`` (the file's size) bounds what the entries may declare (see the module docstring).
    """
    infos = {info.filename: info for info in zf.infolist()}
    if archive_bytes is not None:
        _check_declared_sizes(zf, archive_bytes)
    pkl_names = [n for n in infos if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkl_names) != 1:
        raise UnsafePickleError("not a torch.save archive: expected exactly one data.pkl")
    prefix = pkl_names[0][: -len("data.pkl")]
    byteorder = infos.get(prefix + "byteorder")
    if byteorder is not None:
        if byteorder.file_size > 16:
            raise UnsafePickleError("malformed archive: byteorder entry is too large")
        if bytes(_read_entry(zf, byteorder)).strip() not in (b"little", b""):
            raise UnsafePickleError("big-endian torch archives are not supported")

    def read_storage(key: str, expected: int) -> bytearray:
        info = infos.get(f"{prefix}data/{key}")
        if info is None:
            raise UnsafePickleError(f"malformed archive: storage {key!r} is missing")
        if info.file_size != expected:
            raise UnsafePickleError(
                f"malformed archive: storage {key} declares {info.file_size} bytes, its tensor needs {expected}"
            )
        return _read_entry(zf, info)

    pickle_info = infos[pkl_names[0]]
    if pickle_info.file_size > MAX_PICKLE_BYTES:
        raise UnsafePickleError(
            f"malformed archive: data.pkl declares {pickle_info.file_size} bytes, over the limit of "
            f"{MAX_PICKLE_BYTES}"
        )
    data = bytes(_read_entry(zf, pickle_info))
    return _run(data, read_storage)


def load_bare_pickle(data: bytes) -> Any:
    """Unpickle a bare pickle (no archive) with :class:`SafeUnpickler`; storages are refused."""
    if len(data) > MAX_PICKLE_BYTES:
        raise UnsafePickleError(f"a bare pickle of {len(data)} bytes is over the limit of {MAX_PICKLE_BYTES}")
    return _run(data, None)


def _run(data: bytes, storage_reader: Any) -> Any:
    try:
        scan(data)
    except PickleShapeError as error:
        raise UnsafePickleError(str(error)) from None
    try:
        return SafeUnpickler(io.BytesIO(data), storage_reader).load()
    except UnsafePickleError:
        raise
    except RecursionError:
        raise UnsafePickleError("malformed pickle: nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - any other failure means a broken or hostile pickle
        raise UnsafePickleError(f"malformed pickle: {type(e).__name__}: {str(e)[:200]}") from None
