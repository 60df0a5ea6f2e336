"""A real Kubernetes control plane for the cluster and e2e tests, on loopback, without containers.

``LocalCluster`` runs etcd, kube-apiserver and kube-controller-manager (v1.20.2, built once by
``make kube-bins`` into ``~/.cache/yolo-v7/kube/bin``) as child processes in a temporary directory:
TLS everywhere, a static admin token in ``system:masters``, RBAC authorization, service-account
tokens, the garbage collector and the namespace controller. There is no kubelet and no scheduler:
pods stay Pending.

``ensure_cluster()`` picks what the tests run against: the cluster named by ``$KUBECONFIG`` when it is
set (kind, k3d, OpenShift, ...; ``YOLO_TEST_USE_KUBECONFIG=0`` ignores it), else a ``LocalCluster``
from the cached binaries (``$YOLO_KUBE_CACHE``, default ``~/.cache/yolo-v7/kube``). It raises
``ClusterUnavailable`` (the fixtures turn it into a skip) when neither is possible.

Usable outside pytest too::

    python -m tests.tools.kube            # start a cluster, print its KUBECONFIG, wait for Ctrl-C
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tests.tools.ports import free_port

KUBE_VERSION = "v1.20.2"
DEFAULT_CACHE = Path("~/.cache/yolo-v7/kube").expanduser()
KSERVE_CRD_FILE = "serving.kserve.io_inferenceservices.yaml"
KSERVE_CRD_NAME = "inferenceservices.serving.kserve.io"
KSERVE_OPENAPI_DEFINITION = "io.kserve.serving.v1beta1.InferenceService"
SERVICE_CIDR = "10.0.0.0/24"
# clusterrole-aggregation: the default view/edit/admin roles pick up aggregated ClusterRoles (the chart has some)
DEFAULT_CONTROLLERS = ("garbagecollector", "namespace", "serviceaccount", "serviceaccount-token",
                       "clusterrole-aggregation")


class ClusterUnavailable(RuntimeError):
    """No cluster can be had here (binaries not built, KUBECONFIG unreachable, ...)."""


class ClusterError(RuntimeError):
    """A control-plane process failed; the message carries the tails of the logs."""


def cache_dir() -> Path:
    return Path(os.environ.get("YOLO_KUBE_CACHE") or DEFAULT_CACHE).expanduser()


def fixtures_dir() -> Path:
    """The shared fixtures (``$YOLO_FIXTURES``, default ``../shared/fixtures`` beside the checkout)."""
    from tests.conftest import fixtures_root

    return fixtures_root()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Children get SIGTERM when the test process dies, so no control plane outlives a killed pytest."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} unreadable)"
    return "\n".join(text[-lines:])


# ------------------------------------------------------------------------------------------------
# kubectl


_KUBECTL: str | None = None


def kubectl_path() -> str:
    """``$YOLO_KUBECTL``, else the pinned kubectl v1.34 of the helm wheel (``tests.tools.helm``), else
    ``/usr/bin/kubectl`` / PATH. The pinned one first: distro or cloud-SDK kubectls differ in how they
    validate against an old (v1.20) server, e.g. gcloud's 1.32 skips client-side validation with
    ``--validate=strict``."""
    global _KUBECTL
    env = os.environ.get("YOLO_KUBECTL")
    if env:
        return env
    if _KUBECTL:
        return _KUBECTL
    try:
        from tests.tools import helm

        _KUBECTL = str(helm.kubectl_path())
    except Exception as exc:  # noqa: BLE001 - fall back to a system kubectl, report both if none
        found = "/usr/bin/kubectl" if os.access("/usr/bin/kubectl", os.X_OK) else shutil.which("kubectl")
        if not found:
            raise ClusterUnavailable(f"no kubectl: helm wheel ({exc}); none in /usr/bin or on PATH") from exc
        _KUBECTL = found
    return _KUBECTL


def kubectl(
    kubeconfig: str | os.PathLike[str],
    *args: str,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl against ``kubeconfig``; text output captured; raises with stderr when ``check``."""
    cmd = [kubectl_path(), "--kubeconfig", os.fspath(kubeconfig), *args]
    if isinstance(input, bytes):
        input = input.decode()
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc


# ------------------------------------------------------------------------------------------------
# CRDs


def strip_empty_defaults(node: Any) -> int:
    """Remove schema ``default: ""`` / ``default: null`` entries (v1.20 rejects them); returns the count."""
    removed = 0
    if isinstance(node, dict):
        if "default" in node and node["default"] in ("", None):
            del node["default"]
            removed += 1
        for value in node.values():
            removed += strip_empty_defaults(value)
    elif isinstance(node, list):
        for value in node:
            removed += strip_empty_defaults(value)
    return removed


def _load_docs(path: Path) -> list[dict]:
    import yaml

    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def wait_crd_established(kubeconfig: str | os.PathLike[str], name: str, timeout: float = 60) -> None:
    """Poll until the CRD's Established condition is True (``kubectl wait`` errors while status is empty)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        proc = kubectl(kubeconfig, "get", f"crd/{name}", "-o", "json", check=False, timeout=30)
        if proc.returncode == 0:
            conds = json.loads(proc.stdout).get("status", {}).get("conditions") or []
            status = {c.get("type"): c for c in conds}
            if status.get("Established", {}).get("status") == "True":
                return
            last = json.dumps(conds)
        else:
            last = proc.stderr.strip()
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {name} not Established after {timeout:.0f} s: {last}")
        time.sleep(0.25)


def wait_openapi_published(kubeconfig: str | os.PathLike[str], definition: str, timeout: float = 90) -> float:
    """Poll /openapi/v2 until it holds ``definition`` (e.g. ``io.kserve.serving.v1beta1.InferenceService``).

    The API server publishes a CRD's schema some seconds after the CRD is Established; kubectl's
    validation (what rejects unknown fields on v1.20) only sees it from then on. Returns the seconds waited.
    """
    t0 = time.monotonic()
    needle = f'"{definition}"'
    while True:
        proc = kubectl(kubeconfig, "get", "--raw", "/openapi/v2", check=False, timeout=60)
        if proc.returncode == 0 and needle in proc.stdout:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{definition} not in /openapi/v2 after {timeout:.0f} s")
        time.sleep(1)


def apply_docs(kubeconfig: str | os.PathLike[str], docs: Iterable[dict], field_manager: str = "yolo-tests",
               server_side: bool = True) -> None:
    """Apply manifests (server-side by default: large CRDs exceed the client-side annotation limit)."""
    docs = list(docs)
    payload = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    args = ["apply", "-f", "-"]
    if server_side:
        args += ["--server-side", "--force-conflicts", f"--field-manager={field_manager}"]
    kubectl(kubeconfig, *args, input=payload, timeout=180)


def install_crd(kubeconfig: str | os.PathLike[str], path: str | os.PathLike[str], timeout: float = 60,
                strip_defaults: bool = True) -> list[str]:
    """Apply the CRD(s) in ``path`` server-side and wait until Established; returns their names."""
    docs = _load_docs(Path(path))
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if not crds:
        raise ValueError(f"{path}: no CustomResourceDefinition in it")
    if strip_defaults:
        strip_empty_defaults(crds)
    apply_docs(kubeconfig, crds)
    names = [d["metadata"]["name"] for d in crds]
    for name in names:
        wait_crd_established(kubeconfig, name, timeout)
    return names


def crd_exists(kubeconfig: str | os.PathLike[str], name: str) -> bool:
    return kubectl(kubeconfig, "get", f"crd/{name}", "-o", "name", check=False).returncode == 0


def install_kserve_crd(kubeconfig: str | os.PathLike[str], fixtures: str | os.PathLike[str] | None = None,
                       replace_existing: bool = True) -> str:
    """Install KServe's real InferenceService CRD from the shared fixtures; returns its name.

    ``replace_existing=False`` leaves a CRD that is already there alone (a real cluster's KServe).
    """
    path = Path(fixtures or fixtures_dir()) / "kserve" / KSERVE_CRD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"KServe CRD fixture missing: {path} (set YOLO_FIXTURES)")
    if not replace_existing and crd_exists(kubeconfig, KSERVE_CRD_NAME):
        wait_crd_established(kubeconfig, KSERVE_CRD_NAME)
        wait_openapi_published(kubeconfig, KSERVE_OPENAPI_DEFINITION)
        return KSERVE_CRD_NAME
    install_crd(kubeconfig, path, timeout=120)
    wait_openapi_published(kubeconfig, KSERVE_OPENAPI_DEFINITION)
    return KSERVE_CRD_NAME


# ------------------------------------------------------------------------------------------------
# clusters


class Cluster:
    """What tests use: a kubeconfig plus helpers. Subclasses say whether it is ours to restart."""

    kubeconfig: Path
    local: bool = False

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return kubectl(self.kubeconfig, *args, **kw)

    def api_client(self):
        """A fresh ``kubernetes.client.ApiClient`` for this cluster."""
        from kubernetes import config

        return config.new_client_from_config(config_file=os.fspath(self.kubeconfig))

    def install_crd(self, path: str | os.PathLike[str], timeout: float = 60) -> list[str]:
        return install_crd(self.kubeconfig, path, timeout)

    def install_kserve_crd(self, fixtures: str | os.PathLike[str] | None = None) -> str:
        return install_kserve_crd(self.kubeconfig, fixtures, replace_existing=self.local)

    def restart_apiserver(self, downtime: float = 0.0, graceful: bool = True) -> None:
        raise ClusterUnavailable("cannot restart the API server of an external cluster (KUBECONFIG)")

    def logs(self) -> dict[str, str]:
        return {}

    def stop(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ExternalCluster(Cluster):
    """The cluster of an existing kubeconfig (kind, k3d, OpenShift, ...)."""

    def __init__(self, kubeconfig: str | os.PathLike[str]):
        first = os.fspath(kubeconfig).split(os.pathsep)[0]
        self.kubeconfig = Path(first).expanduser()
        if not self.kubeconfig.is_file():
            raise ClusterUnavailable(f"KUBECONFIG={kubeconfig} is not a file")
        proc = self.kubectl("version", "-o", "json", check=False, timeout=30)
        if proc.returncode != 0:
            raise ClusterUnavailable(f"KUBECONFIG={kubeconfig}: cluster unreachable: {proc.stderr.strip()[-500:]}")

    def __repr__(self) -> str:
        return f"ExternalCluster({self.kubeconfig})"


class LocalCluster(Cluster):
    """etcd + kube-apiserver + kube-controller-manager on free loopback ports in a temp dir.

    ``with LocalCluster() as c: ...`` — or ``start()`` / ``stop()``. ``restart_apiserver()`` stops
    the API server and starts it again on the same port with the same data. Logs go to
    ``<dir>/logs/*.log``; the directory is removed by ``stop()`` unless ``keep`` (or
    ``YOLO_KUBE_KEEP=1``).
    """

    local = True

    def __init__(self, bin_dir: str | os.PathLike[str] | None = None, *, keep: bool | None = None,
                 controllers: Sequence[str] = DEFAULT_CONTROLLERS, start_timeout: float = 120,
                 verbosity: int = 1):
        self.bin_dir = Path(bin_dir) if bin_dir else cache_dir() / "bin"
        missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager")
                   if not os.access(self.bin_dir / b, os.X_OK)]
        if missing:
            raise ClusterUnavailable(
                f"kube binaries missing in {self.bin_dir} ({', '.join(missing)}): run `make kube-bins` "
                "(builds etcd + kube-apiserver v1.20.2 once, ~6 min) or set KUBECONFIG to an existing cluster")
        if shutil.which("openssl") is None:
            raise ClusterUnavailable("openssl not found (needed to make the cluster's certificates)")
        self.keep = keep if keep is not None else os.environ.get("YOLO_KUBE_KEEP") == "1"
        self.controllers = tuple(controllers)
        self.start_timeout = start_timeout
        self.verbosity = verbosity
        self.dir: Path | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.token = secrets.token_hex(16)
        self.kcm_token = secrets.token_hex(16)
        self.etcd_port = self.peer_port = self.port = 0
        self._lock = threading.Lock()

    # -- paths ----------------------------------------------------------------------------------
    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _p(self, name: str) -> Path:
        assert self.dir is not None
        return self.dir / name

    def log_path(self, component: str) -> Path:
        return self._p(f"logs/{component}.log")

    def logs(self, lines: int = 60) -> dict[str, str]:
        if self.dir is None:
            return {}
        return {c: _tail(self.log_path(c), lines) for c in ("etcd", "kube-apiserver", "kube-controller-manager")
                if self.log_path(c).exists()}

    def __repr__(self) -> str:
        return f"LocalCluster({self.server}, dir={self.dir})"

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def start(self) -> LocalCluster:
        t0 = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="yolo-kube-"))
        (self.dir / "logs").mkdir()
        (self.dir / "etcd").mkdir(mode=0o700)
        try:
            self._make_pki()
            self._start_etcd()
            self.port = free_port()
            self._write_kubeconfigs()
            self._start_apiserver()
            self._wait_ready()
            self._start_controller_manager()
        except BaseException:
            msg = self._failure_report()
            self.stop(force_keep=True)
            if sys.exc_info()[0] in (ClusterError,):
                raise
            raise ClusterError(f"local cluster failed to start (logs kept in {self.dir})\n{msg}") from None
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, force_keep: bool = False) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            self._stop_proc(name, grace=3)
        if self.dir is not None and not (self.keep or force_keep):
            shutil.rmtree(self.dir, ignore_errors=True)

    def restart_apiserver(self, downtime: float = 0.0, graceful: bool = True) -> None:
        """Stop kube-apiserver, wait ``downtime`` s, start it again on the same port and data, wait ready.

        ``graceful``: SIGTERM, then SIGKILL after 5 s (v1.20 would wait up to 60 s for open watches to
        end); ``graceful=False``: SIGKILL at once (a crash). Either way clients' watches are cut.
        """
        with self._lock:
            self._stop_proc("kube-apiserver", grace=5 if graceful else 0)
            if downtime:
                time.sleep(downtime)
            self._start_apiserver()
            self._wait_ready()

    # -- pieces -------------------------------------------------------------------------------------
    def _run(self, *args: str) -> None:
        subprocess.run(args, cwd=self.dir, check=True, capture_output=True)

    def _make_pki(self) -> None:
        d = self._p("pki")
        d.mkdir()
        o = "openssl"
        self._run(o, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=yolo-test-ca",
                  "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt")
        (d / "server.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n")
        self._run(o, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
                  "-keyout", f"{d}/server.key", "-out", f"{d}/server.csr")
        self._run(o, "x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.crt", "-CAkey", f"{d}/ca.key",
                  "-CAcreateserial", "-days", "3650", "-extfile", f"{d}/server.ext", "-out", f"{d}/server.crt")
        self._run(o, "genrsa", "-out", f"{d}/sa.key", "2048")
        self._run(o, "rsa", "-in", f"{d}/sa.key", "-pubout", "-out", f"{d}/sa.pub")
        # static tokens: token,user,uid,"groups"
        (d / "tokens.csv").write_text(
            f'{self.token},admin,admin,"system:masters"\n'
            f'{self.kcm_token},system:kube-controller-manager,kcm,"system:masters"\n')
        os.chmod(d / "tokens.csv", 0o600)

    def _popen(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - closed in _stop_proc
        log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.dir, preexec_fn=_die_with_parent)
        proc._yolo_log = log  # type: ignore[attr-defined]
        self.procs[name] = proc
        return proc

    def _stop_proc(self, name: str, grace: float = 5) -> None:
        """SIGTERM, then SIGKILL after ``grace`` s (0: SIGKILL at once)."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            if grace > 0:
                proc.terminate()
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        with contextlib.suppress(Exception):
            proc._yolo_log.close()  # type: ignore[attr-defined]

    def _check_alive(self, *names: str) -> None:
        for name in names:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode}\n{self._failure_report()}")

    def _failure_report(self) -> str:
        return "\n".join(f"--- {c} log (tail) ---\n{t}" for c, t in self.logs(40).items())

    def _start_etcd(self, attempts: int = 3) -> None:
        for attempt in range(attempts):
            self.etcd_port, self.peer_port = free_port(), free_port()
            client = f"http://127.0.0.1:{self.etcd_port}"
            peer = f"http://127.0.0.1:{self.peer_port}"
            self._popen("etcd", [
                str(self.bin_dir / "etcd"), "--name=yolo-test", f"--data-dir={self._p('etcd')}",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=yolo-test={peer}", "--initial-cluster-state=new",
                "--unsafe-no-fsync", "--logger=zap", "--log-level=warn",
                "--quota-backend-bytes=2147483648", "--snapshot-count=100000",
            ])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if self.procs["etcd"].poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(f"{client}/health", timeout=1) as r:
                        if json.load(r).get("health") in ("true", True):
                            return
                except (OSError, ValueError):
                    pass
                time.sleep(0.1)
            self._stop_proc("etcd")
            shutil.rmtree(self._p("etcd"), ignore_errors=True)
            self._p("etcd").mkdir(mode=0o700)
            if attempt == attempts - 1:
                raise ClusterError(f"etcd did not become healthy\n{_tail(self.log_path('etcd'))}")

    def _apiserver_args(self) -> list[str]:
        pki = self._p("pki")
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}", "--insecure-port=0",
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--cert-dir={pki}", f"--tls-cert-file={pki}/server.crt", f"--tls-private-key-file={pki}/server.key",
            f"--client-ca-file={pki}/ca.crt", f"--token-auth-file={pki}/tokens.csv",
            "--authorization-mode=RBAC", "--anonymous-auth=false",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki}/sa.pub", f"--service-account-signing-key-file={pki}/sa.key",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,"
            "ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            "--allow-privileged=true", "--profiling=false", "--enable-priority-and-fairness=false",
            "--event-ttl=10m", f"--v={self.verbosity}",
        ]

    def _start_apiserver(self) -> None:
        self._popen("kube-apiserver", self._apiserver_args())

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self._p("pki/ca.crt")))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        ctx = self._ssl_context()
        last = ""
        while time.monotonic() < deadline:
            self._check_alive("etcd", "kube-apiserver")
            req = urllib.request.Request(f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[-300:]!r}"
            except OSError as e:
                last = str(e)
            time.sleep(0.2)
        raise ClusterError(f"kube-apiserver not ready after {self.start_timeout:.0f} s ({last})\n"
                           f"{self._failure_report()}")

    def _kubeconfig_text(self, user: str, token: str) -> str:
        ca = self._p("pki/ca.crt")
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "yolo-local", "cluster": {"server": self.server, "certificate-authority": str(ca)}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "yolo-local", "context": {"cluster": "yolo-local", "user": user}}],
            "current-context": "yolo-local",
        }, indent=1)

    def _write_kubeconfigs(self) -> None:
        self.kubeconfig = self._p("kubeconfig")
        self.kubeconfig.write_text(self._kubeconfig_text("admin", self.token))
        self._p("kcm.kubeconfig").write_text(self._kubeconfig_text("kube-controller-manager", self.kcm_token))
        for p in (self.kubeconfig, self._p("kcm.kubeconfig")):
            os.chmod(p, 0o600)

    def _start_controller_manager(self) -> None:
        pki = self._p("pki")
        kc = self._p("kcm.kubeconfig")
        self._popen("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kc}", "--leader-elect=false", "--port=0", "--secure-port=0",
            f"--controllers={','.join(self.controllers)}",
            f"--service-account-private-key-file={pki}/sa.key", f"--root-ca-file={pki}/ca.crt",
            "--use-service-account-credentials=false", f"--v={self.verbosity}",
        ])
        time.sleep(0.3)
        self._check_alive("kube-controller-manager")


# ------------------------------------------------------------------------------------------------
# one cluster per test process


_shared: Cluster | None = None
_shared_lock = threading.Lock()


def use_external_kubeconfig() -> str | None:
    kc = os.environ.get("KUBECONFIG")
    if kc and os.environ.get("YOLO_TEST_USE_KUBECONFIG", "1") != "0":
        return kc
    return None


def ensure_cluster() -> Cluster:
    """The process-wide test cluster: ``$KUBECONFIG``'s, or a LocalCluster started once (stopped at exit).

    Raises ``ClusterUnavailable`` with the reason (e.g. binaries not built: run ``make kube-bins``).
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            external = use_external_kubeconfig()
            if external:
                _shared = ExternalCluster(external)
            else:
                _shared = LocalCluster().start()
                import atexit

                atexit.register(stop_shared_cluster)
        return _shared


def stop_shared_cluster() -> None:
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
            _shared = None


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.tools.kube", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kserve", action="store_true", help="also install KServe's InferenceService CRD")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, kubeconfig) after exit")
    ns = ap.parse_args(argv)
    with LocalCluster(keep=ns.keep) as c:
        print(f"cluster up in {c.startup_seconds:.1f} s: {c.server}", flush=True)
        if ns.kserve:
            t = time.monotonic()
            c.install_kserve_crd()
            print(f"KServe CRD established in {time.monotonic() - t:.1f} s", flush=True)
        print(f"export KUBECONFIG={c.kubeconfig}\nlogs: {c.dir}/logs   (Ctrl-C stops it)", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
