"""Checks a pod spec against OpenShift's ``restricted-v2`` SCC (and Kubernetes Pod Security "restricted").

``restricted_v2_problems(pod_spec)`` lists every rule a pod spec breaks (empty = admitted);
``assert_restricted_v2(pod_spec)`` raises AssertionError listing them. Pure functions of a dict, no cluster.

What restricted-v2 admits (OpenShift 4.11+), and what these checks follow:
- no host namespaces (hostNetwork / hostPID / hostIPC), no hostPort, no privileged container;
- volumes only of the types configMap, downwardAPI, emptyDir, persistentVolumeClaim, projected, secret,
  ephemeral, csi (no hostPath);
- runAsUser / runAsGroup / fsGroup are assigned by the platform from the namespace's ranges (MustRunAsRange):
  a pod that fixes them is rejected unless they fall in that range, so a portable chart sets none;
  no custom seLinuxOptions (MustRunAs);
- every container: allowPrivilegeEscalation false, capabilities drop ALL, add nothing but NET_BIND_SERVICE;
- runAsNonRoot true and seccompProfile RuntimeDefault (pod- or container-level), as Pod Security
  "restricted" requires and restricted-v2 defaults.
The project adds one rule of its own (``read_only_root=True``): readOnlyRootFilesystem true in every
container, with writable paths only on volumes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

ALLOWED_VOLUME_TYPES = frozenset(
    {"configMap", "downwardAPI", "emptyDir", "persistentVolumeClaim", "projected", "secret", "ephemeral", "csi"}
)
ALLOWED_ADDED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
PLATFORM_ASSIGNED = ("runAsUser", "runAsGroup")
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def _containers(pod_spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for kind in CONTAINER_LISTS:
        for container in pod_spec.get(kind) or ():
            yield f"{kind}[{container.get('name', '?')}]", container


def restricted_v2_problems(pod_spec: Mapping[str, Any], *, read_only_root: bool = True) -> list[str]:
    """Every restricted-v2 rule ``pod_spec`` breaks, as readable sentences (empty: it is admitted)."""
    problems: list[str] = []
    if not isinstance(pod_spec, Mapping):
        return [f"not a pod spec: {type(pod_spec).__name__}"]
    if not pod_spec.get("containers"):
        problems.append("no containers")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(key):
            problems.append(f"{key} is true (host namespaces are not allowed)")

    pod_sc = pod_spec.get("securityContext") or {}
    for key in (*PLATFORM_ASSIGNED, "fsGroup"):
        if key in pod_sc:
            problems.append(f"securityContext.{key} is set (restricted-v2 assigns it from the namespace's range)")
    if (pod_sc.get("seLinuxOptions") or {}):
        problems.append("securityContext.seLinuxOptions is set (restricted-v2 assigns the SELinux context)")
    if pod_sc.get("sysctls"):
        problems.append("securityContext.sysctls is set (not allowed)")
    if pod_sc.get("runAsNonRoot") is False:
        problems.append("securityContext.runAsNonRoot is false")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault"):
        problems.append(f"securityContext.seccompProfile.type is {pod_seccomp!r} (RuntimeDefault required)")

    for volume in pod_spec.get("volumes") or ():
        kinds = set(volume) - {"name"}
        bad = kinds - ALLOWED_VOLUME_TYPES
        if bad:
            problems.append(f"volume {volume.get('name', '?')!r} has type {sorted(bad)} (not allowed)")

    for where, container in _containers(pod_spec):
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        for key in PLATFORM_ASSIGNED:
            if key in sc:
                problems.append(f"{where}: securityContext.{key} is set (restricted-v2 assigns it)")
        if (sc.get("seLinuxOptions") or {}):
            problems.append(f"{where}: securityContext.seLinuxOptions is set")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{where}: securityContext.procMount is {sc.get('procMount')!r}")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or ()):
            problems.append(f"{where}: securityContext.capabilities.drop must contain ALL")
        added = set(capabilities.get("add") or ()) - ALLOWED_ADDED_CAPABILITIES
        if added:
            problems.append(f"{where}: securityContext.capabilities.add {sorted(added)} (only NET_BIND_SERVICE)")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{where}: runAsNonRoot must be true (container or pod securityContext)")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile.type must be RuntimeDefault (container or pod), got {seccomp!r}")
        if read_only_root and sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: securityContext.readOnlyRootFilesystem must be true")
        for port in container.get("ports") or ():
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']} (not allowed)")
            if int(port.get("containerPort", 1024)) < 1024:
                problems.append(f"{where}: containerPort {port['containerPort']} < 1024 (needs NET_BIND_SERVICE)")
    return problems


def assert_restricted_v2(pod_spec: Mapping[str, Any], *, read_only_root: bool = True) -> None:
    """Raise AssertionError naming every restricted-v2 rule ``pod_spec`` breaks."""
    problems = restricted_v2_problems(pod_spec, read_only_root=read_only_root)
    if problems:
        raise AssertionError("pod spec is not restricted-v2 compatible:\n  - " + "\n  - ".join(problems))


def pod_specs(manifest: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The pod specs inside a rendered object: Pod, the workload kinds' templates, a KServe predictor."""
    kind = manifest.get("kind")
    name = f"{kind}/{(manifest.get('metadata') or {}).get('name', '?')}"
    spec = manifest.get("spec") or {}
    if kind == "Pod":
        return [(name, spec)]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [(name, spec["template"]["spec"])]
    if kind == "CronJob":
        return [(name, spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind == "InferenceService":
        out = []
        for component in ("predictor", "transformer", "explainer"):
            part = spec.get(component)
            if part and part.get("containers"):
                out.append((f"{name} {component}", part))
        return out
    return []


__all__ = ["ALLOWED_VOLUME_TYPES", "assert_restricted_v2", "pod_specs", "restricted_v2_problems"]
