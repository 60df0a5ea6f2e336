"""An in-memory API server with KServe's webhooks and controller in front of it, for fast operator tests.

``InMemoryKServe`` answers the operator's ``Kube`` calls (``get_isvc``, ``create_isvc``, ``patch_isvc``, ...) the way
a cluster with the given ``kserve.Profile`` would: every write goes through the defaulting webhook, the validating
webhook (a refusal is the API server's 400, i.e. ``kopf.PermanentError``) and a JSON merge patch; ``metadata.
generation`` moves with the spec; quantities come back in Go's canonical form ("0.5" → "500m"), as KServe's
webhook round-trips them. ``reconcile_kserve()`` plays the controller: status from the profile (mode names,
observedGeneration, Ready). The cluster tier does the same against the real kube-apiserver (``tests/platform/
webhook.py``); this one counts the operator's patches.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import kopf
from kubernetes.utils.quantity import parse_quantity

from tests.platform import kserve
from tests.platform.kserve import Profile, Refused


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def canonical_quantity(value: Any) -> str:
    """Go's ``resource.Quantity`` canonical form for what the operator writes: decimal amounts as integers or
    milli-units ("0.5" → "500m", "2" → "2"), binary-suffixed ones as the largest exact binary unit ("4096Mi" →
    "4Gi")."""
    text = str(value)
    amount = parse_quantity(text)
    if text.endswith("i"):
        for suffix, size in (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
            if amount % size == 0:
                return f"{int(amount // size)}{suffix}"
        return str(int(amount))
    if amount == amount.to_integral_value():
        return str(int(amount))
    return f"{int(amount * 1000)}m" if (amount * 1000) % 1 == 0 else str(amount.normalize())


def _canonical_resources(isvc: dict[str, Any]) -> None:
    for container in isvc.get("spec", {}).get("predictor", {}).get("containers") or []:
        for kind in ("requests", "limits"):
            values = (container.get("resources") or {}).get(kind) or {}
            for key, value in values.items():
                values[key] = canonical_quantity(value)


class InMemoryKServe:
    """The operator's ``Kube`` over an in-memory store with KServe's admission and controller (one profile)."""

    def __init__(self, profile: Profile, *, knative_installed: bool = True) -> None:
        self.profile = profile
        self.knative_installed = knative_installed
        self.isvcs: dict[tuple[str, str], dict[str, Any]] = {}
        self.detectors: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, Any]] = []  # (verb, name, body) of every ISVC write by the operator
        self.warnings: dict[tuple[str, str], str] = {}
        # companions (PodMonitor, PDB, NetworkPolicy) by (plural, namespace, name); groups served beyond the core
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.groups: dict[str, list[str]] = {"policy": ["v1"], "networking.k8s.io": ["v1"], "keda.sh": ["v1alpha1"]}

    # --- the operator's Kube interface ---
    def get_isvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.isvcs.get((namespace, name))
        return copy.deepcopy(found) if found else None

    def create_isvc(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        self.writes.append(("create", key[1], copy.deepcopy(body)))
        if key in self.isvcs:
            return None
        obj = self._admit(copy.deepcopy(dict(body)), None)
        obj["metadata"]["generation"] = 1
        obj["metadata"]["uid"] = f"uid-{key[1]}"
        self.isvcs[key] = obj
        return copy.deepcopy(obj)

    def patch_isvc(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        self.writes.append(("patch", name, copy.deepcopy(patch)))
        old = self.isvcs[(namespace, name)]
        new = self._admit(merge_patch(old, patch), old)
        new["status"] = old.get("status")
        if new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = old["metadata"]["generation"] + 1
        self.isvcs[(namespace, name)] = new
        return copy.deepcopy(new)

    def get_detector(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.detectors.get((namespace, name)))

    def patch_detector_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        detector = self.detectors.get((namespace, name))
        if detector is not None:
            detector["status"] = copy.deepcopy(dict(status))

    def api_group_served(self, group: str) -> bool:
        if group == "serving.knative.dev":
            return self.knative_installed
        return bool(self.served_versions(group))

    def served_versions(self, group: str) -> list[str]:
        return list(self.groups.get(group, []))

    def get_object(self, kind: Any, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind.plural, namespace, name)))

    def create_object(self, kind: Any, body: Mapping[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(dict(body))
        self.objects[(kind.plural, obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    def patch_object(self, kind: Any, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        key = (kind.plural, namespace, name)
        self.objects[key] = merge_patch(self.objects[key], patch)
        return copy.deepcopy(self.objects[key])

    def delete_object(self, kind: Any, namespace: str, name: str) -> None:
        self.objects.pop((kind.plural, namespace, name), None)

    def latest_warning(self, namespace: str, name: str) -> str:
        return self.warnings.get((namespace, name), "")

    # --- KServe ---
    def _admit(self, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        obj = kserve.default_isvc(obj, self.profile)
        _canonical_resources(obj)
        try:
            kserve.validate_isvc(obj, old, self.profile)
        except Refused as error:  # the API server answers 400 with the webhook's message
            raise kopf.PermanentError(f"admission webhook denied the request: {error}") from None
        return obj

    def reconcile_kserve(self, namespace: str, name: str, *, ready: bool = True) -> dict[str, Any]:
        """KServe's controller: build what it would build (raising ``AssertionError`` where the cluster would
        refuse it) and write the status."""
        isvc = self.isvcs[(namespace, name)]
        problem = kserve.check_storage_uri(kserve.storage_uri(isvc))
        isvc["status"] = kserve.status(isvc, self.profile, ready=ready and not problem, reason="ReconcileFailed",
                                       message=problem)
        return copy.deepcopy(isvc)


def requests_within_limits(pod_spec: Mapping[str, Any]) -> list[str]:
    """The API server's rule for every container: a request may not exceed its limit (core validation)."""
    out = []
    for container in [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]:
        resources = container.get("resources") or {}
        for key, request in (resources.get("requests") or {}).items():
            limit = (resources.get("limits") or {}).get(key)
            if limit is not None and Decimal(parse_quantity(request)) > Decimal(parse_quantity(limit)):
                out.append(f"{container.get('name')}: {key} request {request} must be <= limit {limit}")
    return out
