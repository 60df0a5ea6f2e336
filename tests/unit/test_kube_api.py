"""operator/yolo_operator/kube.py: how the one create call reads the API server's answers (a fake
CustomObjectsApi raising what the API server would)."""

from __future__ import annotations

from types import SimpleNamespace

import kopf
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from yolo_operator import config as c
from yolo_operator.kube import Kube

BODY = {"metadata": {"namespace": "team", "name": "det"}, "spec": {}}
POD_MONITOR = SimpleNamespace(group="monitoring.coreos.com", version="v1", plural="podmonitors", kind="PodMonitor")


def _kube(status: int | None) -> tuple[Kube, list[tuple]]:
    calls: list[tuple] = []

    def create(group, version, namespace, plural, body, **_):
        calls.append((group, version, namespace, plural, body["metadata"]["name"]))
        if status is None:
            return {"created": body["metadata"]["name"]}
        raise ApiException(status=status, reason="Reason")

    kube = Kube(client.ApiClient())
    kube.custom = SimpleNamespace(create_namespaced_custom_object=create)
    return kube, calls


def test_created_or_already_there():
    kube, calls = _kube(None)
    assert kube.create_isvc(BODY) == {"created": "det"}
    assert kube.create_object(POD_MONITOR, BODY) == {"created": "det"}
    assert calls == [(c.ISVC_GROUP, c.ISVC_VERSION, "team", c.ISVC_PLURAL, "det"),
                     ("monitoring.coreos.com", "v1", "team", "podmonitors", "det")]
    kube, _ = _kube(409)
    assert kube.create_isvc(BODY) is None and kube.create_object(POD_MONITOR, BODY) is None


def test_a_missing_inferenceservice_api_asks_whether_kserve_is_installed():
    kube, _ = _kube(404)
    with pytest.raises(kopf.TemporaryError, match=r"create InferenceService team/det: the API .* is not served; "
                                                  r"is KServe installed\?"):
        kube.create_isvc(BODY)
    with pytest.raises(kopf.PermanentError, match="create PodMonitor team/det: 404"):  # not KServe's
        kube.create_object(POD_MONITOR, BODY)


@pytest.mark.parametrize(("status", "error"), [(500, kopf.TemporaryError), (429, kopf.TemporaryError),
                                               (422, kopf.PermanentError)])
def test_other_answers_are_classified(status, error):
    kube, _ = _kube(status)
    for create in (lambda: kube.create_isvc(BODY), lambda: kube.create_object(POD_MONITOR, BODY)):
        with pytest.raises(error, match=f"team/det: {status}"):
            create()
