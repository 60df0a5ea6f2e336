"""Start the predictor image's entry command as a container platform would, without a container engine.

There is no container daemon here; what a platform does to the image is reproduced instead:

* the command is the Dockerfile's ENTRYPOINT + CMD, with **no arguments** added;
* the environment is exactly the image's ENV (``env -i``) plus what the platform sets (``PORT``, ``K_SERVICE``,
  ...); image paths are mapped onto this machine: ``/opt/yolo-v7/venv/bin`` → this venv's ``bin`` and the baked
  ``/opt/yolo-v7/weights`` → a read-only copy of a fixture checkpoint (``YOLO_BAKED_WEIGHTS``); ``PYTHONPATH``
  points at this checkout (the image has the package installed in its venv instead);
* as root, the process runs under the platform's UID in group 0 (``setpriv``): 1001 (the image's USER) or an
  arbitrary one (OpenShift), so the checkout, the venv, HOME and the working directory are all read-only
  to it, as a read-only root filesystem would be; ``/tmp`` stays writable. Where this machine's interpreter
  sits behind a folder other UIDs cannot enter (pyenv under a 0700 ``/root``), the process also gets
  CAP_DAC_READ_SEARCH: it may read and search anything, still write nothing it does not own;
* as root, it gets its own network namespace (``unshare --net``), so it listens on exactly the platform's
  port (8080, gRPC 8081) without clashing with anything else on this machine; the client runs inside the
  same namespace (``nsenter``). Without root (CI as a plain user) it runs in the host's namespace as the
  current user, with ``PORT`` set to a free port.

    with run_image(platform_env={"PORT": "8080"}, uid=1001, weights=fixture, workdir=tmp_path) as image:
        result = image.client([v2_infer(bus_jpg)])   # waits for ready, then sends the requests in order
        result.ready_at - image.started_at, result.answers[0].json(), image.rss_bytes()
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.tools.dockerfile import Dockerfile
from tests.tools.ports import free_port
from tests.tools.predictor_server import _stop  # SIGTERM, then SIGKILL after the grace period

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_VENV_BIN = "/opt/yolo-v7/venv/bin"
BASE_IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # python:*-slim's PATH
DEFAULT_PORT = 8080

# Run inside the server's network namespace: wait for ready, then send the requests given on stdin (JSON list
# of {method, path, body_b64, headers}); print one JSON object with the times (time.time()) and the answers.
CLIENT = r"""
import base64, json, os, sys, time, urllib.error, urllib.request
port, pid, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
requests = json.load(sys.stdin)
base = f"http://127.0.0.1:{port}"
def call(method, path, body=None, headers=None):
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
deadline = time.monotonic() + timeout
ready_at = None
def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
while time.monotonic() < deadline:
    if not alive():
        break
    try:
        if call("GET", "/v2/health/ready")[0] == 200:
            ready_at = time.time()
            break
    except OSError:
        pass
    time.sleep(0.05)
answers = []
if ready_at is not None:
    for r in requests:
        body = base64.b64decode(r["body_b64"]) if r.get("body_b64") else None
        start = time.time()
        status, headers, data = call(r["method"], r["path"], body, r.get("headers"))
        answers.append({"status": status, "content_type": headers.get("content-type", ""),
                        "body_b64": base64.b64encode(data).decode(), "start": start, "end": time.time()})
print(json.dumps({"ready_at": ready_at, "answers": answers}))
"""


# gRPC v2 ModelReady on the given port, from inside the namespace; prints "ready" / the error.
GRPC_READY = r"""
import sys, grpc
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc
with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as channel:
    reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelReady(pb.ModelReadyRequest(name=sys.argv[2]), timeout=30)
print("ready" if reply.ready else "not ready")
"""


def _wait_for_own_network(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Wait until ``unshare`` has given ``process`` its own network namespace: ``nsenter`` into it any earlier
    would join the host's namespace, where nothing listens on the platform's port."""
    ours, link = os.readlink("/proc/self/ns/net"), f"/proc/{process.pid}/ns/net"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):
            if os.readlink(link) != ours:
                return
        time.sleep(0.01)
    if process.poll() is None:
        raise RuntimeError(f"process {process.pid} did not get its own network namespace within {timeout:.0f} s")


def _interpreter_hidden() -> bool:
    """Whether this venv's interpreter lies where other UIDs cannot reach it (e.g. pyenv under a 0700 /root)."""
    real = Path(os.path.realpath(sys.executable))
    return any(not parent.stat().st_mode & 0o001 for parent in real.parents) or not real.stat().st_mode & 0o001


def _can_isolate() -> bool:
    return os.geteuid() == 0 and all(shutil.which(tool) for tool in ("unshare", "nsenter", "setpriv", "ip"))


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    start: float
    end: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ClientResult:
    ready_at: float | None
    answers: list[Answer]


@dataclass
class ImageRun:
    process: subprocess.Popen
    started_at: float  # time.time() just before the process was started
    port: int
    isolated: bool  # own network namespace, platform UID
    log_path: Path
    env: dict[str, str]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def in_namespace(self, command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``command`` in the server's network namespace (or here, when not isolated)."""
        prefix = ["nsenter", f"--net=/proc/{self.process.pid}/ns/net", "--"] if self.isolated else []
        return subprocess.run([*prefix, *command], capture_output=True, **kwargs)

    def client(self, requests: Sequence[Mapping[str, Any]], timeout: float = 300.0) -> ClientResult:
        """Wait until ``/v2/health/ready`` answers 200, then send ``requests`` (see :func:`request`)."""
        proc = self.in_namespace([sys.executable, "-c", CLIENT, str(self.port), str(self.process.pid), str(timeout)],
                                 input=json.dumps(list(requests)).encode(), timeout=timeout + 300)
        if proc.returncode != 0:
            raise RuntimeError(f"client failed: {proc.stderr.decode(errors='replace')[-2000:]}")
        data = json.loads(proc.stdout)
        answers = [Answer(a["status"], a["content_type"], base64.b64decode(a["body_b64"]), a["start"], a["end"])
                   for a in data["answers"]]
        return ClientResult(data["ready_at"], answers)

    def grpc_ready(self, port: int, model: str = "yolov7") -> str:
        """Ask gRPC v2 ``ModelReady`` on ``port`` (in the namespace): ``"ready"``, or why not."""
        proc = self.in_namespace([sys.executable, "-c", GRPC_READY, str(port), model], timeout=120,
                                 env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        return proc.stdout.decode().strip() or proc.stderr.decode(errors="replace")[-500:]

    def status_field(self, name: str) -> int:
        """A ``/proc/<pid>/status`` memory field in bytes (``VmRSS``, ``VmHWM``)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{name} not in /proc/{self.process.pid}/status")

    def rss_bytes(self) -> int:
        return self.status_field("VmRSS")


def request(method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None) -> dict:
    return {"method": method, "path": path, "body_b64": base64.b64encode(body).decode() if body else "",
            "headers": dict(headers or {})}


def v2_infer(image: bytes, model: str = "yolov7") -> dict:
    """A v2 JSON inference request for one encoded image (base64 BYTES), as a platform's client would send."""
    payload = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                           "data": [base64.b64encode(image).decode()]}]}
    return request("POST", f"/v2/models/{model}/infer", json.dumps(payload).encode(),
                   {"Content-Type": "application/json"})


def image_environment(dockerfile: Dockerfile, target: str = "predictor",
                      build_args: Mapping[str, str] | None = None, venv_bin: str | None = None) -> dict[str, str]:
    """The image's ENV, with this machine's venv (or ``venv_bin``'s) for the image's."""
    env = dockerfile.resolved_env(target, dict(build_args or {}))
    venv_bin = venv_bin or str(Path(sys.executable).parent)
    out = {}
    for key, value in env.items():
        value = value.replace("$PATH", BASE_IMAGE_PATH).replace("${PATH}", BASE_IMAGE_PATH)
        out[key] = value.replace(IMAGE_VENV_BIN, venv_bin).replace(str(Path(IMAGE_VENV_BIN).parent),
                                                                   str(Path(venv_bin).parent))
    return out


def entry_command(dockerfile: Dockerfile, target: str = "predictor") -> list[str]:
    stage = dockerfile.stage(target)
    return [*(stage.entrypoint or []), *(stage.cmd or [])]


def _read_only_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    return path


@contextlib.contextmanager
def run_image(*, platform_env: Mapping[str, str], uid: int, weights: Path, workdir: Path,
              dockerfile: Dockerfile | None = None, build_args: Mapping[str, str] | None = None,
              venv_bin: str | None = None, engines: Path | None = None) -> Iterator[ImageRun]:
    """Start the predictor image's entry command as a platform would (see the module docstring).

    ``venv_bin``: another environment's bin folder for the image's venv (the torch-free CPU image's:
    tests/bench/torchfree_bench.py); ``engines``: a build-time export folder baked beside the weights
    (the CPU image's .yolo-v7-engines/)."""
    dockerfile = dockerfile or Dockerfile.read(REPO_ROOT / "Dockerfile")
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # tmp_path is 0700: the platform UID must reach what lies below
    for parent in workdir.parents:  # pytest's base temp folders
        if str(parent).startswith(("/tmp/", str(Path(os.environ.get("TMPDIR", "/tmp"))) + "/")):
            with contextlib.suppress(PermissionError):
                parent.chmod(parent.stat().st_mode | 0o055)
    baked = workdir / "image-weights"
    baked.mkdir()
    shutil.copy(weights, baked / weights.name)
    (baked / weights.name).chmod(0o444)
    if engines is not None:
        shutil.copytree(engines, baked / ".yolo-v7-engines")
        for path in (baked / ".yolo-v7-engines").iterdir():
            path.chmod(0o444)
        _read_only_dir(baked / ".yolo-v7-engines")
    _read_only_dir(baked)
    env = image_environment(dockerfile, build_args=build_args, venv_bin=venv_bin)
    env["HOME"] = str(_read_only_dir(workdir / "home"))  # the image's HOME, read-only here (root filesystem)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["YOLO_BAKED_WEIGHTS"] = str(baked)
    isolated = _can_isolate()
    env.update(platform_env)
    if not isolated:  # the host's network: a free port instead of the platform's
        env["PORT"] = str(free_port())
    port = int(env.get("PORT", DEFAULT_PORT))
    command = entry_command(dockerfile)
    # A container runtime looks the command up on the image's PATH (runc: LookPath) and executes that file.
    command[0] = shutil.which(command[0], path=env.get("PATH", BASE_IMAGE_PATH)) or command[0]
    if isolated:
        inner = ["setpriv", f"--reuid={uid}", "--regid=0", "--clear-groups"]
        if _interpreter_hidden():  # read (never write) past this machine's 0700 folders to reach the venv's python
            inner += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        inner += ["--", *command]
        command = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                   *[shutil.which(inner[0]) or inner[0], *inner[1:]]]
        command[0] = shutil.which("unshare") or command[0]
    log_path = workdir / "predictor.log"
    cwd = _read_only_dir(workdir / "workdir")  # the image's WORKDIR
    with open(log_path, "wb") as log:
        started_at = time.time()
        process = subprocess.Popen(command, cwd=cwd, env={**env, "PATH": env.get("PATH", BASE_IMAGE_PATH)},
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    run = ImageRun(process, started_at, port, isolated, log_path, env)
    if isolated:
        _wait_for_own_network(process)
    ok = False
    try:
        yield run
        ok = True
    finally:
        _stop(process, grace=15.0)
        if not ok:
            sys.stderr.write(f"\n----- predictor log ({log_path}) -----\n{run.log_text()[-6000:]}\n-----\n")
