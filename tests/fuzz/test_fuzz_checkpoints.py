"""Crafted and generated hostile checkpoints against the loader, in one bounded child process.

Each file must end in a ``CheckpointError`` naming the problem (or load, when a mutation happens to stay
valid): never a crash of the interpreter, an escaping exception, a large peak RSS, or a sentinel file.
"""

from __future__ import annotations

import pickle
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import FUZZ_EXAMPLES
from tests.tools import hostile_checkpoints as hostile

PEAK_GROWTH_LIMIT_MB = 100


def _crafted(tmp, sentinel) -> dict[str, bytes]:
    """The fixed corpus: one file per trick (name -> torch zip or bare pickle bytes)."""
    touch = f"touch {sentinel}"
    payloads = {
        "os.system": hostile.reduce_pickle("os", "system", touch),
        "posix.system": hostile.reduce_pickle("posix", "system", touch),
        "builtins.eval": hostile.reduce_pickle("builtins", "eval", f"open({str(sentinel)!r}, 'w').close()"),
        "builtins.getattr": hostile.reduce_pickle("builtins", "getattr", "x", "y"),
        "subprocess.Popen": hostile.reduce_pickle("subprocess", "Popen", ["touch", str(sentinel)]),
        "torch.load": hostile.reduce_pickle("torch", "load", str(sentinel)),
        "copyreg._reconstructor": hostile.reduce_pickle("copyreg", "_reconstructor", 1, 2, 3),
        "INST os.system": b"\x80\x02(X" + len(touch).to_bytes(4, "little") + touch.encode() + b"ios\nsystem\n.",
        "STACK_GLOBAL": b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x8c\x04true\x85R.",
        "EXT1": b"\x80\x02\x82\x01.",
        "record class state": b"\x80\x02cmodels.yolo\nModel\n}X\x01\x00\x00\x00ab.",
        "swapped function": hostile.swapped_function_pickle(),
        "shadowed get": hostile.shadowed_get_pickle(),
        "deep dict key": hostile.nested_key_pickle(1_000_000),
        "deep set member": hostile.nested_key_pickle(1_000_000, "set"),
        "key 3000 deep": hostile.nested_key_pickle(3000),
        "list 100k deep": hostile.nested_list_pickle(100_000),
        "many objects": b"\x80\x02(" + b"N" * 2_100_000 + b"l.",
        "bad memo get": b"\x80\x02h\x07.",
        "stack underflow": b"\x80\x02s.",
        "truncated": pickle.dumps({"model": list(range(50))}, protocol=2)[:-7],
    }
    files = {f"{name}.pt": data for name, data in payloads.items()}
    for name, data in payloads.items():
        files[f"zip {name}.pt"] = hostile.torch_zip(tmp / "tmp.zip", data).read_bytes()
    storages = {
        "numel mismatch": (hostile.storage_pickle("0", 4, (4,)), {"0": bytes(6)}),
        "huge numel": (hostile.storage_pickle("0", 2**62, (4,)), {"0": bytes(8)}),
        "negative numel": (hostile.storage_pickle("0", -4, (4,)), {"0": bytes(8)}),
        "size beyond storage": (hostile.storage_pickle("0", 4, (400,)), {"0": bytes(8)}),
        "missing storage": (hostile.storage_pickle("1", 4, (4,)), {"0": bytes(8)}),
        "untyped storage": (hostile.storage_pickle("0", 9, (9,), dtype="UntypedStorage"), {"0": bytes(9)}),
    }
    for name, (pkl, data) in storages.items():
        files[f"storage {name}.pt"] = hostile.torch_zip(tmp / "tmp.zip", pkl, data).read_bytes()
    return files


@st.composite
def _mutation(draw):
    return [(draw(st.integers(0, 10**9)), draw(st.sampled_from(["flip", "insert", "delete", "byte"])),
             draw(st.integers(0, 255))) for _ in range(draw(st.integers(1, 6)))]


def _mutate(data: bytes, mutation) -> bytes:
    out = bytearray(data)
    for at, kind, value in mutation:
        at %= max(len(out), 1)
        if kind == "flip" and out:
            out[at] ^= 1 << (value % 8)
        elif kind == "byte" and out:
            out[at] = value
        elif kind == "insert":
            out[at:at] = bytes([value])
        elif out:
            del out[at]
    return bytes(out)


def test_hostile_checkpoints(tmp_path, yolo_fixtures):
    sentinel = tmp_path / "pwned"
    files = _crafted(tmp_path, sentinel)
    # first the real fixture: its load (imports, the model's signature) sets the peak RSS baseline
    original = tmp_path / "original.pt"
    original.write_bytes((yolo_fixtures / "yolov7-tiny-random.pt").read_bytes())
    # zip bombs, declared honestly (the whole entry really inflates) and by the pickle or a storage
    paths = [original] + [hostile.zip_bomb(tmp_path / f"bomb {entry} {size >> 20} MiB.pt", size, entry)
             for entry in ("storage", "pickle") for size in (80 << 20, 300 << 20)]
    # generated: the official fixture's own pickle, mutated, with its real storages around it
    with zipfile.ZipFile(yolo_fixtures / "yolov7-tiny-random.pt") as zf:
        entries = {info.filename: zf.read(info) for info in zf.infolist()}
    [pkl_name] = [name for name in entries if name.endswith("data.pkl")]
    mutations: list = []

    @settings(max_examples=FUZZ_EXAMPLES * 2, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(_mutation())
    def collect(mutation):
        mutations.append(mutation)

    collect()
    for index, mutation in enumerate(mutations):
        path = tmp_path / f"mutated {index}.pt"
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in entries.items():
                zf.writestr(name, _mutate(data, mutation) if name == pkl_name else data)
        paths.append(path)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)

    status, reports = hostile.load_in_subprocess(paths)
    done = {report["path"] for report in reports}
    assert status == 0, f"the loader process died (status {status}) on {[str(p) for p in paths if str(p) not in done][:1]}"
    assert len(reports) == len(paths)
    print(f"\nfuzz: {len(paths)} checkpoints ({len(mutations)} generated), worst peak RSS growth after the "
          f"real fixture's load {max(r['peak_growth_mb'] for r in reports[1:])} MB")
    problems = []
    for report in reports[1:]:
        name = report["path"].rsplit("/", 1)[-1]
        outcome = report["outcome"]
        if report["peak_growth_mb"] > PEAK_GROWTH_LIMIT_MB:
            problems.append(f"{name}: peak RSS grew by {report['peak_growth_mb']} MB")
        if outcome.startswith("ESCAPED"):
            problems.append(f"{name}: {outcome}")
        elif outcome == "loaded" and not name.startswith(("mutated", "original")):
            problems.append(f"{name}: loaded")
        elif outcome != "loaded" and len(outcome) < 40:
            problems.append(f"{name}: an error that names nothing: {outcome}")
    assert reports[0]["outcome"] == "loaded", reports[0]
    assert not problems, "\n".join(problems)
    assert not sentinel.exists()
