"""Stand-in for Knative Serving's admission of a ``serving.knative.dev/v1`` Service (knative-v1.23.0).

What Knative's webhook refuses, read from ``fixtures/knative/v1.23.0-src`` (Apache-2.0; facts, not code):
``fieldmask.go`` says which PodSpec / Container / SecurityContext / Probe / ... fields a Service may set, several
behind a ``config-features`` flag; ``k8s_validation.go`` adds the single-port rule, port names, reserved ports,
env vars, paths and probe bounds. Every rule below names the file and line it comes from, and none is more
lenient than its source. Knative's defaulting webhook (``revision_defaults.go``, not in the fixtures) runs before
validation; the only default applied here is its readiness ``successThreshold: 1`` (Kubernetes' own default too).

Public API (also used by the OpenShift Serverless manifest tests and the KServe Serverless stand-in):

- ``STOCK_FEATURES``: the stock ``config-features`` data, parsed from the fixture's ``features.yaml``;
- ``features_with(overrides)``: stock flags with some changed (what a cluster's ConfigMap says);
- ``check_service(service, features=None, minor=23)`` and ``check_pod_spec(pod_spec, features=None, minor=23)``:
  the problems (an empty list = admitted), each ``"<field path>: <what> [<file>:<line>]"``.

``minor`` is Knative Serving's minor version (1.<minor>): ``startupProbe`` is refused before 1.15
(knative/serving#15309; ``fieldmask.go:331`` allows it from then on).
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import fixtures_root

ENABLED, DISABLED, ALLOWED, ALLOW_ROOT_BOUNDED = "enabled", "disabled", "allowed", "allowrootbounded"
STARTUP_PROBE_MINOR = 15  # knative/serving#15309: startupProbe allowed from Knative 1.15

FM, KV = "fieldmask.go", "k8s_validation.go"


def source_dir() -> Path:
    return fixtures_root() / "knative" / "v1.23.0-src"


@functools.cache
def stock_features() -> dict[str, str]:
    """The stock ``config-features``: the ``key: "value"`` lines of ``features.yaml``'s ``_example`` block
    (every flag the ConfigMap documents, with its stock value; ``features.go:83-118`` has the same defaults)."""
    doc = yaml.safe_load((source_dir() / "features.yaml").read_text())
    out: dict[str, str] = {}
    for line in doc["data"]["_example"].splitlines():
        match = re.match(r'^\s*([a-z0-9.-]+):\s*"([^"]*)"\s*$', line)
        if match:
            out[match.group(1)] = match.group(2).lower()
    return out


def __getattr__(name: str) -> Any:  # STOCK_FEATURES is read from the fixture on first use, not at import
    if name == "STOCK_FEATURES":
        return dict(stock_features())
    raise AttributeError(name)


def features_with(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Stock flags, then ``overrides`` (values compared case-insensitively, ``features.go:205-217``)."""
    out = dict(stock_features())
    out.update({k: str(v).lower() for k, v in (overrides or {}).items()})
    return out


class _Checker:
    def __init__(self, features: Mapping[str, str] | None, minor: int) -> None:
        self.features = features_with(features) if features is not None else dict(stock_features())
        self.minor = minor
        self.problems: list[str] = []

    # --- flags: the field masks keep a gated field unless the flag is Disabled (fieldmask.go:242-291); the
    # volume checks want it Enabled (k8s_validation.go:124-143) ---
    def flag(self, key: str) -> str:
        return self.features.get(key, DISABLED)

    def not_disabled(self, key: str) -> bool:
        return self.flag(key) != DISABLED

    def enabled(self, key: str) -> bool:
        return self.flag(key) == ENABLED

    def secure_defaults(self) -> bool:
        return self.flag("secure-pod-defaults") in (ENABLED, ALLOW_ROOT_BOUNDED)

    def say(self, path: str, what: str, where: str) -> None:
        self.problems.append(f"{path}: {what} [{where}]")

    def mask(self, obj: Mapping[str, Any], path: str, allowed: Mapping[str, str], gated: Mapping[str, tuple[str, str]]
             | None = None) -> None:
        """``apis.CheckDisallowedFields(obj, Mask(obj))``: a set field that the mask drops is refused.
        ``allowed``: field → where the mask keeps it; ``gated``: field → (flag, where) kept unless the flag is off."""
        for key, value in obj.items():
            if value is None or key in allowed:
                continue
            if gated and key in gated:
                flag, where = gated[key]
                if self.not_disabled(flag):
                    continue
                self.say(f"{path}.{key}", f"must not set the field(s) (config-features {flag} is disabled)", where)
                continue
            self.say(f"{path}.{key}", "must not set the field(s)", allowed.get("*", FM))

    # --- the pod ---
    def pod_spec(self, ps: Mapping[str, Any], path: str) -> None:
        allowed = dict.fromkeys(("serviceAccountName", "containers", "volumes", "imagePullSecrets",
                                 "enableServiceLinks"), f"{FM}:231-235")
        allowed["*"] = f"{FM}:222-304 (PodSpecMask)"
        gated = {
            "affinity": ("kubernetes.podspec-affinity", f"{FM}:242"),
            "topologySpreadConstraints": ("kubernetes.podspec-topologyspreadconstraints", f"{FM}:245"),
            "hostAliases": ("kubernetes.podspec-hostaliases", f"{FM}:248"),
            "nodeSelector": ("kubernetes.podspec-nodeselector", f"{FM}:251"),
            "runtimeClassName": ("kubernetes.podspec-runtimeclassname", f"{FM}:254"),
            "tolerations": ("kubernetes.podspec-tolerations", f"{FM}:257"),
            "shareProcessNamespace": ("kubernetes.podspec-shareprocessnamespace", f"{FM}:266"),
            "priorityClassName": ("kubernetes.podspec-priorityclassname", f"{FM}:269"),
            "schedulerName": ("kubernetes.podspec-schedulername", f"{FM}:272"),
            "initContainers": ("kubernetes.podspec-init-containers", f"{FM}:275"),
            "dnsPolicy": ("kubernetes.podspec-dnspolicy", f"{FM}:278"),
            "dnsConfig": ("kubernetes.podspec-dnsconfig", f"{FM}:281"),
            "hostIPC": ("kubernetes.podspec-hostipc", f"{FM}:284"),
            "hostPID": ("kubernetes.podspec-hostpid", f"{FM}:287"),
            "hostNetwork": ("kubernetes.podspec-hostnetwork", f"{FM}:290"),
        }
        rest = {k: v for k, v in ps.items() if k not in ("securityContext", "automountServiceAccountToken")}
        self.mask(rest, path, allowed, gated)
        if ps.get("automountServiceAccountToken") not in (None, False):  # only false may be set (fieldmask.go:236-239)
            self.say(f"{path}.automountServiceAccountToken", "must not set the field(s) (only false is allowed)",
                     f"{FM}:236-239")
        sc = ps.get("securityContext")
        if sc is not None:
            if self.not_disabled("kubernetes.podspec-securitycontext") or self.secure_defaults():  # fieldmask.go:260-265
                self.pod_security_context(sc, f"{path}.securityContext")
            else:
                self.say(f"{path}.securityContext", "must not set the field(s) (config-features "
                         "kubernetes.podspec-securitycontext is disabled)", f"{FM}:260-265")
        volumes = self.volumes(ps.get("volumes") or [], f"{path}.volumes")
        for i, container in enumerate(ps.get("initContainers") or []):
            self.container(container, f"{path}.initContainers[{i}]", volumes, init=True)
        containers = list(ps.get("containers") or [])
        port = self.containers_ports(containers, path)
        if not containers:
            self.say(f"{path}.containers", "missing field(s)", f"{KV}:433-434")
        elif len(containers) > 1 and not self.enabled("multi-container"):
            self.say(path, f"multi-container is off, but found {len(containers)} containers", f"{KV}:476-479")
        else:
            names: set[str] = set()
            for i, container in enumerate(containers):
                at = f"{path}.containers[{i}]"
                if container.get("name") in names:
                    self.say(f"{at}.name", f"duplicate container name {container.get('name')!r}", f"{KV}:482-487")
                names.add(container.get("name"))
                user = len(containers) == 1 or bool(container.get("ports"))  # k8s_validation.go:436-437, 490-494
                self.container(container, at, volumes, init=False, user=user, port=port)
        account = ps.get("serviceAccountName")
        if account and not _DNS1123_SUBDOMAIN.match(account):
            self.say(f"{path}.serviceAccountName", f"invalid value {account!r}", f"{KV}:440-445")

    def pod_security_context(self, sc: Mapping[str, Any], path: str) -> None:
        if not self.not_disabled("kubernetes.podspec-securitycontext"):
            # only seccompProfile RuntimeDefault/Unconfined survives, through secure-pod-defaults (fieldmask.go:674-689)
            for key, value in sc.items():
                keep = key == "seccompProfile" and (value or {}).get("type") in ("RuntimeDefault", "Unconfined")
                if value is not None and not keep:
                    self.say(f"{path}.{key}", "must not set the field(s) (config-features "
                             "kubernetes.podspec-securitycontext is disabled)", f"{FM}:674-689")
            return
        allowed = dict.fromkeys(("runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "supplementalGroups",
                                 "seccompProfile"), f"{FM}:691-696")
        allowed["*"] = f"{FM}:698-703"
        self.mask(sc, path, allowed)

    # --- volumes ---
    def volumes(self, volumes: list[Mapping[str, Any]], path: str) -> dict[str, Mapping[str, Any]]:
        out: dict[str, Mapping[str, Any]] = {}
        sources = {  # VolumeSourceMask (fieldmask.go:59-85) and the per-kind switches (k8s_validation.go:124-143)
            "secret": None, "configMap": None, "projected": None,
            "emptyDir": "kubernetes.podspec-volumes-emptydir",
            "persistentVolumeClaim": "kubernetes.podspec-persistent-volume-claim",
            "hostPath": "kubernetes.podspec-volumes-hostpath",
            "csi": "kubernetes.podspec-volumes-csi",
            "ephemeral": "kubernetes.podspec-volumes-ephemeral",
            "image": "kubernetes.podspec-volumes-image",
        }
        for i, volume in enumerate(volumes):
            at = f"{path}[{i}]"
            name = volume.get("name") or ""
            if not name:
                self.say(f"{at}.name", "missing field(s)", f"{KV}:146-147")
            elif not _DNS1123_LABEL.match(name) or len(name) > 63:
                self.say(f"{at}.name", f"invalid value {name!r}", f"{KV}:148-149")
            given = [key for key in volume if key != "name" and volume[key] is not None]
            for key in given:
                if key not in sources:
                    self.say(f"{at}.{key}", "must not set the field(s)", f"{FM}:51-90 (VolumeSourceMask)")
                elif sources[key] and not self.enabled(sources[key]):
                    self.say(f"{at}.{key}", f"{key} volume support is disabled (config-features {sources[key]})",
                             f"{KV}:124-143")
            if len(given) > 1:
                self.say(at, f"expected exactly one, got both: {', '.join(given)}", f"{KV}:220-221")
            elif not given:
                self.say(at, "expected exactly one volume source", f"{KV}:196-219")
            medium = (volume.get("emptyDir") or {}).get("medium")
            if medium not in (None, "", "Memory"):
                self.say(f"{at}.emptyDir.medium", f"invalid value {medium!r}", f"{KV}:322-326")
            out[name] = volume
        return out

    # --- containers ---
    def containers_ports(self, containers: list[Mapping[str, Any]], path: str) -> dict[str, Any]:
        """The single serving port across all containers (k8s_validation.go:512-540)."""
        count, port = 0, {}
        for container in containers:
            ports = container.get("ports") or []
            if ports:
                count += len(ports)
                port = dict(ports[0])
        port.setdefault("name", "http")
        port.setdefault("containerPort", 8080)
        if count == 0 and len(containers) > 1:
            self.say(f"{path}.containers[*].ports", "missing field(s)", f"{KV}:531-533")
        if count > 1:
            self.say(f"{path}.containers[*].ports", "more than one container port is set: only a single port is "
                     "allowed across all containers", f"{KV}:535-540")
        return port

    def container(self, container: Mapping[str, Any], path: str, volumes: Mapping[str, Mapping[str, Any]], *,
                  init: bool, user: bool = True, port: Mapping[str, Any] | None = None) -> None:
        allowed = dict.fromkeys(("name", "args", "command", "env", "workingDir", "envFrom", "image",
                                 "imagePullPolicy", "livenessProbe", "ports", "readinessProbe", "resources",
                                 "securityContext", "terminationMessagePath", "terminationMessagePolicy",
                                 "volumeMounts"), f"{FM}:318-334")
        allowed["*"] = f"{FM}:310-345 (ContainerMask)"
        self.mask({k: v for k, v in container.items() if k != "startupProbe"}, path, allowed)
        if container.get("startupProbe") is not None and self.minor < STARTUP_PROBE_MINOR:
            self.say(f"{path}.startupProbe", f"must not set the field(s) before Knative 1.{STARTUP_PROBE_MINOR} "
                     f"(this is 1.{self.minor}; knative/serving#15309)", f"{FM}:331")
        if container.get("name") == "queue-proxy":
            self.say(f"{path}.name", '"queue-proxy" is a reserved container name', f"{KV}:49-51, 623-628")
        if not init and port is not None:
            if user:
                self.probe(container.get("livenessProbe"), f"{path}.livenessProbe", port)
                self.probe(container.get("readinessProbe"), f"{path}.readinessProbe", port, readiness=True)
                self.probe(container.get("startupProbe"), f"{path}.startupProbe", port)
            else:  # a sidecar may not probe (k8s_validation.go:548-561, multi-container-probing off)
                for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                    if container.get(kind) and not self.enabled("multi-container-probing"):
                        self.say(f"{path}.{kind}", "must not set the field(s)", f"{KV}:548-561")
        reserved_env = {"K_SERVICE", "K_CONFIGURATION", "K_REVISION"} | (set() if init or not user else {"PORT"})
        for i, env in enumerate(container.get("env") or []):
            at = f"{path}.env[{i}]"
            self.mask(env, at, {"name": f"{FM}:515", "value": f"{FM}:516", "valueFrom": f"{FM}:517",
                                "*": f"{FM}:507-520 (EnvVarMask)"})
            if not env.get("name"):
                self.say(f"{at}.name", "missing field(s)", f"{KV}:353-354")
            elif env["name"] in reserved_env:
                self.say(f"{at}.name", f"{env['name']!r} is a reserved environment variable", f"{KV}:54-58, 355-359")
            source = env.get("valueFrom") or {}
            self.mask(source, f"{at}.valueFrom", {"configMapKeyRef": f"{FM}:533", "secretKeyRef": f"{FM}:534",
                                                  "*": f"{FM}:525-541 (EnvVarSourceMask)"},
                      {"fieldRef": ("kubernetes.podspec-fieldref", f"{FM}:536-539; {KV}:340"),
                       "resourceFieldRef": ("kubernetes.podspec-fieldref", f"{FM}:536-539; {KV}:340")})
        if not container.get("image"):
            self.say(f"{path}.image", "missing field(s)", f"{KV}:635-636")
        ports = container.get("ports") or []
        for i, item in enumerate(ports if init else ports[:1]):  # k8s_validation.go:781, 802-811
            at = f"{path}.ports[{i}]"
            self.mask(item, at, {"containerPort": f"{FM}:492", "name": f"{FM}:493", "protocol": f"{FM}:494",
                                 "*": f"{FM}:484-502 (ContainerPortMask)"})
            number = item.get("containerPort")
            if number in RESERVED_PORTS:
                self.say(f"{at}.containerPort", f"{number} is a reserved port", f"{KV}:61-67, 817-820")
            if not init and item.get("protocol") not in (None, "", "TCP"):
                self.say(f"{at}.protocol", f"invalid value {item.get('protocol')!r}", f"{KV}:786-789")
            if not init and item.get("name") not in (None, "", "h2c", "http1"):
                self.say(f"{at}.name", f"Port name {item.get('name')} is not allowed: name must be empty, or one of: "
                         "'h2c', 'http1'", f"{KV}:75-79, 791-797")
        self.mask(container.get("resources") or {}, f"{path}.resources",
                  {"limits": f"{FM}:658", "requests": f"{FM}:659", "*": f"{FM}:650-662 (ResourceRequirementsMask)"})
        sc = container.get("securityContext")
        if sc is not None:
            self.security_context(sc, f"{path}.securityContext")
        policy = container.get("terminationMessagePolicy")
        if policy not in (None, "", "File", "FallbackToLogsOnError"):
            self.say(f"{path}.terminationMessagePolicy", f"invalid value {policy!r}", f"{KV}:655-660")
        self.volume_mounts(container.get("volumeMounts") or [], f"{path}.volumeMounts", volumes)

    def security_context(self, sc: Mapping[str, Any], path: str) -> None:
        allowed = dict.fromkeys(("capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup", "runAsNonRoot",
                                 "allowPrivilegeEscalation", "seccompProfile"), f"{FM}:719-731")
        allowed["*"] = f"{FM}:711-742 (SecurityContextMask)"
        self.mask({k: v for k, v in sc.items() if k != "privileged"}, path, allowed)
        if sc.get("privileged") not in (None, False):  # only false may be set (fieldmask.go:733-735)
            self.say(f"{path}.privileged", "must not set the field(s) (only false is allowed)", f"{FM}:733-735")
        caps = sc.get("capabilities")
        if caps:
            self.mask({k: v for k, v in caps.items() if k != "add"}, f"{path}.capabilities",
                      {"drop": f"{FM}:755", "*": f"{FM}:747-768 (CapabilitiesMask)"})
            add = caps.get("add")
            if add and not self.enabled("kubernetes.containerspec-addcapabilities") and not (
                    self.secure_defaults() and list(add) == ["NET_BIND_SERVICE"]):
                self.say(f"{path}.capabilities.add", "must not set the field(s) (config-features "
                         "kubernetes.containerspec-addcapabilities is not enabled)", f"{FM}:757-765")
        for key in ("runAsUser", "runAsGroup"):
            value = sc.get(key)
            if value is not None and not 0 <= int(value) <= 2**31 - 1:
                self.say(f"{path}.{key}", f"{value} out of bounds", f"{KV}:39-40, 687-698")

    def volume_mounts(self, mounts: list[Mapping[str, Any]], path: str,
                      volumes: Mapping[str, Mapping[str, Any]]) -> None:
        seen: set[str] = set()
        for i, mount in enumerate(mounts):
            at = f"{path}[{i}]"
            self.mask(mount, at, {"name": f"{FM}:359", "readOnly": f"{FM}:360", "mountPath": f"{FM}:361",
                                  "subPath": f"{FM}:362", "*": f"{FM}:350-374 (VolumeMountMask)"},
                      {"mountPropagation": ("kubernetes.podspec-volumes-mount-propagation", f"{FM}:363-367")})
            volume = volumes.get(mount.get("name") or "")
            if volume is None:
                self.say(f"{at}.name", "volumeMount has no matching volume", f"{KV}:715-721")
            mount_path = mount.get("mountPath") or ""
            clean = posixpath.normpath(mount_path) if mount_path else ""
            if not mount_path:
                self.say(f"{at}.mountPath", "missing field(s)", f"{KV}:724-725")
            elif clean in ("/", "/dev", "/dev/log"):
                self.say(f"{at}.mountPath", f"mountPath {clean!r} is a reserved path", f"{KV}:44-48, 726-730")
            elif not mount_path.startswith("/"):
                self.say(f"{at}.mountPath", f"invalid value {mount_path!r}", f"{KV}:731-732")
            elif clean in seen:
                self.say(f"{at}.mountPath", f"{mount_path!r} must be unique", f"{KV}:733-735")
            seen.add(clean)
            writable_kind = volume is not None and any(volume.get(k) is not None for k in
                                                       ("emptyDir", "persistentVolumeClaim", "ephemeral"))
            if volume is not None and not writable_kind and not mount.get("readOnly"):
                self.say(f"{at}.readOnly", "volume mount should be readOnly for this type of volume", f"{KV}:741-746")

    def probe(self, probe: Mapping[str, Any] | None, path: str, port: Mapping[str, Any], readiness: bool = False) -> None:
        if probe is None:
            return
        handlers = ("exec", "httpGet", "tcpSocket", "grpc")
        allowed = dict.fromkeys(handlers, f"{FM}:407-410")
        allowed.update(dict.fromkeys(("initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold",
                                      "failureThreshold", "terminationGracePeriodSeconds"), f"{FM}:386-392"))
        allowed["*"] = f"{FM}:379-395 (ProbeMask)"
        self.mask(probe, path, allowed)
        given = [h for h in handlers if probe.get(h) is not None]
        if not given:
            self.say(path, "expected exactly one, got neither: httpGet, tcpSocket, exec, grpc", f"{KV}:924-925")
        elif len(given) > 1:
            self.say(path, f"expected exactly one, got both: {', '.join(given)}", f"{KV}:926-927")
        for kind in ("httpGet", "tcpSocket"):
            action = probe.get(kind)
            if action is None:
                continue
            keep = ("host", "path", "scheme", "httpHeaders", "port") if kind == "httpGet" else ("host", "port")
            self.mask(action, f"{path}.{kind}", {**dict.fromkeys(keep, f"{FM}:440-444, 459-460"),
                                                 "*": f"{FM}:433-463"})
            named = action.get("port")
            if isinstance(named, str) and not named.isdigit() and named != port.get("name"):
                self.say(f"{path}.{kind}.port", f"invalid value {named!r}: Probe port must match container port",
                         f"{KV}:889-893, 903-907")
        if not readiness:
            return
        # k8s_validation.go:828-873; successThreshold 0 is defaulted to 1 by Knative's defaulting webhook first
        period = int(probe.get("periodSeconds") or 0)
        if period < 0:
            self.say(f"{path}.periodSeconds", f"{period} out of bounds", f"{KV}:835-837")
        if int(probe.get("initialDelaySeconds") or 0) < 0:
            self.say(f"{path}.initialDelaySeconds", "out of bounds", f"{KV}:839-841")
        if int(probe.get("successThreshold") or 1) < 1:
            self.say(f"{path}.successThreshold", "out of bounds", f"{KV}:843-845")
        if period == 0:
            for key in ("failureThreshold", "timeoutSeconds"):
                if probe.get(key):
                    self.say(f"{path}.{key}", f"{key} is disallowed when periodSeconds is zero", f"{KV}:848-860")
        else:
            for key in ("timeoutSeconds", "failureThreshold"):
                if int(probe.get(key) or 0) < 1:
                    self.say(f"{path}.{key}", f"{probe.get(key)} out of bounds (>= 1 when periodSeconds is set)",
                             f"{KV}:862-869")


# k8s_validation.go:61-67: networking.BackendHTTPPort, BackendHTTP2Port, QueueAdminPort,
# AutoscalingQueueMetricsPort, UserQueueMetricsPort, runtime.ProfilingDefaultPort (values from knative.dev/networking
# and knative.dev/pkg/profiling, which the reserved set names).
RESERVED_PORTS = frozenset({8012, 8013, 8022, 9090, 9091, 8008})
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_pod_spec(pod_spec: Mapping[str, Any], features: Mapping[str, str] | None = None, minor: int = 23,
                   path: str = "spec.template.spec") -> list[str]:
    """Knative's ``ValidatePodSpec`` (k8s_validation.go:402-447) for a revision template's pod spec."""
    checker = _Checker(features, minor)
    checker.pod_spec(pod_spec, path)
    return checker.problems


def check_service(service: Mapping[str, Any], features: Mapping[str, str] | None = None, minor: int = 23) -> list[str]:
    """Problems Knative's webhook finds in a ``serving.knative.dev/v1`` Service (empty = admitted)."""
    problems: list[str] = []
    if service.get("apiVersion") != "serving.knative.dev/v1" or service.get("kind") != "Service":
        problems.append(f"apiVersion/kind: not a serving.knative.dev/v1 Service ({service.get('apiVersion')}, "
                        f"{service.get('kind')})")
    template = ((service.get("spec") or {}).get("template") or {})
    pod_spec = {k: v for k, v in (template.get("spec") or {}).items()
                # RevisionSpec's own fields beside the inlined PodSpec (serving's revision_types.go)
                if k not in ("containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds",
                             "idleTimeoutSeconds")}
    return problems + check_pod_spec(pod_spec, features, minor)
