"""The few Kubernetes API calls the operator makes (kubernetes' sync client; kopf runs sync handlers in threads).

Errors are classified once, here: a missing object is None, 409 on create means "it exists", and every other
failure becomes ``kopf.TemporaryError`` (worth a retry: 5xx, 429, connection) or ``kopf.PermanentError``
(the request itself is wrong: 4xx, e.g. a manifest the InferenceService schema rejects).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import kopf
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from . import config as c

RETRY_DELAY = 5.0
DISCOVERY_TTL = 5.0  # seconds a discovery answer is reused
REQUEST_TIMEOUT = (5.0, 15.0)  # connect, read: a restarting API server must not hang a worker thread


def api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        configuration = client.Configuration()
        config.load_kube_config(client_configuration=configuration)
        return client.ApiClient(configuration)


@contextlib.contextmanager
def _classified(what: str) -> Iterator[None]:
    try:
        yield
    except ApiException as error:
        detail = f"{what}: {error.status} {error.reason}: {_message(error)}"
        if error.status == 429 or (error.status or 0) >= 500:
            raise kopf.TemporaryError(detail, delay=RETRY_DELAY) from None
        raise kopf.PermanentError(detail) from None
    except (OSError, urllib3.exceptions.HTTPError) as error:  # refused, reset, timed out: may be back soon
        raise kopf.TemporaryError(f"{what}: {type(error).__name__}: {error}", delay=RETRY_DELAY) from None


def _message(error: ApiException) -> str:
    try:
        return json.loads(error.body or "{}").get("message") or str(error.body)
    except ValueError:
        return str(error.body)


class Kube:
    """InferenceService create/read/patch and YoloDetector read/status-patch, nothing more."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.apis = client.ApisApi(api)
        self.core = client.CoreV1Api(api)
        self._discovered: tuple[float, dict[str, list[str]]] | None = None

    # ----- what the cluster tells about an InferenceService beyond its status ----------------------------
    def api_group_served(self, group: str) -> bool:
        """Whether the API server serves ``group`` (discovery, open to every authenticated user)."""
        return bool(self.served_versions(group))

    def served_versions(self, group: str) -> list[str]:
        """The versions of ``group`` the API server serves ([] = not at all). One discovery request serves every
        question for ``DISCOVERY_TTL`` seconds (a reconcile asks about several groups)."""
        now = time.monotonic()
        if self._discovered is None or now - self._discovered[0] > DISCOVERY_TTL:
            with _classified("discover API groups"):
                found = self.apis.get_api_versions(_request_timeout=REQUEST_TIMEOUT)
            self._discovered = (now, {item.name: [v.version for v in item.versions or []] for item in found.groups or []})
        return list(self._discovered[1].get(group, []))

    def latest_warning(self, namespace: str, name: str) -> str:
        """KServe's latest Warning event about the InferenceService ('' for none, or without the RBAC to read)."""
        selector = f"involvedObject.kind={c.ISVC_KIND},involvedObject.name={name},type=Warning"
        try:
            events = self.core.list_namespaced_event(namespace, field_selector=selector,
                                                     _request_timeout=REQUEST_TIMEOUT).items
        except (ApiException, OSError, urllib3.exceptions.HTTPError):
            return ""
        if not events:
            return ""
        last = max(events, key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp or ""))
        return f"{last.reason}: {last.message}"

    # ----- InferenceServices ----------------------------------------------------------------------
    def get_isvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(c.ISVC_GROUP, c.ISVC_VERSION, c.ISVC_PLURAL, namespace, name)

    def create_isvc(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create; None when it already exists (409: someone, e.g. our previous incarnation, was first)."""
        return self._create(c.ISVC_GROUP, c.ISVC_VERSION, c.ISVC_PLURAL, "InferenceService", body,
                            missing_api=f"the API {c.ISVC_API_VERSION} is not served; is KServe installed?")

    def _create(self, group: str, version: str, plural: str, kind: str, body: Mapping[str, Any], *,
                missing_api: str | None = None) -> dict[str, Any] | None:
        """Create a custom object; None when it already exists (409). ``missing_api``: a 404 (the namespace
        exists — the detector is in it — so the API is not served) becomes a retried error saying this."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        with _classified(f"create {kind} {namespace}/{name}"):
            try:
                return self.custom.create_namespaced_custom_object(
                    group, version, namespace, plural, dict(body), _request_timeout=REQUEST_TIMEOUT)
            except ApiException as error:
                if error.status == 409:
                    return None
                if error.status == 404 and missing_api is not None:
                    raise kopf.TemporaryError(f"create {kind} {namespace}/{name}: {missing_api}", delay=60) from None
                raise

    def patch_isvc(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """JSON merge patch (None values delete fields)."""
        with _classified(f"patch InferenceService {namespace}/{name}"):
            return self.custom.patch_namespaced_custom_object(
                c.ISVC_GROUP, c.ISVC_VERSION, namespace, c.ISVC_PLURAL, name, dict(patch), _request_timeout=REQUEST_TIMEOUT)

    # ----- companions: PodMonitor, PodDisruptionBudget, NetworkPolicy (any group, by REST path) ----------------
    def get_object(self, kind: Any, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(kind.group, kind.version, kind.plural, namespace, name)

    def create_object(self, kind: Any, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create; None when it already exists (409: a concurrent reconcile, e.g. on the InferenceService's event)."""
        return self._create(kind.group, kind.version, kind.plural, kind.kind, body)

    def patch_object(self, kind: Any, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """JSON merge patch (None values delete fields)."""
        with _classified(f"patch {kind.kind} {namespace}/{name}"):
            return self.custom.patch_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, name, dict(patch), _request_timeout=REQUEST_TIMEOUT)

    def delete_object(self, kind: Any, namespace: str, name: str) -> None:
        with _classified(f"delete {kind.kind} {namespace}/{name}"):
            try:
                self.custom.delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name,
                                                            _request_timeout=REQUEST_TIMEOUT)
            except ApiException as error:
                if error.status != 404:
                    raise

    # ----- YoloDetectors ----------------------------------------------------------------------------
    def get_detector(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(c.GROUP, c.VERSION, c.PLURAL, namespace, name)

    def patch_detector_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        with _classified(f"patch YoloDetector {namespace}/{name} status"):
            try:
                self.custom.patch_namespaced_custom_object_status(
                    c.GROUP, c.VERSION, namespace, c.PLURAL, name, {"status": dict(status)}, _request_timeout=REQUEST_TIMEOUT)
            except ApiException as error:
                if error.status != 404:  # 404: deleted meanwhile, nothing to report on
                    raise

    def _get_or_none(self, group: str, version: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with _classified(f"read {plural} {namespace}/{name}"):
            try:
                return self.custom.get_namespaced_custom_object(group, version, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT)
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
