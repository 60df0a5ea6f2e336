"""``python -m predictor`` start-up: flags from KServe's parser and ours, weights paths, clear errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.predictor_server import REPO_ROOT


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "predictor", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_kserve_and_predictor_options():
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--model_name", "--http_port", "--grpc_port", "--weights", "--max_batch_size", "--max_request_bytes",
                 "YOLO_MAX_BATCH_SIZE"):
        assert flag in result.stdout, flag
    assert "default: $PORT when set" in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ((), "the directory holds no checkpoint"),
        (("a.pt", "b.safetensors"), "holds 2 checkpoints (a.pt, b.safetensors); pass the file itself"),
    ],
)
def test_weights_directory_must_hold_one_checkpoint(tmp_path: Path, files, message):
    for name in files:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "README.txt").write_text("not a checkpoint")
    result = _run("--weights", str(tmp_path), "--device", "cpu", "--http_port", "0", "--grpc_port", "0")
    assert result.returncode != 0
    assert message in result.stderr


def test_missing_weights_and_bad_settings_are_named():
    result = _run("--weights", "/nonexistent/yolov7.pt", "--device", "cpu")
    assert result.returncode != 0 and "/nonexistent/yolov7.pt: no such file or directory" in result.stderr
    result = _run("--weights", "/nonexistent", "--max_batch_size", "0")
    assert result.returncode == 2 and "--max_batch_size must be >= 1" in result.stderr


def test_weights_directory_with_one_checkpoint_resolves(tmp_path: Path, tiny_weights: Path):
    from predictor.model import resolve_weights

    shutil.copy(tiny_weights, tmp_path / "model.pt")
    (tmp_path / "notes.txt").write_text("x")
    assert resolve_weights(tmp_path) == tmp_path / "model.pt"
    assert resolve_weights(tmp_path / "model.pt") == tmp_path / "model.pt"


def _run_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "predictor", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=180, env={**os.environ, **env})


@pytest.mark.skipif(Path("/mnt/models").is_dir(), reason="this machine has a KServe-style /mnt/models")
def test_no_weights_anywhere_says_where_it_looked(tmp_path: Path):
    """Before: no args looked only in /mnt/models and said `--weights /mnt/models: no such file`."""
    missing = tmp_path / "no-baked-weights"
    result = _run_env({"YOLO_BAKED_WEIGHTS": str(missing)}, "--device", "cpu", "--http_port", "0", "--grpc_port", "0")
    assert result.returncode != 0
    assert f"{missing}: no such file or directory" in result.stderr
    assert "baked weights from YOLO_BAKED_WEIGHTS; no /mnt/models" in result.stderr
    assert "give --weights, mount a model at KServe's /mnt/models" in result.stderr


def test_bad_port_environment_is_a_usage_error():
    result = _run_env({"PORT": "eighty"})
    assert result.returncode == 2 and "PORT='eighty': must be a TCP port number (1-65535)" in result.stderr
