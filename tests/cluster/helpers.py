"""Helpers for the operator's cluster tests and benchmark: run the operator as a subprocess, poll with
deadlines, and play KServe's controller (which the test cluster does not run)."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from yolo_operator import config as c

from tests.tools.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "yolodetector.yaml"
T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout: float = 15.0, interval: float = 0.1,
             what: str | Callable[[], str] = "") -> T:
    """Call ``probe`` until it returns something truthy (returned) or ``timeout`` passes (AssertionError).

    ``what`` names what is awaited in the error; a callable is called only then (the state at the timeout)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except ApiException as error:  # e.g. 404 until it exists, or a restarting API server
            last = error
        except OSError as error:
            last = error
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            if callable(what):
                what = what()
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}; last: {last!r}")
        time.sleep(interval)


def install_crd(kube) -> None:
    """Install (idempotently) the YoloDetector CRD into the test cluster."""
    if not getattr(kube.cluster, "_yolodetector_crd", False):
        kube.install_crd(CRD_PATH)
        kube.cluster._yolodetector_crd = True


class Api:
    """The few calls the tests make, on a kubernetes ApiClient."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api_client)

    # detectors
    def create_detector(self, namespace: str, name: str, spec: Mapping[str, Any] | None = None,
                        labels: Mapping[str, str] | None = None) -> dict:
        body = {"apiVersion": c.API_VERSION, "kind": c.KIND,
                "metadata": {"name": name, "labels": dict(labels or {})}, "spec": dict(spec or {})}
        return self.custom.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, body)

    def detector(self, namespace: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, name)

    def patch_detector(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict:
        return self.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, name, patch)

    def delete_detector(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, name)

    # inference services
    def isvc(self, namespace: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(c.ISVC_GROUP, c.ISVC_VERSION, namespace,
                                                            c.ISVC_PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def isvcs(self, namespace: str) -> list[dict]:
        return self.custom.list_namespaced_custom_object(c.ISVC_GROUP, c.ISVC_VERSION, namespace,
                                                         c.ISVC_PLURAL)["items"]

    def patch_isvc(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict:
        return self.custom.patch_namespaced_custom_object(c.ISVC_GROUP, c.ISVC_VERSION, namespace, c.ISVC_PLURAL,
                                                          name, patch)

    def delete_isvc(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(c.ISVC_GROUP, c.ISVC_VERSION, namespace, c.ISVC_PLURAL, name)

    def create_isvc(self, namespace: str, body: Mapping[str, Any]) -> dict:
        return self.custom.create_namespaced_custom_object(c.ISVC_GROUP, c.ISVC_VERSION, namespace, c.ISVC_PLURAL,
                                                           dict(body))


def condition(obj: Mapping[str, Any] | None, kind: str) -> dict:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def pretend_kserve_marks_ready(api: Api, namespace: str, name: str, url: str | None = None,
                               ready: bool = True, reason: str | None = None, message: str = "") -> dict:
    """Do what KServe's controller does once the predictor is up: set the InferenceService's status
    subresource (Ready condition, URL, address). The test cluster runs no KServe controller."""
    url = url or f"http://{name}.{namespace}.example.com"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "url": url,
        "address": {"url": f"http://{name}-predictor.{namespace}.svc.cluster.local"},
        "conditions": [
            {"type": kind, "status": "True" if ready else "False", "lastTransitionTime": now,
             **({"reason": reason} if reason else {}), **({"message": message} if message else {})}
            for kind in ("IngressReady", "PredictorReady", "Ready")
        ],
    }
    # KServe reports the generation it reconciled; the operator's Ready waits for the latest one
    status["observedGeneration"] = (api.isvc(namespace, name) or {}).get("metadata", {}).get("generation")
    return api.custom.patch_namespaced_custom_object_status(
        c.ISVC_GROUP, c.ISVC_VERSION, namespace, c.ISVC_PLURAL, name, {"status": status})


class Operator:
    """``python -m yolo_operator`` as a child process, logging to a file; ``rss_bytes()`` from /proc."""

    def __init__(self, kubeconfig: str | os.PathLike[str], namespaces: Iterable[str] = (),
                 log_path: str | os.PathLike[str] | None = None, resync_seconds: float = 60,
                 env: Mapping[str, str] | None = None, extra_args: Iterable[str] = ()) -> None:
        self.kubeconfig = os.fspath(kubeconfig)
        self.namespaces = list(namespaces)
        self.port = free_port()
        self.log_path = Path(log_path) if log_path else Path(os.environ.get("TMPDIR", "/tmp")) / (
            f"yolo-operator-{self.port}.log")
        self.resync_seconds = resync_seconds
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def start(self, wait: bool = True) -> Operator:
        args = [sys.executable, "-m", "yolo_operator", f"--liveness={self.liveness_url}",
                f"--resync-seconds={self.resync_seconds}", *self.extra_args]
        args += [f"--namespace={ns}" for ns in self.namespaces] or ["--all-namespaces"]
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "PYTHONUNBUFFERED": "1", **self.env}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=ROOT)
        if wait:
            wait_for(self.healthy, timeout=30, what=f"operator liveness at {self.liveness_url}\n{self.log_tail()}")
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"operator exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(self.liveness_url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def rss_bytes(self) -> int:
        """Resident set size of the operator process (VmRSS from /proc)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        self._log.close()

    def __enter__(self) -> Operator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
