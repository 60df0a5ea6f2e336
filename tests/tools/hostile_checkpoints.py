"""Crafted hostile checkpoints (zip bombs, nesting, forged storages, globals tricks) and a bounded way to
load them: :func:`load_in_subprocess` runs ``load_checkpoint`` on each file in a child process under an
address-space limit and reports, per file, the error message and the child's peak RSS growth.

Used by ``tests/unit/test_checkpoint.py`` (one case per issue item) and ``tests/fuzz`` (many cases).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_HEADROOM = 3 << 29  # the child may map 1.5 GiB beyond what torch's import mapped, whatever a case does


def reduce_pickle(module: str, name: str, *args) -> bytes:
    """A protocol-2 pickle that calls ``module.name(*args)`` when loaded by a plain unpickler."""
    body = pickle.dumps(tuple(args), protocol=2)[2:-1]  # drop PROTO and STOP
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + body + b"R."


def torch_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A ``torch.save``-layout archive (stored, like torch's) around ``data_pkl``."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", data)
        zf.writestr("archive/version", "3\n")
    return path


def _binunicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def storage_pickle(key: str, numel: int, size: tuple[int, ...] = (), dtype: str = "HalfStorage") -> bytes:
    """``{'x': tensor}`` whose tensor is rebuilt from storage ``key`` declaring ``numel`` elements."""
    pid = (b"(" + _binunicode("storage") + b"ctorch\n" + dtype.encode() + b"\n" + _binunicode(key)
           + _binunicode("cpu") + b"\x8a\x08" + struct.pack("<q", numel) + b"tQ")
    shape = pickle.dumps(tuple(size), protocol=2)[2:-1]
    stride = pickle.dumps(tuple(1 for _ in size), protocol=2)[2:-1]
    rebuild = b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00" + shape + stride + b"\x89N\x8a\x00tR"
    return b"\x80\x02}" + _binunicode("x") + rebuild + b"s."


def zip_bomb(path: Path, declared: int, entry: str = "storage") -> Path:
    """A deflated archive whose one big entry (a storage, or the pickle itself) inflates to ``declared``
    bytes of zeros: about ``declared / 1000`` bytes on disk."""
    pkl = storage_pickle("0", declared // 2, (declared // 2,)) if entry == "storage" else None
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        if pkl is not None:
            zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        name = "archive/data/0" if entry == "storage" else "archive/data.pkl"
        with zf.open(name, "w", force_zip64=True) as out:
            if entry != "storage":
                out.write(b"\x80\x02N.")  # a pickle, then zeros
            chunk = bytes(1 << 20)
            for _ in range(declared >> 20):
                out.write(chunk)
    return path


def nested_key_pickle(depth: int, container: str = "dict") -> bytes:
    """A tuple nested ``depth`` deep used as a dict key or set member: hashing it recurses in C."""
    nested = b"K\x01" + b"\x85" * depth  # BININT1 1, then TUPLE1 ``depth`` times
    if container == "set":
        return b"\x80\x04\x8f(" + nested + b"\x90."  # EMPTY_SET, MARK, nested, ADDITEMS
    return b"\x80\x02}" + nested + b"Ns."  # EMPTY_DICT, nested, None, SETITEM


def nested_list_pickle(depth: int) -> bytes:
    """``{'model': [[[...]]]}`` nested ``depth`` deep (lists: built and freed without recursion)."""
    return b"\x80\x02}" + _binunicode("model") + b"]" * depth + b"a" * (depth - 1) + b"s."


def swapped_function_pickle() -> bytes:
    """``BUILD`` on an allow-listed function wrapper, replacing its function by ``OrderedDict``, then a
    call of it: the loader would be steered into building what the pickle chose."""
    return (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00N}" + _binunicode("_fn")
            + b"ccollections\nOrderedDict\ns\x86b0h\x00)R.")


def shadowed_get_pickle() -> bytes:
    """An ``OrderedDict`` given an instance attribute ``get`` by ``BUILD``: ``obj.get('model')`` would call
    an allow-listed function of the pickle's choice."""
    return (b"\x80\x02ccollections\nOrderedDict\n)R}" + _binunicode("get")
            + b"ctorch._utils\n_rebuild_parameter\nsb.")


_CHILD = """
import json, resource, sys
{setup}
mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (mapped + {headroom}, mapped + {headroom}))

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) // 1024

for path in sys.argv[{first}:]:
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    before = status("VmRSS:")
    try:
{load}
        outcome = "loaded"
    except {expected} as error:
        outcome = "{expected}: " + str(error)
    except BaseException as error:  # anything else is a failure of the loader
        outcome = "ESCAPED " + type(error).__name__ + ": " + str(error)[:300]
    growth = status("VmHWM:") - before
    print(json.dumps({{"path": path, "outcome": outcome, "peak_growth_mb": growth}}), flush=True)
"""


def bounded_loads(paths: list[Path], *, setup: str, load: str, expected: str, args: tuple[str, ...] = (),
                  timeout: float = 600) -> tuple[int, list[dict], str]:
    """Run ``load`` (statements indented 8 spaces, ``path`` bound) on each path in one child whose address space
    may grow :data:`CHILD_HEADROOM` beyond what ``setup`` (imports, run first) mapped. ``expected``: the
    exception type a refusal raises. ``args`` come before the paths in ``sys.argv``. Returns the child's exit
    status (negative = killed by a signal, e.g. -11 for a segfault), one report per path loaded
    (``outcome``: ``loaded``, ``<expected>: message`` or ``ESCAPED <type>: message``; ``peak_growth_mb``) and
    the end of its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    program = _CHILD.format(setup=setup, load=load, expected=expected, first=1 + len(args), headroom=CHILD_HEADROOM)
    result = subprocess.run([sys.executable, "-c", program, *args, *map(str, paths)], capture_output=True,
                            text=True, errors="replace", cwd=REPO_ROOT, env=env, timeout=timeout)
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.returncode, reports, result.stderr[-2000:]


def load_in_subprocess(paths: list[Path], timeout: float = 600) -> tuple[int, list[dict]]:
    """``load_checkpoint`` each path in a bounded child (:func:`bounded_loads`); the exit status and reports."""
    status, reports, _ = bounded_loads(
        paths, timeout=timeout, expected="CheckpointError", load="        load_checkpoint(path)",
        setup="from predictor.yolov7 import CheckpointError, load_checkpoint\n"
              "import predictor.yolov7.checkpoint  # torch and the loader, before the limit")
    return status, reports
