"""The safe checkpoint loader: official pickles without their code, refusal of hostile pickles, exports."""

from __future__ import annotations

import importlib.abc
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor.yolov7 import CheckpointError, YOLOv7, build_model, load_checkpoint, save_export
from predictor.yolov7.convert import main as convert_main
from predictor.yolov7.names import COCO_NAMES
from tests.tools import hostile_checkpoints as hostile
from tests.tools.hostile_checkpoints import reduce_pickle, torch_zip

REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------
# official release format
# --------------------------------------------------------------------------------------------------
class _BlockImports(importlib.abc.MetaPathFinder):
    """Makes ``models`` / ``utils`` unimportable and records any attempt."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001
        if fullname.split(".")[0] in ("models", "utils"):
            self.attempts.append(fullname)
            raise ImportError(f"{fullname} is blocked in this test")
        return None


@pytest.fixture()
def no_official_code():
    blocker = _BlockImports()
    sys.meta_path.insert(0, blocker)
    before = set(sys.modules)
    try:
        yield blocker
    finally:
        sys.meta_path.remove(blocker)
    gained = {m for m in set(sys.modules) - before if m.split(".")[0] in ("models", "utils")}
    assert not gained, f"loader imported {gained}"


@pytest.mark.parametrize(("variant", "params"), [("yolov7-tiny", 6_227_101), ("yolov7", 37_620_125)])
def test_loads_official_release_format_without_its_code(variant, params, yolo_fixtures, no_official_code):
    ckpt = load_checkpoint(yolo_fixtures / f"{variant}-random.pt")
    assert no_official_code.attempts == []
    assert "models" not in sys.modules and "utils" not in sys.modules
    arch = json.loads((yolo_fixtures / "architectures.json").read_text())[variant]
    assert ckpt.variant == variant
    assert ckpt.source_format == "official-pickle"
    assert ckpt.source_dtype == "float16"
    assert ckpt.num_classes == 80
    assert ckpt.names == list(COCO_NAMES)
    golden_names = [str(n) for n in np.load(yolo_fixtures / "golden" / f"{variant}.npz")["names"]]
    assert ckpt.names == golden_names
    assert ckpt.strides == arch["strides"]
    assert ckpt.anchors == [[float(v) for v in a] for a in arch["anchors"]]
    assert {k: list(v.shape) for k, v in ckpt.state_dict.items()} == arch["state_dict"]
    assert all(v.dtype == torch.float32 for v in ckpt.state_dict.values() if v.is_floating_point())
    assert ckpt.num_parameters == params
    # Weights are real (seeded random), not zeros; BN statistics calibrated.
    assert ckpt.state_dict["model.0.conv.weight"].abs().sum() > 0
    assert ckpt.state_dict["model.0.bn.running_var"].min() > 0
    # The grid-unit anchors buffer agrees with the pixel one.
    head = f"model.{max(int(k.split('.')[1]) for k in arch['state_dict'])}"
    px = ckpt.state_dict[f"{head}.anchor_grid"].view(len(ckpt.strides), 3, 2)
    strides = torch.tensor(ckpt.strides, dtype=torch.float32).view(-1, 1, 1)
    torch.testing.assert_close(ckpt.state_dict[f"{head}.anchors"] * strides, px)


# --------------------------------------------------------------------------------------------------
# hostile pickles
# --------------------------------------------------------------------------------------------------
def _wrap_in_dict(payload: bytes) -> bytes:
    """``{'model': <payload>}``: the payload nested where the model object would be."""
    return b"\x80\x02}X\x05\x00\x00\x00model" + payload[2:-1] + b"s."


def _payloads(sentinel: Path) -> dict[str, bytes]:
    cmd = f"touch {sentinel}"
    return {
        "os.system": reduce_pickle("os", "system", cmd),
        "posix.system": reduce_pickle("posix", "system", cmd),
        "builtins.eval": reduce_pickle("builtins", "eval", f"open({str(sentinel)!r}, 'w').close()"),
        "subprocess.Popen": reduce_pickle("subprocess", "Popen", ["touch", str(sentinel)]),
    }


def test_payloads_are_live(tmp_path):
    """Sanity check of the test itself: a plain unpickler does run the crafted payload."""
    sentinel = tmp_path / "pwned"
    pickle.loads(_payloads(sentinel)["os.system"])  # noqa: S301 - deliberate, harmless 'touch'
    assert sentinel.exists()


@pytest.mark.parametrize("callee", ["os.system", "posix.system", "builtins.eval", "subprocess.Popen"])
@pytest.mark.parametrize("container", ["torch-zip", "torch-zip-nested", "bare-pickle"])
def test_hostile_pickles_are_refused(callee, container, tmp_path):
    sentinel = tmp_path / "pwned"
    payload = _payloads(sentinel)[callee]
    if container == "bare-pickle":
        path = tmp_path / "evil.pt"
        path.write_bytes(payload)
    else:
        data = _wrap_in_dict(payload) if container == "torch-zip-nested" else payload
        path = torch_zip(tmp_path / "evil.pt", data)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert (
        str(info.value)
        == f"refusing to load {path}: the pickle calls {callee}, which is not on the allow-list"
    )
    assert not sentinel.exists()


def test_pickled_class_of_unknown_module_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    path = torch_zip(tmp_path / "evil.pt", pickle.dumps({"model": Evil()}, protocol=2))
    with pytest.raises(
        CheckpointError, match=r"the pickle calls (posix|os)\.system, which is not on the allow-list"
    ):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint at all", "not a recognised checkpoint"),
        (b"", "not a recognised checkpoint"),
        (b"\x80\x02]q\x00.", "does not contain a YOLOv7 model"),
    ],
)
def test_unreadable_files_are_clear_errors(content, message, tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_missing_and_damaged_files(tmp_path, yolo_fixtures):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)
    with zipfile.ZipFile(tmp_path / "empty.pt", "w") as zf:
        zf.writestr("archive/version", "3")
    with pytest.raises(CheckpointError, match="expected exactly one data.pkl"):
        load_checkpoint(tmp_path / "empty.pt")
    # An official archive with one storage missing.
    src = zipfile.ZipFile(yolo_fixtures / "yolov7-tiny-random.pt")
    with zipfile.ZipFile(tmp_path / "cut.pt", "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                dst.writestr(info, src.read(info))
    with pytest.raises(CheckpointError, match="storage '0' is missing"):
        load_checkpoint(tmp_path / "cut.pt")


# --------------------------------------------------------------------------------------------------
# plain state dicts, custom class counts, exports
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def custom_tiny():
    torch.manual_seed(3)
    model = YOLOv7("yolov7-tiny", num_classes=3).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_custom_class_count_state_dict(custom_tiny, tmp_path):
    path = tmp_path / "custom.pt"
    torch.save(custom_tiny.state_dict(), path)
    ckpt = load_checkpoint(path)
    assert (ckpt.variant, ckpt.num_classes, ckpt.source_format) == ("yolov7-tiny", 3, "state-dict")
    assert ckpt.names == ["class0", "class1", "class2"]
    _same_tensors(ckpt.state_dict, custom_tiny.state_dict())

    torch.save({"state_dict": custom_tiny.state_dict(), "names": ["cat", "dog", "fox"]}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.names == ["cat", "dog", "fox"]

    model = build_model(ckpt, fuse=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), custom_tiny(x))
    assert not model.training and model.num_classes == 3 and model.names == ["cat", "dog", "fox"]


def test_safetensors_round_trip(custom_tiny, tmp_path):
    torch.save({"state_dict": custom_tiny.state_dict(), "names": ["cat", "dog", "fox"]}, tmp_path / "c.pt")
    ckpt = load_checkpoint(tmp_path / "c.pt")
    out = save_export(ckpt, tmp_path / "c.safetensors")
    back = load_checkpoint(out)
    assert (back.variant, back.num_classes, back.names, back.source_format) == (
        "yolov7-tiny",
        3,
        ["cat", "dog", "fox"],
        "safetensors",
    )
    assert back.anchors == ckpt.anchors and back.strides == ckpt.strides
    assert back.metadata["format"] == "yolo-v7" and back.metadata["format_version"] == "1"
    _same_tensors(back.state_dict, ckpt.state_dict)
    assert not list(tmp_path.glob("*.tmp"))


def test_mismatched_state_dicts_are_clear_errors(custom_tiny, tmp_path):
    sd = dict(custom_tiny.state_dict())
    del sd["model.10.conv.weight"]
    torch.save(sd, tmp_path / "a.pt")
    with pytest.raises(
        CheckpointError, match=r"does not match yolov7-tiny .*1 missing \(e\.g\. model\.10\.conv\.weight"
    ):
        load_checkpoint(tmp_path / "a.pt")
    torch.save({"state_dict": custom_tiny.state_dict(), "names": ["a", "b"]}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="2 class names but its head predicts 3"):
        load_checkpoint(tmp_path / "b.pt")
    torch.save({"model.0.conv.weight": torch.zeros(1)}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="no YOLOv7 Detect head"):
        load_checkpoint(tmp_path / "c.pt")


def test_export_metadata_is_checked(custom_tiny, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in custom_tiny.state_dict().items()}
    save_file(sd, str(tmp_path / "v2.safetensors"), metadata={"format": "yolo-v7", "format_version": "2"})
    with pytest.raises(CheckpointError, match="format_version '2' is not supported"):
        load_checkpoint(tmp_path / "v2.safetensors")
    save_file(sd, str(tmp_path / "lie.safetensors"), metadata={"variant": "yolov7"})
    with pytest.raises(
        CheckpointError, match="metadata says variant 'yolov7' but the tensors are 'yolov7-tiny'"
    ):
        load_checkpoint(tmp_path / "lie.safetensors")
    save_file(sd, str(tmp_path / "plain.safetensors"))  # no metadata: recognised by its tensors
    assert load_checkpoint(tmp_path / "plain.safetensors").variant == "yolov7-tiny"


def test_convert_cli_subprocess(yolo_fixtures, tmp_path):
    out = tmp_path / "tiny.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "predictor.yolov7.convert",
            str(yolo_fixtures / "yolov7-tiny-random.pt"),
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "variant:    yolov7-tiny" in run.stdout
    assert "classes:    80" in run.stdout
    assert "parameters: 6,227,101" in run.stdout
    back = load_checkpoint(out)
    orig = load_checkpoint(yolo_fixtures / "yolov7-tiny-random.pt")
    assert back.names == orig.names and back.anchors == orig.anchors
    _same_tensors(back.state_dict, orig.state_dict)  # fp16 source → fp16 export: lossless
    assert out.stat().st_size < 14_000_000

    evil = torch_zip(tmp_path / "evil.pt", reduce_pickle("os", "system", f"touch {tmp_path / 'pwned'}"))
    run = subprocess.run(
        [sys.executable, "-m", "predictor.yolov7.convert", str(evil), str(tmp_path / "x.safetensors")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    assert run.returncode == 1
    assert "refusing to load" in run.stderr and "os.system" in run.stderr
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "x.safetensors").exists()


def test_convert_cli_errors_and_options(custom_tiny, tmp_path, capsys):
    assert convert_main([str(tmp_path / "missing.pt"), str(tmp_path / "o.safetensors")]) == 1
    assert "does not exist" in capsys.readouterr().err

    torch.save(custom_tiny.state_dict(), tmp_path / "c.pt")
    (tmp_path / "names.txt").write_text("cat\ndog\nfox\n")
    out = tmp_path / "c.safetensors"
    assert convert_main([str(tmp_path / "c.pt"), str(out), "--names", str(tmp_path / "names.txt")]) == 0
    assert load_checkpoint(out).names == ["cat", "dog", "fox"]
    assert convert_main([str(tmp_path / "c.pt"), str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert convert_main([str(tmp_path / "c.pt"), str(out), "--force", "--dtype", "float16"]) == 0
    assert load_checkpoint(out).source_dtype == "float16"
    (tmp_path / "two.txt").write_text("a\nb\n")
    assert (
        convert_main([str(tmp_path / "c.pt"), str(out), "--force", "--names", str(tmp_path / "two.txt")]) == 1
    )
    assert "lists 2 names" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        convert_main([])
    assert info.value.code == 2


def test_bare_pickle_cannot_smuggle_storages(tmp_path):
    buf = io.BytesIO()
    torch.save({"x": torch.zeros(2)}, buf, _use_new_zipfile_serialization=False)
    (tmp_path / "legacy.pt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="legacy"):
        load_checkpoint(tmp_path / "legacy.pt")


# --------------------------------------------------------------------------------------------------
# issue 12: zip bombs, nesting, the loader's own objects (each loaded in a bounded child process)
# --------------------------------------------------------------------------------------------------
def _load_bounded(path: Path) -> dict:
    status, reports = hostile.load_in_subprocess([path])
    assert status == 0, f"the loader process died (status {status}) on {path.name}"
    [report] = reports
    assert not report["outcome"].startswith("ESCAPED"), report
    return report


@pytest.mark.parametrize("entry", ["storage", "pickle"])
def test_zip_bomb_is_refused_by_its_declared_sizes_before_inflating(entry, tmp_path):
    """Issue 12.4: a 600 KB archive declaring 600 MB was inflated first (+1,200 MB peak RSS measured)."""
    path = hostile.zip_bomb(tmp_path / "bomb.pt", 600 << 20, entry=entry)
    assert path.stat().st_size < 1 << 20
    report = _load_bounded(path)
    assert "its entries declare 629145" in report["outcome"] and "over the limit of 67108864 bytes" in report["outcome"]
    assert report["peak_growth_mb"] < 32, report


def test_storage_size_is_checked_against_its_declared_size(tmp_path):
    path = torch_zip(tmp_path / "forged.pt", hostile.storage_pickle("0", 2**60, (4,)), {"0": bytes(6)})
    report = _load_bounded(path)
    assert "storage 0 declares 6 bytes, its tensor needs 2305843009213693952" in report["outcome"]


@pytest.mark.parametrize("container", ["dict", "set"])
def test_deeply_nested_key_does_not_crash_the_interpreter(container, tmp_path):
    """Issue 12.5: hashing a tuple nested 1,000,000 deep (dict key / set member) segfaulted the loader."""
    path = torch_zip(tmp_path / "deep.pt", hostile.nested_key_pickle(1_000_000, container))
    assert "nested deeper than 100 levels" in _load_bounded(path)["outcome"]


def test_shallower_nesting_is_a_checkpoint_error_not_a_recursion_error(tmp_path):
    """Issue 12.5: 3,000 levels escaped as an uncaught RecursionError from checkpoint.py."""
    path = torch_zip(tmp_path / "deep.pt", hostile.nested_key_pickle(3000))
    with pytest.raises(CheckpointError, match="nested deeper than 100 levels"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (hostile.swapped_function_pickle(), "state applied to a loader object"),
        (hostile.shadowed_get_pickle(), r"an OrderedDict given attributes \['get'\]"),
    ],
    ids=["function-wrapper", "OrderedDict.get"],
)
def test_pickle_cannot_reach_the_loaders_own_objects(payload, message, tmp_path):
    """Issue 12.6: BUILD could swap an allowed function's target and shadow OrderedDict.get."""
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(torch_zip(tmp_path / "steer.pt", payload))
    from predictor.yolov7 import safe_pickle

    with pytest.raises(TypeError):
        safe_pickle._FUNCS[("builtins", "eval")] = eval  # the tables are read-only


def test_memo_index_cannot_size_the_unpicklers_memo_table(tmp_path):
    """Found by the fuzz tier: one flipped byte in LONG_BINPUT's index made the C unpickler allocate a
    memo table of 2 x 33.5 M entries (+502 MB peak RSS for the mutated official fixture)."""
    path = torch_zip(tmp_path / "memo.pt", b"\x80\x02Nr\x15\x0e\x00\x02.")
    with pytest.raises(CheckpointError, match="memo index 33558037 is out of range"):
        load_checkpoint(path)
