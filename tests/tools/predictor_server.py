"""Start the real predictor (``python -m predictor``) as a subprocess on free ports, for tests.

    with predictor_server(weights, extra_args=["--input_size", "320"]) as server:
        httpx.get(f"{server.http_url}/v2/health/ready")
        grpc.insecure_channel(server.grpc_target)

Waits until ``GET /v2/models/{name}/ready`` answers 200; on exit sends SIGTERM (then SIGKILL after a
grace period). If the server dies, never gets ready, or the body of the ``with`` raises, the last lines
of the server's log are written to stderr. Reusable by the service, CLI, e2e and browser tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.tools.ports import free_port_pair

REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["PredictorServer", "PredictorServerError", "predictor_server"]


class PredictorServerError(RuntimeError):
    """The predictor exited or did not become ready; the message holds the tail of its log."""


@dataclass
class PredictorServer:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    model_name: str
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def infer_url(self) -> str:
        return f"{self.http_url}/v2/models/{self.model_name}/infer"

    @property
    def predict_url(self) -> str:
        return f"{self.http_url}/v1/models/{self.model_name}:predict"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux ``/proc``)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def alive(self) -> bool:
        return self.process.poll() is None


def _wait_ready(server: PredictorServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"{server.http_url}/v2/models/{server.model_name}/ready"
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if not server.alive():
                raise PredictorServerError(
                    f"the predictor exited with status {server.process.returncode} before it was ready:\n"
                    f"{server.log_tail()}"
                )
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    raise PredictorServerError(f"the predictor was not ready within {timeout:.0f} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen, grace: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def predictor_server(
    weights: str | os.PathLike[str],
    *,
    model_name: str = "yolov7",
    device: str = "cpu",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 300.0,
    stop_grace: float = 15.0,
    launcher: Sequence[str] | None = None,
) -> Iterator[PredictorServer]:
    """Run ``python -m predictor`` on free 127.0.0.1 ports until the ``with`` block ends.

    ``launcher`` replaces ``[sys.executable, "-m", "predictor"]`` (e.g. another venv's python, or
    tests/tools/no_torch.py)."""
    http_port, grpc_port = free_port_pair()
    log_dir = Path(tempfile.mkdtemp(prefix="predictor-log-"))
    log_path = log_dir / "predictor.log"
    command = [
        *(launcher or (sys.executable, "-m", "predictor")),
        "--model_name", model_name,
        "--weights", str(weights),
        "--http_port", str(http_port),
        "--grpc_port", str(grpc_port),
        "--device", device,
        *extra_args,
    ]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = PredictorServer(process, http_port, grpc_port, model_name, log_path)
    ok = False
    try:
        _wait_ready(server, ready_timeout)
        yield server
        ok = True
    finally:
        _stop(process, stop_grace)
        if not ok:
            sys.stderr.write(f"\n----- predictor log ({log_path}) -----\n{server.log_tail(120)}\n-----\n")
