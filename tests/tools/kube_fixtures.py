"""pytest fixtures for the tiers that need a kube-apiserver (cluster, e2e).

A conftest takes them with ``from tests.tools.kube_fixtures import *  # noqa: F401,F403``.

- ``kube`` (session): the test cluster (``tests.tools.kube.ensure_cluster``) with KServe's
  InferenceService CRD installed: ``.kubeconfig``, ``.api_client()``, ``.kubectl(...)``,
  ``.restart_apiserver()`` (skips the calling test on an external KUBECONFIG), ``.local``.
  Skips (never fails) when no cluster can be had or the shared fixtures are absent.
- ``kube_bare`` (session): the same cluster without requiring the KServe CRD fixture.
- ``namespace`` (function): a fresh namespace, deleted after the test.
When a test using them fails on a local cluster, the tails of the control-plane logs are added to
its report.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.tools import kube as kt

__all__ = ["kube_bare", "kube", "namespace", "pytest_runtest_makereport", "KubeHandle"]


class KubeHandle:
    """What the ``kube`` fixture yields; thin wrapper over a ``tests.tools.kube.Cluster``."""

    def __init__(self, cluster: kt.Cluster, fixtures: Path | None):
        self.cluster = cluster
        self.fixtures = fixtures

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    @property
    def local(self) -> bool:
        return self.cluster.local

    def api_client(self):
        return self.cluster.api_client()

    def kubectl(self, *args: str, **kw):
        return self.cluster.kubectl(*args, **kw)

    def install_crd(self, path, timeout: float = 60) -> list[str]:
        return self.cluster.install_crd(path, timeout)

    def restart_apiserver(self, downtime: float = 0.0, graceful: bool = True) -> None:
        """Restart the local API server (same port, same etcd); skips the test on an external cluster."""
        if not self.cluster.local:
            pytest.skip("restarting the API server needs the local test cluster (KUBECONFIG is set)")
        self.cluster.restart_apiserver(downtime, graceful)

    def logs(self) -> dict[str, str]:
        return self.cluster.logs()

    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG pointing at this cluster (for subprocesses: operator, helm)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def __repr__(self) -> str:
        return f"KubeHandle({self.cluster!r})"


def _cluster() -> kt.Cluster:
    try:
        return kt.ensure_cluster()
    except kt.ClusterUnavailable as exc:
        pytest.skip(f"no Kubernetes API server: {exc}")


@pytest.fixture(scope="session")
def kube_bare() -> KubeHandle:
    return KubeHandle(_cluster(), None)


@pytest.fixture(scope="session")
def kube(kube_bare: KubeHandle) -> KubeHandle:
    fixtures = kt.fixtures_dir()
    crd = fixtures / "kserve" / kt.KSERVE_CRD_FILE
    if not crd.is_file():
        pytest.skip(f"shared fixtures absent ({crd}); set YOLO_FIXTURES to the shared fixtures dir")
    if not getattr(kube_bare.cluster, "_kserve_installed", False):
        kube_bare.cluster.install_kserve_crd(fixtures)
        kube_bare.cluster._kserve_installed = True  # type: ignore[attr-defined]
    return KubeHandle(kube_bare.cluster, fixtures)


@pytest.fixture
def namespace(kube_bare: KubeHandle, request) -> str:
    # short: Knative hostnames <name>-predictor-<namespace> must fit in 63 characters
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:24].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:5]}"
    kube_bare.kubectl("create", "namespace", name)
    yield name
    kube_bare.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and {"kube", "kube_bare", "namespace"} & set(getattr(item, "fixturenames", ())):
        cluster = kt._shared
        if cluster is not None and cluster.local:
            for component, text in cluster.logs().items():
                report.sections.append((f"{component} log (tail)", text))
