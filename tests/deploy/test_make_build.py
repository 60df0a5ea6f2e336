"""``make build`` / ``build-cpu`` / ``push`` with docker or podman, run for real against fake engines.

There is no container daemon here, so each engine is a small script that records its arguments (and whose
``info`` fails when told to, like docker without its daemon). What is checked: the engine is found (docker,
else podman; CONTAINER_ENGINE chooses) and checked *before* any weights download, the CPU-only target, the
image tags and labels, and what ``push`` names (``<REGISTRY>/<REPO>/yolo-v7:1.0.0``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make not installed")

ENGINE = """#!/bin/sh
echo "${{0##*/}} $*" >> "{log}"
if [ "$1" = info ] && [ -n "$ENGINE_DOWN" ]; then echo "Cannot connect to the daemon" >&2; exit 1; fi
exit 0
"""


def _bin(tmp_path: Path, engines: tuple[str, ...]) -> Path:
    """A PATH folder with only what the recipes need (git, date) and the fake engines."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("git", "date"):
        found = shutil.which(tool)
        if found:
            (folder / tool).symlink_to(found)
    for engine in engines:
        script = folder / engine
        script.write_text(ENGINE.format(log=tmp_path / "engine.log"))
        script.chmod(0o755)
    return folder


def _make(tmp_path: Path, *args: str, engines: tuple[str, ...] = ("docker", "podman"), down: bool = False,
          **variables: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    env = {"PATH": str(_bin(tmp_path, engines)), "HOME": str(tmp_path)}
    if down:
        env["ENGINE_DOWN"] = "1"
    # A throw-away venv path and a missing Python: if a download (make weights → install) ever ran first,
    # it would stop at once instead of touching the real .venv.
    settings = {"VENV": str(tmp_path / "venv"), "PYTHON": str(tmp_path / "no-python"), **variables}
    command = [MAKE, "--no-print-directory", "-C", str(ROOT), *args, *(f"{k}={v}" for k, v in settings.items())]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    log = tmp_path / "engine.log"
    return proc, log.read_text().splitlines() if log.exists() else []


def test_no_engine_stops_before_any_download(tmp_path):
    proc, calls = _make(tmp_path, "build", engines=())
    assert proc.returncode != 0
    assert "no container engine: install docker or podman" in proc.stderr
    assert "weights" not in proc.stdout and not (tmp_path / "venv").exists() and calls == []


def test_engine_without_its_daemon_stops_before_any_download(tmp_path):
    proc, calls = _make(tmp_path, "build", engines=("docker",), down=True)  # WEIGHTS=yolov7 by default
    assert proc.returncode != 0
    assert "'docker info' failed" in proc.stderr
    assert calls == ["docker info"]
    assert "weights.fetch" not in proc.stdout + proc.stderr and not (tmp_path / "venv").exists()


def test_unknown_container_engine_is_named(tmp_path):
    proc, _ = _make(tmp_path, "build", CONTAINER_ENGINE="nerdctl")
    assert proc.returncode != 0 and "CONTAINER_ENGINE=nerdctl: command not found" in proc.stderr


@pytest.mark.parametrize(("engines", "chosen", "variables"), [
    (("docker", "podman"), "docker", {}),
    (("podman",), "podman", {}),  # OpenShift users: podman only
    (("docker", "podman"), "podman", {"CONTAINER_ENGINE": "podman"}),
])
def test_build_uses_the_engine_found_or_chosen(tmp_path, engines, chosen, variables):
    proc, calls = _make(tmp_path, "build", engines=engines, WEIGHTS="none", **variables)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {call.split()[0] for call in calls} == {chosen}
    builds = [call.split() for call in calls if call.split()[1] == "build"]
    predictor, operator = builds
    assert predictor[predictor.index("--target") + 1] == "predictor"
    assert predictor[predictor.index("-t") + 1] == "yolo-v7:1.0.0"
    assert "WEIGHTS=none" in predictor and "LICENSES=Apache-2.0" in predictor  # no GPL-3.0 weights baked
    assert "TORCH_FLAVOR=cpu" not in predictor
    assert operator[operator.index("--target") + 1] == "operator"
    assert operator[operator.index("-t") + 1] == "yolo-v7-operator:1.0.0"


def test_build_cpu_is_the_cpu_torch_flavour(tmp_path):
    proc, calls = _make(tmp_path, "build-cpu", engines=("podman",), WEIGHTS="none")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [build] = [call for call in calls if call.startswith("podman build")]
    words = build.split()
    assert "TORCH_FLAVOR=cpu" in words and words[words.index("-t") + 1] == "yolo-v7:1.0.0-cpu"
    assert words[words.index("--target") + 1] == "predictor"


def test_baked_weights_label_both_licences(tmp_path):
    """With weights baked in, LICENSES names GPL-3.0 too; `make -n` shows the build line without running it."""
    proc = subprocess.run([MAKE, "-n", "-C", str(ROOT), "build", "CONTAINER_ENGINE=podman", "WEIGHTS=yolov7"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0, proc.stderr
    assert '--build-arg "LICENSES=Apache-2.0 AND GPL-3.0"' in proc.stdout


@pytest.mark.parametrize(("target", "tags"), [
    ("push", ["yolo-v7:1.0.0", "yolo-v7-operator:1.0.0"]),
    ("push-cpu", ["yolo-v7:1.0.0-cpu"]),
])
def test_push_tags_registry_repo_name_version(tmp_path, target, tags):
    proc, calls = _make(tmp_path, target, engines=("podman",), REGISTRY="quay.io", REPO="my-org")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = ["podman info"]
    for tag in tags:
        expected += [f"podman tag {tag} quay.io/my-org/{tag}", f"podman push quay.io/my-org/{tag}"]
    assert calls == expected
