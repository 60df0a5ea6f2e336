"""The Helm chart (charts/yolo-v7): lint, render, schema, restricted-v2, and a real install on the test API server.

Without a kubelet no pod ever starts: what is checked on the cluster is that every object is accepted
(server-side dry run and a real `helm install`), that upgrades change the Deployment, that uninstall
removes everything but the CRD, and what the operator's ServiceAccount may do according to the real
RBAC authorizer (`kubectl auth can-i --as=system:serviceaccount:...`). The `helm test` pod's script is
run here as a local process against the API server and a stand-in /healthz.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.cluster.helpers import wait_for
from tests.tools.restricted import assert_restricted_v2, pod_specs

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "yolo-v7"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CRD_NAME = "yolodetectors.detection.yolo-v7.io"
YD = "yolodetectors.detection.yolo-v7.io"
ISVC = "inferenceservices.serving.kserve.io"


def _helm():
    from tests.tools import helm

    try:
        helm.helm_path()
    except Exception as exc:  # noqa: BLE001 - no helm binary here: skip, with the reason
        pytest.skip(f"helm v3.19 unavailable: {exc}")
    return helm


def helm(*args: str, kubeconfig=None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = _helm().run_helm(list(args), kubeconfig=kubeconfig)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(*args: str, namespace: str = "yolo-system", release: str = "yolo") -> list[dict]:
    out = helm("template", release, str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def values_variants() -> list[tuple[str, list[str]]]:
    return [("default", [])] + [(path.name, ["-f", str(path)]) for path in CI_VALUES]


VARIANTS = values_variants()
VARIANT_IDS = [name for name, _ in VARIANTS]


# ----- static: lint, metadata, the one CRD ----------------------------------------------------------
@pytest.mark.parametrize(("name", "args"), VARIANTS, ids=VARIANT_IDS)
def test_helm_lint_strict(name, args):
    proc = helm("lint", "--strict", str(CHART), *args)
    assert "0 chart(s) failed" in proc.stdout


def test_ci_values_cover_both_rbac_modes_and_the_sample():
    names = {p.name for p in CI_VALUES}
    assert {"namespaced-watch-values.yaml", "cluster-wide-values.yaml", "with-sample-values.yaml"} <= names


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "yolo-v7"
    assert chart["version"] == "1.0.0" and str(chart["appVersion"]) == "1.0.0"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in pyproject


def test_the_chart_crd_is_the_repository_crd():
    link = CHART / "crds" / "yolodetector.yaml"
    assert link.is_symlink(), "charts/yolo-v7/crds/yolodetector.yaml must be a symlink to crds/yolodetector.yaml"
    assert link.resolve() == (ROOT / "crds" / "yolodetector.yaml").resolve()
    assert link.read_bytes() == (ROOT / "crds" / "yolodetector.yaml").read_bytes()
    # and helm really loads it through the link
    shown = [d for d in yaml.safe_load_all(helm("show", "crds", str(CHART)).stdout) if d]
    assert shown == [d for d in yaml.safe_load_all((ROOT / "crds" / "yolodetector.yaml").read_text()) if d]


def test_packaged_chart_carries_the_crd_content(tmp_path):
    import tarfile

    helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("yolo-v7-1.0.0.tgz")
    with tarfile.open(archive) as tar:
        member = tar.getmember("yolo-v7/crds/yolodetector.yaml")
        assert member.isfile()  # the file itself, not a dangling link
        assert tar.extractfile(member).read() == (ROOT / "crds" / "yolodetector.yaml").read_bytes()


# ----- rendering: restricted-v2, Deployment, RBAC ------------------------------------------------------
@pytest.mark.parametrize(("name", "args"), VARIANTS, ids=VARIANT_IDS)
def test_every_rendered_pod_is_restricted_v2(name, args):
    docs = render(*args)
    specs = [spec for doc in docs for spec in pod_specs(doc)]
    kinds = sorted(n.split("/")[0] for doc in docs for n, _ in pod_specs(doc))
    assert kinds == ["Deployment", "Pod"], kinds  # the operator and the helm test pod
    for pod_name, spec in (item for doc in docs for item in pod_specs(doc)):
        try:
            assert_restricted_v2(spec)
        except AssertionError as error:
            raise AssertionError(f"{name}: {pod_name}: {error}") from None
    assert len(specs) == 2


def test_deployment_shape():
    (deployment,) = by_kind(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert "command" not in container  # the image's ENTRYPOINT (yolo-v7-operator) runs
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["port"] == "health" and ports["health"] == 8080
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["image"] == "quay.io/yolo-v7/yolo-v7-operator:1.0.0"
    assert pod["serviceAccountName"] == deployment["metadata"]["name"]


def _operator_env(deployment: dict) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    # an empty value is dropped by the API server: {"name": X} means X=""
    return {e["name"]: e.get("value", "") for e in container["env"] if "valueFrom" not in e}


@pytest.mark.parametrize(("name", "args"), VARIANTS, ids=VARIANT_IDS)
def test_operator_reads_the_rendered_settings(name, args):
    """The Deployment's env and args are what yolo_operator's own parsers understand."""
    from yolo_operator.__main__ import parse_args
    from yolo_operator.config import OperatorConfig

    docs = render(*args)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for extra in args[1::2]:
        values = _merge(values, yaml.safe_load(Path(extra).read_text()))
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    config = OperatorConfig.from_env(_operator_env(deployment))
    cli_args, config = parse_args(container.get("args", []), config)
    if values["watch"]["clusterWide"]:
        assert config.namespaces == ()
    else:
        assert config.namespaces == tuple(values["watch"]["namespaces"] or ["yolo-system"])
    image = values["predictor"]["image"]
    expected = (f"{image['repository']}@{image['digest']}" if image["digest"]
                else f"{image['repository']}:{image['tag'] or '1.0.0'}")
    assert config.image == expected
    assert config.baked_variants == tuple(values["predictor"]["bakedVariants"])
    assert config.liveness == "http://0.0.0.0:8080/healthz"
    assert config.resync_seconds == float(values["resyncSeconds"])
    assert config.kserve_mode_names == values["kserve"]["modeNames"]
    assert config.knative_features >= set(values["knative"]["features"])
    assert config.knative_version == values["knative"]["version"]
    assert not cli_args.peering  # standalone: one replica, no peering objects (no RBAC for them either)
    assert cli_args.debug == (values["logLevel"] == "debug")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


FORBIDDEN_RESOURCES = {"secrets", "pods", "deployments", "*", "roles", "rolebindings", "clusterroles",
                       "clusterrolebindings", "serviceaccounts", "configmaps"}


# What the operator may delete: only the companions it owns and removes when the spec no longer asks for them.
DELETABLE = {"poddisruptionbudgets", "networkpolicies", "podmonitors"}


def _aggregated(role: dict) -> bool:
    return any(key.startswith("rbac.authorization.k8s.io/aggregate-to-") for key in role["metadata"]["labels"])


@pytest.mark.parametrize(("name", "args"), VARIANTS, ids=VARIANT_IDS)
def test_rbac_rules_are_least_privilege(name, args):
    docs = render(*args)
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role["rules"]:
            assert not set(rule["resources"]) & FORBIDDEN_RESOURCES, (role["metadata"]["name"], rule)
            assert "*" not in rule["verbs"] and "*" not in rule["apiGroups"]
            if ("delete" in rule["verbs"] or "deletecollection" in rule["verbs"]) and not _aggregated(role):
                assert set(rule["resources"]) <= DELETABLE, (role["metadata"]["name"], rule)
            assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"]
            if role["kind"] == "ClusterRole" and role["metadata"]["name"].endswith("-discovery"):
                assert set(rule["verbs"]) <= {"list", "watch"}  # cluster-scoped reads only
    # the roles for project users: YoloDetectors only, never their status (the operator's)
    for role in filter(_aggregated, by_kind(docs, "ClusterRole")):
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["detection.yolo-v7.io"], rule
            writes = set(rule["verbs"]) - {"get", "list", "watch"}
            assert not writes or rule["resources"] == ["yolodetectors"], rule
    cluster_wide = any("cluster-wide" in a for a in args)
    namespaced_roles = by_kind(docs, "Role")
    writable_cluster_roles = [r for r in by_kind(docs, "ClusterRole")
                              if not r["metadata"]["name"].endswith("-discovery") and not _aggregated(r)]
    if cluster_wide:
        assert not namespaced_roles and len(writable_cluster_roles) == 1
    else:
        assert not writable_cluster_roles
        namespaces = sorted(r["metadata"]["namespace"] for r in namespaced_roles)
        expected = ["yolo-team-a", "yolo-team-b"] if "namespaced-watch" in name else ["yolo-system"]
        assert namespaces == expected
        bindings = by_kind(docs, "RoleBinding")
        assert sorted(b["metadata"]["namespace"] for b in bindings) == expected


def test_operator_metrics_network_policy_and_pod_monitor():
    docs = render()
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = _operator_env(deployment)
    assert env["YOLO_OPERATOR_METRICS_PORT"] == "8081"
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    assert env["YOLO_OPERATOR_CALLER_NAMESPACES"].split(",")[:2] == ["istio-system", "knative-serving"]
    assert not by_kind(docs, "PodMonitor")  # off by default: the CRD may not exist
    (policy,) = by_kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    health, metrics = policy["spec"]["ingress"]
    assert health == {"ports": [{"port": 8080, "protocol": "TCP"}]}  # probes and the helm test pod
    assert metrics["ports"] == [{"port": 8081, "protocol": "TCP"}] and {"podSelector": {}} in metrics["from"]
    (monitor,) = by_kind(render("--set", "metrics.podMonitor.enabled=true", "--set",
                                "metrics.podMonitor.labels.release=prom"), "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    off = render("--set", "metrics.port=0", "--set", "metrics.podMonitor.enabled=true",
                 "--set", "networkPolicy.enabled=false")
    assert not by_kind(off, "PodMonitor") and not by_kind(off, "NetworkPolicy")
    assert _operator_env(by_kind(off, "Deployment")[0])["YOLO_OPERATOR_METRICS_PORT"] == "0"


def test_sample_is_off_by_default_and_renders_when_enabled():
    assert not by_kind(render(), "YoloDetector")
    (sample,) = by_kind(render("--set", "sample.enabled=true"), "YoloDetector")
    assert sample["apiVersion"] == "detection.yolo-v7.io/v1alpha1"
    assert sample["metadata"]["namespace"] == "yolo-system"
    # the operator finds nothing wrong with it either (default and ci sample)
    from yolo_operator.validation import errors, validate

    assert errors(validate(sample["metadata"]["name"], sample["spec"])) == []
    (ci_sample,) = by_kind(render("-f", str(CHART / "ci" / "with-sample-values.yaml")), "YoloDetector")
    assert errors(validate(ci_sample["metadata"]["name"], ci_sample["spec"])) == []


def test_helm_test_pod_runs_the_chart_script():
    (pod,) = by_kind(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-c"]
    assert container["args"][0].rstrip("\n") == (CHART / "files" / "helm-test.py").read_text().rstrip("\n")
    assert container["image"] == "quay.io/yolo-v7/yolo-v7-operator:1.0.0"  # python is in the operator image
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HEALTHZ_URL"] == "http://yolo-yolo-v7.yolo-system.svc:8080/healthz"
    # its own ServiceAccount, bound to nothing (not the operator's, which can write InferenceServices)
    assert pod["spec"]["serviceAccountName"] == "yolo-yolo-v7-test"
    accounts = {sa["metadata"]["name"] for sa in by_kind(render(), "ServiceAccount")}
    assert accounts == {"yolo-yolo-v7", "yolo-yolo-v7-test"}
    bound = {subject["name"] for kind in ("RoleBinding", "ClusterRoleBinding") for b in by_kind(render(), kind)
             for subject in b["subjects"]}
    assert "yolo-yolo-v7-test" not in bound
    (service,) = by_kind(render(), "Service")
    assert service["metadata"]["name"] == "yolo-yolo-v7" and service["spec"]["ports"][0]["port"] == 8080


@pytest.mark.cluster
def test_notes_show_a_first_kubectl_apply(kube_bare):
    # NOTES.txt is rendered only by install/upgrade (a dry run still asks the API server for its version)
    out = helm("install", "yolo", str(CHART), "--namespace", "yolo-system", "--dry-run=client",
               kubeconfig=kube_bare.kubeconfig).stdout
    notes = out.split("NOTES:", 1)[1]
    assert "kubectl apply -n yolo-system -f -" in notes and "kind: YoloDetector" in notes
    snippet = notes.split("cat <<'YAML' | kubectl apply -n yolo-system -f -\n", 1)[1].split("  YAML", 1)[0]
    detector = yaml.safe_load("\n".join(line[2:] for line in snippet.splitlines()))
    assert detector["apiVersion"] == "detection.yolo-v7.io/v1alpha1" and detector["spec"]["variant"] == "yolov7"


# ----- the values schema ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "replicaCount=abc"], "replicaCount"),
        (["--set", "replicaCount=2"], "replicaCount"),
        (["--set", "replicaCuont=1"], "replicaCuont"),
        (["--set", "watch.namespace=foo"], "namespace"),
        (["--set", "watch.clusterWide=maybe"], "clusterWide"),
        (["--set", "healthPort=80"], "healthPort"),
        (["--set", "logLevel=verbose"], "logLevel"),
        (["--set", "image.digest=latest"], "digest"),
        (["--set", "predictor.bakedVariants={yolov8}"], "bakedVariants"),
        (["--set", "sample.spec.varient=yolov7"], "varient"),
        (["--set", "watch.namespaces={Bad_Name}"], "namespaces"),
    ],
)
def test_schema_rejects_bad_values(args, needle):
    proc = helm("template", "yolo", str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr


def _walk_objects(node: dict, path: str = ""):
    if node.get("type") == "object" or "properties" in node:
        yield path or "/", node
    for key, sub in (node.get("properties") or {}).items():
        yield from _walk_objects(sub, f"{path}/{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk_objects(node["items"], f"{path}[]")


# Objects whose content is passed through to Kubernetes as given (the API server validates it) or that
# Helm owns: documented in values.schema.json's descriptions.
OPEN_OBJECTS = {"/global", "/affinity/nodeAffinity", "/affinity/podAffinity", "/affinity/podAntiAffinity"}


def test_schema_closes_every_object():
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in _walk_objects(schema):
        if path in OPEN_OBJECTS or path.startswith("/sample/spec/"):
            continue
        extra = node.get("additionalProperties")
        assert extra is False or isinstance(extra, dict), f"{path}: additionalProperties must be false (or typed map)"
        if isinstance(extra, dict):  # a string map (labels, annotations, nodeSelector, resource lists)
            assert not node.get("properties"), path


def test_schema_sample_fields_are_the_crds():
    schema = json.loads((CHART / "values.schema.json").read_text())
    crd = yaml.safe_load((ROOT / "crds" / "yolodetector.yaml").read_text())
    crd_fields = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert set(schema["properties"]["sample"]["properties"]["spec"]["properties"]) == set(crd_fields)


def test_every_value_is_documented():
    """cert-manager style: each key in values.yaml has a comment right above it, except the literal content of
    resources and sample.spec (documented by their parent's comment)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-") or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        key = stripped.split(":", 1)[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if path.startswith(("resources.", "sample.spec.")):
            continue
        if not lines[index - 1].strip().startswith("#"):
            undocumented.append(path)
    assert not undocumented, undocumented


# ----- on the API server -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crd_installed(kube_bare, request):
    """The cluster with this chart's CRD (helm would install it too, but only if absent), and KServe's
    InferenceService CRD when the shared fixtures have it (else RBAC questions about it go by
    SubjectAccessReview, see _can_i)."""
    try:
        cluster = request.getfixturevalue("kube")
    except pytest.skip.Exception:
        cluster = kube_bare
    cluster.install_crd(ROOT / "crds" / "yolodetector.yaml")
    return cluster


def _ensure_namespace(kube, name: str) -> bool:
    """Create namespace ``name`` unless it exists; whether it was created here."""
    if kube.kubectl("get", "namespace", name, check=False).returncode == 0:
        return False
    return kube.kubectl("create", "namespace", name, check=False).returncode == 0


@pytest.fixture(scope="module")
def team_namespaces(crd_installed):
    """The namespaces ci/namespaced-watch-values.yaml names (a Role cannot be made in a missing one)."""
    names = ("yolo-team-a", "yolo-team-b")
    created = [ns for ns in names if _ensure_namespace(crd_installed, ns)]
    yield names
    for ns in created:
        crd_installed.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


@pytest.mark.cluster
@pytest.mark.parametrize(("name", "args"), VARIANTS, ids=VARIANT_IDS)
def test_rendered_chart_passes_server_side_dry_run(crd_installed, team_namespaces, namespace, name, args):
    kube = crd_installed
    release = "r" + uuid.uuid4().hex[:6]
    out = helm("template", release, str(CHART), "--namespace", namespace, "--include-crds", *args).stdout
    # Pods are admitted only when their ServiceAccount exists, which a dry run never creates: make it first.
    kube.kubectl("create", "serviceaccount", f"{release}-yolo-v7", "-n", namespace)
    kube.kubectl("create", "serviceaccount", f"{release}-yolo-v7-test", "-n", namespace)  # the helm test pod's
    # no -n: every namespaced object the chart renders names its namespace itself
    proc = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=out, check=False)
    assert proc.returncode == 0, proc.stderr
    applied = [line for line in proc.stdout.splitlines() if line.strip()]
    assert any(line.startswith("deployment.apps/") for line in applied), applied
    if "with-sample" in name:
        assert any(line.startswith("yolodetector.detection.yolo-v7.io/") for line in applied), applied


def _deployment(kube, namespace: str, name: str) -> dict | None:
    proc = kube.kubectl("get", "deployment", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _can_i(kube, namespace: str, sa: str, verb: str, resource: str, where: str, subresource: str = "") -> bool:
    """``kubectl auth can-i`` as the ServiceAccount (the real RBAC authorizer).

    kubectl resolves ``resource`` through discovery; for a CRD that is not installed (KServe's, when the
    shared fixtures are absent) it would ask about a wrong group, so then the same question goes to the
    authorizer directly as a SubjectAccessReview with the group spelled out.
    """
    user = f"system:serviceaccount:{namespace}:{sa}"
    args = ["auth", "can-i", verb, resource, f"--as={user}"]
    args += ["--all-namespaces"] if where == "*" else ["-n", where]
    if subresource:
        args.append(f"--subresource={subresource}")
    proc = kube.kubectl(*args, check=False)
    if "doesn't have a resource type" not in proc.stderr:
        answer = proc.stdout.strip()
        assert answer in ("yes", "no"), (args, proc.stdout, proc.stderr)
        return answer == "yes"
    plural, _, group = resource.partition(".")
    attributes = {"verb": verb, "resource": plural, "group": group, "subresource": subresource}
    if where != "*":
        attributes["namespace"] = where
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": user, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                                                "system:authenticated"],
                       "resourceAttributes": attributes}}
    out = kube.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review)).stdout
    return bool(json.loads(out)["status"].get("allowed"))


def _user_can(kube, user: str, verb: str, resource: str, namespace: str, subresource: str = "") -> bool:
    """``kubectl auth can-i`` as a plain user (a project member bound to a default role)."""
    args = ["auth", "can-i", verb, resource, f"--as={user}", "-n", namespace]
    if subresource:
        args.append(f"--subresource={subresource}")
    answer = kube.kubectl(*args, check=False).stdout.strip()
    assert answer in ("yes", "no"), args
    return answer == "yes"


ALLOWED = [
    ("list", YD, ""), ("watch", YD, ""), ("get", YD, ""), ("patch", YD, ""), ("patch", YD, "status"),
    ("update", YD, "finalizers"), ("create", ISVC, ""), ("patch", ISVC, ""), ("get", ISVC, ""),
    ("watch", ISVC, ""), ("create", "events", ""), ("list", "events", ""),
    ("create", "poddisruptionbudgets.policy", ""), ("delete", "poddisruptionbudgets.policy", ""),
    ("patch", "networkpolicies.networking.k8s.io", ""), ("delete", "networkpolicies.networking.k8s.io", ""),
    ("create", "podmonitors.monitoring.coreos.com", ""), ("get", "podmonitors.monitoring.coreos.com", ""),
]
DENIED = [
    ("get", "secrets", ""), ("list", "secrets", ""), ("create", "deployments.apps", ""), ("create", "pods", ""),
    ("delete", YD, ""), ("delete", ISVC, ""), ("create", YD, ""), ("update", "deployments.apps", ""),
    ("create", "rolebindings.rbac.authorization.k8s.io", ""), ("get", "configmaps", ""),
    ("list", "networkpolicies.networking.k8s.io", ""), ("delete", "services", ""),
]


@pytest.mark.cluster
def test_install_upgrade_uninstall(crd_installed, namespace):
    kube = crd_installed
    release = "y" + uuid.uuid4().hex[:6]  # unique: ClusterRoles are cluster-wide names
    fullname = f"{release}-yolo-v7"
    kc = kube.kubeconfig
    # a second namespace the operator must not reach
    other = f"{namespace[:50]}-other"
    _ensure_namespace(kube, other)
    try:
        helm("install", release, str(CHART), "--namespace", namespace, kubeconfig=kc)
        deployment = _deployment(kube, namespace, fullname)
        assert deployment is not None
        assert deployment["spec"]["strategy"]["type"] == "Recreate" and deployment["spec"]["replicas"] == 1
        assert_restricted_v2(deployment["spec"]["template"]["spec"])  # as stored, after API defaulting
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["--verbose"]
        for kind in ("serviceaccount", "service", "role", "rolebinding"):
            kube.kubectl("get", kind, fullname, "-n", namespace)
        kube.kubectl("get", "clusterrole", f"{fullname}-discovery")

        # RBAC, by the real authorizer: namespaced mode
        for verb, resource, sub in ALLOWED:
            assert _can_i(kube, namespace, fullname, verb, resource, namespace, sub), (verb, resource, sub)
        for verb, resource, sub in DENIED:
            assert not _can_i(kube, namespace, fullname, verb, resource, namespace, sub), (verb, resource, sub)
        for verb, resource, sub in ALLOWED:
            assert not _can_i(kube, namespace, fullname, verb, resource, other, sub), ("other ns", verb, resource)
        assert _can_i(kube, namespace, fullname, "list", "customresourcedefinitions.apiextensions.k8s.io", "*")
        assert not _can_i(kube, namespace, fullname, "get", "secrets", "*")

        # the helm test pod's account: discovery only
        for verb, resource, sub in ALLOWED:
            assert not _can_i(kube, namespace, f"{fullname}-test", verb, resource, namespace, sub), ("test", verb)

        # project users: the cluster's default edit/view roles now include YoloDetectors (aggregated ClusterRoles)
        kube.kubectl("create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", namespace)
        kube.kubectl("create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob", "-n", namespace)
        wait_for(lambda: _user_can(kube, "alice", "create", YD, namespace), timeout=30, what="edit aggregated")
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
            assert _user_can(kube, "alice", verb, YD, namespace), ("edit", verb)
        assert not _user_can(kube, "alice", "patch", YD, namespace, "status")  # status is the operator's
        assert not _user_can(kube, "alice", "create", YD, other)
        wait_for(lambda: _user_can(kube, "bob", "list", YD, namespace), timeout=30, what="view aggregated")
        assert _user_can(kube, "bob", "get", YD, namespace)
        for verb in ("create", "patch", "delete"):
            assert not _user_can(kube, "bob", verb, YD, namespace), ("view", verb)

        # upgrade: a changed value changes the Deployment
        generation = deployment["metadata"]["generation"]
        helm("upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
             "--set", "logLevel=debug", "--set", "image.tag=1.0.1", kubeconfig=kc)
        upgraded = _deployment(kube, namespace, fullname)
        (container,) = upgraded["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["--debug"]
        assert container["image"] == "quay.io/yolo-v7/yolo-v7-operator:1.0.1"
        assert upgraded["metadata"]["generation"] > generation
        history = helm("history", release, "--namespace", namespace, "-o", "json", kubeconfig=kc).stdout
        assert [item["revision"] for item in json.loads(history)] == [1, 2]

        # upgrade to cluster-wide: the Role goes, the ClusterRole comes, and the other namespace opens up
        helm("upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values",
             "--set", "watch.clusterWide=true", kubeconfig=kc)
        assert kube.kubectl("get", "role", fullname, "-n", namespace, check=False).returncode != 0
        kube.kubectl("get", "clusterrole", fullname)
        assert _can_i(kube, namespace, fullname, "list", YD, other)
        assert _can_i(kube, namespace, fullname, "create", ISVC, other)
        assert not _can_i(kube, namespace, fullname, "get", "secrets", other)
        assert not _can_i(kube, namespace, fullname, "create", "pods", other)
        env = _operator_env(_deployment(kube, namespace, fullname))
        assert env["YOLO_OPERATOR_NAMESPACES"] == ""
    finally:
        helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s", kubeconfig=kc, check=False)
        kube.kubectl("delete", "namespace", other, "--wait=false", "--ignore-not-found", check=False)

    for name in (f"{fullname}-view", f"{fullname}-edit"):
        assert kube.kubectl("get", "clusterrole", name, check=False).returncode != 0, f"{name} left after uninstall"
    assert kube.kubectl("get", "serviceaccount", f"{fullname}-test", "-n", namespace, check=False).returncode != 0
    for kind, ns in (("deployment", namespace), ("serviceaccount", namespace), ("service", namespace),
                     ("role", namespace), ("rolebinding", namespace), ("clusterrole", None),
                     ("clusterrolebinding", None)):
        names = [fullname, f"{fullname}-discovery"]
        for name in names:
            args = ["get", kind, name] + (["-n", ns] if ns else [])
            assert kube.kubectl(*args, check=False).returncode != 0, f"{kind}/{name} left after uninstall"
    # Helm never deletes CRDs (that would delete every YoloDetector): it stays
    kube.kubectl("get", "crd", CRD_NAME)


@pytest.mark.cluster
def test_namespaced_watch_list_gets_a_role_in_each(crd_installed, namespace):
    kube = crd_installed
    team_a, team_b = f"{namespace[:50]}-a", f"{namespace[:50]}-b"
    for ns in (team_a, team_b):
        _ensure_namespace(kube, ns)
    release = "m" + uuid.uuid4().hex[:6]
    fullname = f"{release}-yolo-v7"
    try:
        helm("install", release, str(CHART), "--namespace", namespace, "--set",
             f"watch.namespaces={{{team_a},{team_b}}}", kubeconfig=kube.kubeconfig)
        for ns in (team_a, team_b):
            assert _can_i(kube, namespace, fullname, "watch", YD, ns)
            assert _can_i(kube, namespace, fullname, "create", ISVC, ns)
            assert not _can_i(kube, namespace, fullname, "get", "secrets", ns)
        # the release namespace is not in the list: nothing there
        assert not _can_i(kube, namespace, fullname, "list", YD, namespace)
        assert _operator_env(_deployment(kube, namespace, fullname))["YOLO_OPERATOR_NAMESPACES"] == f"{team_a},{team_b}"
    finally:
        helm("uninstall", release, "--namespace", namespace, kubeconfig=kube.kubeconfig, check=False)
        for ns in (team_a, team_b):
            kube.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


@pytest.mark.cluster
def test_sample_install_creates_a_valid_yolodetector(crd_installed, namespace):
    kube = crd_installed
    release = "s" + uuid.uuid4().hex[:6]
    try:
        helm("install", release, str(CHART), "--namespace", namespace, "-f",
             str(CHART / "ci" / "with-sample-values.yaml"), kubeconfig=kube.kubeconfig)
        detector = json.loads(kube.kubectl("get", YD, "yolov7-tiny-sample", "-n", namespace, "-o", "json").stdout)
        assert detector["spec"]["variant"] == "yolov7-tiny"
        assert detector["spec"]["thresholds"]["iou"] == 0.45  # the CRD's defaults applied
    finally:
        helm("uninstall", release, "--namespace", namespace, kubeconfig=kube.kubeconfig, check=False)


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):  # quiet
        pass


def _sa_token(kube, namespace: str, sa: str, timeout: float = 30) -> str:
    """The ServiceAccount's token (v1.20: from its token Secret, made by the token controller)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = kube.kubectl("create", "token", sa, "-n", namespace, check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip()
        obj = json.loads(kube.kubectl("get", "serviceaccount", sa, "-n", namespace, "-o", "json").stdout)
        for ref in obj.get("secrets") or ():
            secret = json.loads(kube.kubectl("get", "secret", ref["name"], "-n", namespace, "-o", "json").stdout)
            token = (secret.get("data") or {}).get("token")
            if token:
                return base64.b64decode(token).decode()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no token for serviceaccount {namespace}/{sa}")
        time.sleep(0.5)


def _kubeconfig_server_and_ca(kubeconfig: Path, tmp_path: Path) -> tuple[str, Path | None]:
    config = yaml.safe_load(Path(kubeconfig).read_text())
    current = config.get("current-context")
    context = next(c["context"] for c in config["contexts"] if c["name"] == current) if current else config["contexts"][0]["context"]
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    ca = tmp_path / "ca.crt"
    if "certificate-authority-data" in cluster:
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    elif "certificate-authority" in cluster:
        ca = Path(cluster["certificate-authority"])
    else:
        return cluster["server"], None
    return cluster["server"], ca


@pytest.mark.cluster
def test_helm_test_script_passes_against_the_api_server(crd_installed, namespace, tmp_path):
    """The `helm test` pod's script, run here with the operator's ServiceAccount token and a stand-in /healthz."""
    kube = crd_installed
    release = "t" + uuid.uuid4().hex[:6]
    fullname = f"{release}-yolo-v7"
    helm("install", release, str(CHART), "--namespace", namespace, kubeconfig=kube.kubeconfig)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api, ca = _kubeconfig_server_and_ca(kube.kubeconfig, tmp_path)
        if ca is None:
            pytest.skip("the kubeconfig has no CA to verify the API server with")
        token_file = tmp_path / "token"
        token_file.write_text(_sa_token(kube, namespace, fullname))
        script = CHART / "files" / "helm-test.py"
        env = {**os.environ, "KUBE_API": api, "KUBE_TOKEN_FILE": str(token_file), "KUBE_CA_FILE": str(ca),
               "HEALTHZ_URL": f"http://127.0.0.1:{server.server_address[1]}/healthz", "TEST_TIMEOUT": "5"}
        proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "PASS" in proc.stdout, proc.stdout + proc.stderr
        # and it fails when the operator does not answer
        env["HEALTHZ_URL"] = f"http://127.0.0.1:{server.server_address[1]}/nope"
        env["TEST_TIMEOUT"] = "1"
        proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "did not answer" in proc.stderr
    finally:
        server.shutdown()
        server.server_close()
        helm("uninstall", release, "--namespace", namespace, kubeconfig=kube.kubeconfig, check=False)


def test_install_doc_lists_every_value():
    """docs/install.md's values table names every value (resources and sample.spec as a whole)."""
    doc = (ROOT / "docs" / "install.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and path not in ("resources", "sample.spec"):
                yield from leaves(value, path + ".")
            else:
                yield path

    missing = [path for path in leaves(values) if f"| `{path}` |" not in doc]
    assert not missing, missing
