"""Fixtures for this tier: a real kube-apiserver (local v1.20.2 from `make kube-bins`, or $KUBECONFIG).

`kube` (session; KServe's InferenceService CRD installed), `kube_bare` (session), `namespace` (per test), `api`
(the YoloDetector CRD installed, and the few calls the tests make).
See tests/tools/kube_fixtures.py and docs/testing-cluster.md.
"""

import pytest

from tests.cluster.helpers import Api, install_crd
from tests.tools.kube_fixtures import *  # noqa: F401,F403


@pytest.fixture
def api(kube) -> Api:
    install_crd(kube)
    return Api(kube.api_client())
