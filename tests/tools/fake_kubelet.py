"""``LocalKubelet``: plays the node (kubelet, KServe's storage initializer) and KServe's controller for the
InferenceServices of one namespace, with local processes instead of pods. For the e2e tier.

    with LocalKubelet(kube.api_client(), namespace, checkpoint=tiny_pt, workdir=tmp_path) as kubelet:
        ...                                   # kubectl apply a YoloDetector; the operator makes the isvc
        pod = kubelet.wait_ready("yolov7")    # the predictor runs; the isvc's status says where
        httpx.post(f"{pod.url}/v2/models/yolov7/infer", json=...)

For each InferenceService it watches, it runs ``spec.predictor.containers[0]`` of the manifest as the operator
wrote it — ``command`` (or the image's ENTRYPOINT when absent), ``args`` and ``env`` — as one local process.
What it rewrites, and nothing else:

- ``python`` / ``python3`` as ``command[0]`` → this interpreter (``sys.executable``, the venv's python);
- the values of ``--http_port`` / ``--grpc_port`` → free 127.0.0.1 ports (kept for the InferenceService's
  life, like a Service address; fresh ones after a failed start);
- container path prefixes in args and env values → host directories, as a node would mount them:
  ``/mnt/models`` (KServe's storage initializer: when ``STORAGE_URI`` or ``spec.predictor.model.storageUri``
  is set, the test checkpoint is put there under the URI's file name, standing in for the download), the
  image's app root ``/opt/yolo-v7`` (``config.BAKED_WEIGHTS_DIR``'s parent: any ``*.pt`` path the args/env
  name under the baked weights dir is the test checkpoint, "baked into the image"), and each ``emptyDir``
  volumeMount (a fresh directory per start, like a new pod's). A prefix matches whole path components only.

The process environment is the image's (the ``ENV`` of the Dockerfile's ``predictor`` target, paths mapped;
``PATH``/``VIRTUAL_ENV`` are this venv's) plus the container's ``env``. Other volume types, several replicas,
resource limits and probes other than readiness are not emulated. Once the container's readinessProbe
(``/v2/health/ready`` on the HTTP port) answers 200, the InferenceService's **status** subresource is set as
KServe's controller would: ``url``, ``address.url``, ``components.predictor``, ``observedGeneration`` and
conditions ``IngressReady``/``PredictorReady``/``Ready`` = True (``lastTransitionTime`` kept while unchanged);
a process that exits sets them False (reason ``ContainerExited``) and is restarted with a back-off.
A change of the pod template (containers, volumes, model) stops the process (SIGTERM, then SIGKILL) and
starts the new one (a ``Recreate`` rollout: Ready is False in between); deleting the InferenceService stops it.
Processes get SIGTERM if the test process dies. ``events`` records what happened, ``logs()`` the output.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.tools.kube import _die_with_parent
from tests.tools.ports import free_port_pair

__all__ = ["LocalKubelet", "Pod", "PathMap", "image_env", "container_argv", "map_args"]

REPO_ROOT = Path(__file__).resolve().parents[2]
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")
HOST_ENV_KEPT = ("LANG", "LC_ALL", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----- pure pieces ---------------------------------------------------------------------------------------
class PathMap:
    """Container path prefixes → host directories; longest prefix first, whole path components only."""

    def __init__(self, mapping: Mapping[str, str | os.PathLike[str]]):
        self.items = sorted(((k.rstrip("/") or "/", os.fspath(v)) for k, v in mapping.items()),
                            key=lambda kv: len(kv[0]), reverse=True)

    def path(self, value: str) -> str:
        for prefix, host in self.items:
            if value == prefix or value.startswith(prefix + "/"):
                return host + value[len(prefix):]
        return value

    def value(self, value: str) -> str:
        """An arg or env value: a path, or ``--flag=path`` (only the part after ``=`` is mapped)."""
        if value.startswith("--") and "=" in value:
            flag, _, rest = value.partition("=")
            return f"{flag}={self.path(rest)}"
        return self.path(value)


def map_args(args: Sequence[str], paths: PathMap, ports: Mapping[str, int]) -> list[str]:
    """Map path prefixes in every arg; replace the values of ``ports``' flags (``--f=v`` or ``--f v``)."""
    out: list[str] = []
    replace_next: str | None = None
    for arg in args:
        if replace_next is not None:
            out.append(str(ports[replace_next]))
            replace_next = None
            continue
        flag = arg.partition("=")[0]
        if flag in ports:
            if "=" in arg:
                out.append(f"{flag}={ports[flag]}")
            else:
                out.append(arg)
                replace_next = flag
            continue
        out.append(paths.value(arg))
    return out


def image_env(dockerfile: Path = REPO_ROOT / "Dockerfile", target: str = "predictor") -> dict[str, str]:
    """The ``ENV`` the predictor image sets (from the Dockerfile; empty if it cannot be read)."""
    try:
        from tests.tools.dockerfile import Dockerfile

        return Dockerfile.read(dockerfile).resolved_env(target)
    except Exception:  # noqa: BLE001 - an image without a readable Dockerfile provides no env here
        return {}


def image_entrypoint(dockerfile: Path = REPO_ROOT / "Dockerfile", target: str = "predictor") -> list[str]:
    try:
        from tests.tools.dockerfile import Dockerfile

        return list(Dockerfile.read(dockerfile).resolved(target, "ENTRYPOINT").exec_form() or [])
    except Exception:  # noqa: BLE001
        return []


def container_argv(container: Mapping[str, Any], python: str, paths: PathMap, ports: Mapping[str, int],
                   entrypoint: Sequence[str] = ()) -> list[str]:
    """``command`` + ``args`` of the container, with python, path prefixes and port values substituted."""
    command = list(container.get("command") or entrypoint)
    if not command:
        raise ValueError("the container has no command and the image no ENTRYPOINT")
    if command[0] in ("python", "python3"):
        command[0] = python
    return [command[0], *map_args([*command[1:], *(container.get("args") or [])], paths, ports)]


def _port_of(args: Sequence[str], flag: str) -> int | None:
    for index, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return int(arg.partition("=")[2])
        if arg == flag and index + 1 < len(args):
            return int(args[index + 1])
    return None


def _condition(previous: Iterable[Mapping[str, Any]], kind: str, status: str, reason: str = "",
               message: str = "") -> dict[str, Any]:
    before = next((c for c in previous if c.get("type") == kind), {})
    since = before.get("lastTransitionTime") if before.get("status") == status else None
    out = {"type": kind, "status": status, "lastTransitionTime": since or _now()}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message[-2000:]
    return out


# ----- the node ------------------------------------------------------------------------------------------
@dataclass
class Pod:
    """One run of an InferenceService's predictor container."""

    name: str
    uid: str
    generation: int
    template: str  # the pod template this run was started from (json)
    serial: int
    dir: Path
    argv: list[str]
    env: dict[str, str]
    http_port: int
    grpc_port: int
    ready_path: str
    proc: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    ready_after: float | None = None  # seconds from start to ready
    state: str = "starting"  # starting → ready; stopped / failed

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class LocalKubelet:
    """Runs the predictor of every InferenceService in ``namespace`` as a local process (see the module doc).

    ``checkpoint``: the file that stands in for the weights (downloaded by the storage initializer, or baked
    into the image). ``workdir``: where node and pod directories and logs go.
    """

    def __init__(self, api_client: Any, namespace: str, *, checkpoint: str | os.PathLike[str],
                 workdir: str | os.PathLike[str], python: str = sys.executable, ready_timeout: float = 300,
                 stop_grace: float = 15, restart_backoff: float = 2.0,
                 pod_spec: Callable[[Mapping[str, Any]], Mapping[str, Any] | None] | None = None):
        """``pod_spec``: the pod spec to run for an InferenceService (None: not there yet); default its
        ``spec.predictor``. The e2e test passes the template of the Deployment KServe's controller made."""
        from kubernetes import client
        from yolo_operator import config as opconfig

        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.checkpoint = Path(checkpoint).resolve()
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {self.checkpoint} missing")
        self.workdir = Path(workdir)
        self.python = python
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.restart_backoff = restart_backoff
        self.model_mount = opconfig.MODEL_MOUNT_PATH  # /mnt/models
        self.baked_dir = opconfig.BAKED_WEIGHTS_DIR  # /opt/yolo-v7/weights
        self.app_root = str(Path(self.baked_dir).parent)  # /opt/yolo-v7, the image's own files
        self.image_root = self.workdir / "image" / self.app_root.lstrip("/")
        self.image_env = image_env()
        self.entrypoint = image_entrypoint()
        self.pods: dict[str, Pod] = {}
        self._pod_spec = pod_spec or (lambda isvc: (isvc.get("spec") or {}).get("predictor") or {})
        self.events: list[tuple[float, str, str, str]] = []  # (seconds since creation, event, isvc, detail)
        self._t0 = time.monotonic()
        self._desired: dict[str, dict] = {}
        self._ports: dict[str, tuple[int, int]] = {}
        self._not_before: dict[str, float] = {}
        self._serial = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._errors: list[str] = []
        self._http = httpx.Client(timeout=2.0)

    # ----- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> LocalKubelet:
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        (self.image_root / "home").mkdir(parents=True, exist_ok=True)
        (self.workdir / "image" / self.baked_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        self._list()  # the first state synchronously, so that nothing is missed
        for target, name in ((self._watch_loop, "watch"), (self._sync_loop, "sync")):
            thread = threading.Thread(target=target, name=f"local-kubelet-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=self.stop_grace + 20)
        for name in list(self.pods):  # the sync thread normally did it
            self._stop_pod(self.pods.pop(name), "kubelet stopped")
        self._http.close()

    def __enter__(self) -> LocalKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- what tests use ----------------------------------------------------------------------------
    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self._errors:
                raise AssertionError(f"LocalKubelet failed while waiting for {what}: {self._errors[-1]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")
            time.sleep(0.1)

    def wait_ready(self, name: str, timeout: float | None = None, *, not_pid: int | None = None) -> Pod:
        """The ready run of ``name`` (a different process than ``not_pid``, for a rollout)."""
        def ready() -> Pod | None:
            pod = self.pods.get(name)
            return pod if pod and pod.state == "ready" and pod.pid != not_pid else None
        return self.wait(ready, self.ready_timeout if timeout is None else timeout, f"predictor {name} ready")

    def logs(self, lines: int = 60) -> str:
        """Every run's command line and log tail, and the event history (for failure reports)."""
        parts = ["--- LocalKubelet events ---"]
        parts += [f"{t:7.1f} s {event:<9} {name} {detail}" for t, event, name, detail in self.events]
        parts += [f"--- errors: {e}" for e in self._errors]
        for log in sorted((self.workdir / "pods").glob("*/predictor.log")):
            text = log.read_text(errors="replace").splitlines()
            parts.append(f"--- {log} (last {lines} lines) ---")
            parts += text[-lines:]
        return "\n".join(parts)

    # ----- watch ---------------------------------------------------------------------------------------
    def _list(self) -> str:
        listing = self.api.list_namespaced_custom_object(*ISVC[:2], self.namespace, ISVC[2])
        with self._lock:
            self._desired = {item["metadata"]["name"]: item for item in listing.get("items", [])}
        self._wake.set()
        return listing["metadata"]["resourceVersion"]

    def _watch_loop(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        version = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    version = self._list()
                stream = watch.Watch().stream(
                    self.api.list_namespaced_custom_object, *ISVC[:2], self.namespace, ISVC[2],
                    resource_version=version, timeout_seconds=5, _request_timeout=15)
                for event in stream:
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = None  # e.g. 410 Gone: list again
                        break
                    version = obj["metadata"]["resourceVersion"]
                    with self._lock:
                        if event["type"] == "DELETED":
                            self._desired.pop(obj["metadata"]["name"], None)
                        else:
                            self._desired[obj["metadata"]["name"]] = obj
                    self._wake.set()
                    if self._stopping.is_set():
                        break
            except ApiException as error:
                version = None if error.status == 410 else version
                self._stopping.wait(0.5)
            except Exception:  # noqa: BLE001 - connection reset, API server restart: list again
                version = None
                self._stopping.wait(0.5)

    # ----- sync ----------------------------------------------------------------------------------------
    def _sync_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.2)
            self._wake.clear()
            try:
                self._sync()
            except Exception as error:  # noqa: BLE001 - reported to the test through wait()
                import traceback

                self._errors.append(f"{error!r}\n{traceback.format_exc()}")
                self._stopping.wait(1.0)
        for name in list(self.pods):
            self._stop_pod(self.pods.pop(name), "kubelet stopped")

    def _template(self, isvc: Mapping[str, Any]) -> str:
        """The pod template as json ('' while there is none to run)."""
        predictor = self._pod_spec(isvc)
        if predictor is None:
            return ""
        keys = ("containers", "volumes", "model", "securityContext", "serviceAccountName")
        return json.dumps({k: predictor.get(k) for k in keys}, sort_keys=True)

    def _sync(self) -> None:
        with self._lock:
            desired = dict(self._desired)
        for name, pod in list(self.pods.items()):
            isvc = desired.get(name)
            if isvc is None or isvc["metadata"]["uid"] != pod.uid:
                self._stop_pod(self.pods.pop(name), "InferenceService deleted")
                self._ports.pop(name, None)
            elif self._template(isvc) not in ("", pod.template):
                self._stop_pod(self.pods.pop(name), "pod template changed (rollout)")
                self._set_status(isvc, None, "False", "RolloutInProgress", "the predictor is being replaced")
        for name, isvc in desired.items():
            if isvc["metadata"].get("deletionTimestamp"):
                continue
            pod = self.pods.get(name)
            if pod is None:
                if time.monotonic() < self._not_before.get(name, 0.0):
                    continue
                pod = self._start_pod(isvc)
                if pod is None:
                    continue
            self._check_pod(isvc, pod)

    def _check_pod(self, isvc: dict, pod: Pod) -> None:
        name = pod.name
        if not pod.alive():
            pod.state = "failed"
            self.pods.pop(name)
            self._ports.pop(name, None)  # a port clash is one reason: fresh ports next time
            self._not_before[name] = time.monotonic() + self.restart_backoff
            self._event("exited", name, f"pid {pod.pid} status {pod.proc.returncode}")
            self._close_log(pod)
            self._set_status(isvc, None, "False", "ContainerExited",
                             f"exit status {pod.proc.returncode}: {pod.log_tail(15)}")
            return
        if pod.state == "starting":
            if self._probe(pod):
                pod.state = "ready"
                pod.ready_after = time.monotonic() - pod.started
                self._event("ready", name, f"pid {pod.pid} {pod.url} after {pod.ready_after:.1f} s")
                self._set_status(isvc, pod, "True")
            elif time.monotonic() - pod.started > self.ready_timeout:
                self._stop_pod(self.pods.pop(name), f"not ready after {self.ready_timeout:.0f} s")
                self._set_status(isvc, None, "False", "ProbeFailed", pod.log_tail(15))
        elif pod.state == "ready" and isvc["metadata"].get("generation") != pod.generation:
            pod.generation = isvc["metadata"].get("generation")  # a change outside the pod template
            self._set_status(isvc, pod, "True")

    def _probe(self, pod: Pod) -> bool:
        try:
            return self._http.get(pod.url + pod.ready_path).status_code == 200
        except httpx.HTTPError:
            return False

    # ----- pods ----------------------------------------------------------------------------------------
    def _storage_uri(self, isvc: Mapping[str, Any], container: Mapping[str, Any]) -> str:
        env = {e.get("name"): e.get("value") for e in container.get("env") or []}
        model = ((isvc.get("spec") or {}).get("predictor") or {}).get("model") or {}
        return env.get("STORAGE_URI") or model.get("storageUri") or ""

    def _start_pod(self, isvc: dict) -> Pod | None:
        meta = isvc["metadata"]
        name = meta["name"]
        predictor = self._pod_spec(isvc)
        if predictor is None:
            return None  # its pod spec is not there yet (the Deployment KServe makes): next round
        containers = predictor.get("containers") or []
        if not containers:
            self._not_before[name] = time.monotonic() + 3600  # not a custom predictor: nothing to run
            self._event("skipped", name, "no spec.predictor.containers")
            return None
        container = containers[0]
        self._serial += 1
        pod_dir = self.workdir / "pods" / f"{name}-{self._serial}"
        pod_dir.mkdir(parents=True)

        mapping: dict[str, Path] = {self.app_root: self.image_root}
        # KServe's storage initializer: storageUri → /mnt/models/<file name>; here the test checkpoint.
        models = pod_dir / "mnt-models"
        models.mkdir()
        uri = self._storage_uri(isvc, container)
        if uri:
            file_name = uri.rstrip("/").rsplit("/", 1)[-1]
            if not file_name.lower().endswith(WEIGHT_SUFFIXES):
                file_name = "model.pt"
            os.symlink(self.checkpoint, models / file_name)
        mapping[self.model_mount] = models
        volumes = {v.get("name"): v for v in predictor.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            if mount.get("mountPath") == self.model_mount:
                continue  # KServe's storage-initializer volume: mapped above
            volume = volumes.get(mount.get("name")) or {}
            if "emptyDir" not in volume:
                raise ValueError(f"{name}: volume {mount.get('name')!r} is not an emptyDir (not emulated)")
            host = pod_dir / "volumes" / mount["name"]
            host.mkdir(parents=True, exist_ok=True)
            mapping[mount["mountPath"]] = host
        paths = PathMap(mapping)

        if name not in self._ports:
            self._ports[name] = free_port_pair()
        http_port, grpc_port = self._ports[name]
        ports = {"--http_port": http_port, "--grpc_port": grpc_port}
        argv = container_argv(container, self.python, paths, ports, self.entrypoint)

        env = {k: paths.value(v) for k, v in self.image_env.items() if k not in ("PATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{Path(self.python).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
        env["VIRTUAL_ENV"] = sys.prefix
        env.update({k: os.environ[k] for k in HOST_ENV_KEPT if k in os.environ})
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = paths.value(str(item["value"]))
        # "baked into the image": every weights file the args or env name under the baked dir
        baked_host = paths.path(self.baked_dir)
        for value in [*argv, *env.values()]:
            target = value.partition("=")[2] if value.startswith("--") else value
            if target.startswith(baked_host + "/") and target.lower().endswith(WEIGHT_SUFFIXES):
                with contextlib.suppress(FileExistsError):
                    os.symlink(self.checkpoint, target)

        ready_path = "/v2/health/ready"
        probe = (container.get("readinessProbe") or {}).get("httpGet") or {}
        original_http = _port_of(container.get("args") or [], "--http_port")
        if probe.get("path") and probe.get("port") in (original_http, "http1", None):
            ready_path = probe["path"]

        log_path = pod_dir / "predictor.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed when the pod stops
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, env=env, cwd=pod_dir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        pod = Pod(name=name, uid=meta["uid"], generation=meta.get("generation"), template=self._template(isvc),
                  serial=self._serial, dir=pod_dir, argv=argv, env=env, http_port=http_port, grpc_port=grpc_port,
                  ready_path=ready_path, proc=proc, log_path=log_path)
        pod._log = log  # type: ignore[attr-defined]
        self.pods[name] = pod
        self._event("started", name, f"pid {proc.pid}: {' '.join(argv)}")
        return pod

    def _stop_pod(self, pod: Pod, why: str) -> None:
        if pod.proc.poll() is None:
            pod.proc.send_signal(signal.SIGTERM)
            try:
                pod.proc.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                pod.proc.kill()
                pod.proc.wait(10)
        pod.state = "stopped"
        self._close_log(pod)
        self._event("stopped", pod.name, f"pid {pod.pid} ({why}), status {pod.proc.returncode}")

    @staticmethod
    def _close_log(pod: Pod) -> None:
        with contextlib.suppress(Exception):
            pod._log.close()  # type: ignore[attr-defined]

    def _event(self, event: str, name: str, detail: str) -> None:
        self.events.append((time.monotonic() - self._t0, event, name, detail))

    # ----- KServe's controller: the InferenceService's status ----------------------------------------
    def _set_status(self, isvc: dict, pod: Pod | None, ready: str, reason: str = "", message: str = "") -> None:
        from kubernetes.client.exceptions import ApiException

        meta = isvc["metadata"]
        previous = (isvc.get("status") or {}).get("conditions") or []
        status: dict[str, Any] = {
            "observedGeneration": meta.get("generation"),
            "deploymentMode": (meta.get("annotations") or {}).get("serving.kserve.io/deploymentMode"),
            "conditions": [_condition(previous, kind, ready, reason, message)
                           for kind in ("IngressReady", "PredictorReady", "Ready")],
        }
        if pod is not None:
            status["url"] = pod.url
            status["address"] = {"url": pod.url}
            revision = f"{pod.name}-predictor-{pod.serial:05d}"
            status["components"] = {"predictor": {
                "url": pod.url, "restUrl": pod.url, "grpcUrl": f"grpc://127.0.0.1:{pod.grpc_port}",
                "address": {"url": pod.url}, "latestCreatedRevision": revision, "latestReadyRevision": revision}}
        try:
            updated = self.api.patch_namespaced_custom_object_status(
                *ISVC[:2], self.namespace, ISVC[2], meta["name"], {"status": status})
        except ApiException as error:
            if error.status == 404:
                return  # deleted meanwhile
            raise
        with self._lock:  # keep our copy's status current (lastTransitionTime continuity)
            current = self._desired.get(meta["name"])
            if current is not None and current["metadata"]["uid"] == updated["metadata"]["uid"]:
                current["status"] = updated.get("status")
        self._event("status", meta["name"], f"Ready={ready}{' ' + reason if reason else ''}")
