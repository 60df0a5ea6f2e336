"""Fixtures for this tier: a real kube-apiserver (local v1.20.2 from `make kube-bins`, or $KUBECONFIG).

`kube` (session; KServe's InferenceService CRD installed), `kube_bare` (session), `namespace` (per test).
See tests/tools/kube_fixtures.py and docs/testing-cluster.md.
"""

from tests.tools.kube_fixtures import *  # noqa: F401,F403
