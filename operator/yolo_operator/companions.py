"""Pure builders for what the operator makes beside each InferenceService: PodMonitor, PodDisruptionBudget,
NetworkPolicy. No I/O; the handlers create, patch and delete them (``handlers.apply_companions``).

Each one selects the detector's predictor pods as KServe labels them in every mode
(``serving.kserve.io/inferenceservice=<name>`` and ``component=predictor``: predictor.go:509-510, constants.go:61,
403), carries the operator's labels and is
owned by the YoloDetector, so that the garbage collector deletes it with the detector.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import config as c
from . import manifests
from .config import OperatorConfig


@dataclass(frozen=True)
class Kind:
    """Where a companion kind lives in the API (``version`` chosen from what the cluster serves for PDBs)."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


POD_MONITOR = Kind(c.MONITORING_GROUP, c.MONITORING_VERSION, c.PODMONITOR_PLURAL, c.PODMONITOR_KIND)
NETWORK_POLICY = Kind(c.NETWORKING_GROUP, c.NETWORKING_VERSION, c.NETPOL_PLURAL, c.NETPOL_KIND)


def pdb_kind(version: str) -> Kind:
    return Kind(c.POLICY_GROUP, version, c.PDB_PLURAL, c.PDB_KIND)


def pod_selector(name: str) -> dict[str, Any]:
    return {"matchLabels": {c.ISVC_POD_LABEL: name, c.COMPONENT_LABEL: c.PREDICTOR_COMPONENT}}


def _object(kind: Kind, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": kind.api_version, "kind": kind.kind,
            "metadata": {"name": f"{name}-predictor", "namespace": namespace,
                         "labels": {c.MANAGED_BY_LABEL: c.MANAGED_BY, c.DETECTOR_LABEL: name}},
            "spec": spec}


def pod_monitor(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """A PodMonitor scraping the predictor's ``/metrics`` on its HTTP port (``http1``), with the InferenceService
    label kept on every series (``podTargetLabels``: the queue-depth query selects on it). None when
    ``monitoring.podMonitor`` is false."""
    monitoring = manifests.normalise(spec)["monitoring"]
    if not monitoring.get("podMonitor"):
        return None
    endpoint = {"port": "http1", "path": c.METRICS_PATH, "interval": str(monitoring.get("interval") or "30s")}
    return _object(POD_MONITOR, name, namespace, {
        "selector": pod_selector(name),
        "podMetricsEndpoints": [endpoint],
        "podTargetLabels": [c.ISVC_POD_LABEL],
    })


def disruption_budget(name: str, namespace: str, spec: Mapping[str, Any], version: str) -> dict[str, Any] | None:
    """A PodDisruptionBudget letting a drain take one predictor pod at a time, for ``replicas.min >= 2`` (with one
    replica it could only block drains or allow an outage). None below that."""
    low = manifests.normalise(spec)["replicas"].get("min")
    if not isinstance(low, int) or low < 2:
        return None
    return _object(pdb_kind(version), name, namespace, {"maxUnavailable": 1, "selector": pod_selector(name)})


def network_policy(name: str, namespace: str, spec: Mapping[str, Any], config: OperatorConfig) -> dict[str, Any] | None:
    """Ingress to the predictor pods from: pods of the detector's own namespace (only those with
    ``access.podLabels`` when given), and every pod of the operator's caller namespaces (``config.caller_namespaces``:
    ingress gateway, Knative's activator, monitoring) and of ``access.namespaces``. Namespaces are matched by the
    ``kubernetes.io/metadata.name`` label (Kubernetes >= 1.21 sets it). None when ``access.networkPolicy`` is false."""
    access = manifests.normalise(spec)["access"]
    if not access.get("networkPolicy"):
        return None
    own: dict[str, Any] = {"podSelector": {"matchLabels": dict(access["podLabels"])}} if access.get("podLabels") \
        else {"podSelector": {}}
    names = sorted({*config.caller_namespaces, *(access.get("namespaces") or [])} - {namespace})
    peers = [own, *({"namespaceSelector": {"matchLabels": {c.NAMESPACE_NAME_LABEL: ns}}} for ns in names)]
    return _object(NETWORK_POLICY, name, namespace, {
        "podSelector": pod_selector(name),
        "policyTypes": ["Ingress"],
        "ingress": [{"from": peers}],
    })
