"""Thin kopf handlers: validate → build → adopt → create or patch (only when it differs) → status.

Every entry point (a YoloDetector's create / update / resume / resync timer, or any event of an
InferenceService this operator made) runs the same idempotent ``reconcile``. Handlers are attached to a
registry by ``register()`` when the operator starts; importing this module does nothing.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from . import companions, manifests, validation
from . import config as c
from .config import OperatorConfig
from .kube import Kube, api_client
from .metrics import operator_metrics

VALID, READY, PROGRESSING = "Valid", "Ready", "Progressing"


# ----- status ---------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: str, reason: str, message: str, previous: list[Mapping[str, Any]]) -> dict[str, Any]:
    """A condition; keeps the previous lastTransitionTime when its status did not change."""
    before = next((cond for cond in previous if cond.get("type") == kind), None)
    since = before.get("lastTransitionTime") if before and before.get("status") == status else None
    out = {"type": kind, "status": status, "reason": reason, "lastTransitionTime": since or _now()}
    if message:  # an empty string does not survive the trip (the API server stores it as null, then rejects it)
        out["message"] = message
    return out


def _their(isvc: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((cond for cond in (isvc.get("status") or {}).get("conditions") or [] if cond.get("type") == kind), None)


def rollout_state(isvc: Mapping[str, Any] | None, *, knative_missing: bool = False,
                  warning: str = "") -> tuple[str, str, str]:
    """``(Ready status, reason, message)`` for the detector, from KServe's own account of the InferenceService.

    Ready is True only when KServe has reconciled the InferenceService's latest generation
    (``status.observedGeneration == metadata.generation``) and reports both ``Ready`` and its predictor component
    (``PredictorReady``) True: a rollout of a new generation is never reported as the old one's Ready."""
    if isvc is None:
        return "False", "InferenceServiceMissing", "the InferenceService does not exist (yet)"
    if knative_missing:
        return "False", "KnativeNotInstalled", ("deploymentMode Serverless needs Knative Serving, and this cluster "
                                                "does not serve serving.knative.dev: install it, or use RawDeployment")
    generation = (isvc.get("metadata") or {}).get("generation")
    observed = (isvc.get("status") or {}).get("observedGeneration")
    if generation is not None and observed != generation:
        return "Unknown", "KServeReconciling", (f"KServe has not yet reconciled generation {generation} of the "
                                                f"InferenceService (observed: {observed})")
    ready, predictor = _their(isvc, "Ready"), _their(isvc, "PredictorReady")
    if ready is None:
        return "Unknown", "Pending", "waiting for KServe to report the InferenceService's Ready condition"
    status = ready.get("status") or "Unknown"
    if status == "True" and predictor is not None and predictor.get("status") != "True":
        status, ready = "False", predictor
    message = " - ".join(part for part in (ready.get("message") or "", warning if status != "True" else "") if part)
    reason = ready.get("reason") or ("InferenceServiceReady" if status == "True" else "InferenceServiceNotReady")
    return status, reason, message


def ready_condition(isvc: Mapping[str, Any] | None, previous: list[Mapping[str, Any]], *,
                    knative_missing: bool = False, warning: str = "") -> dict[str, Any]:
    status, reason, message = rollout_state(isvc, knative_missing=knative_missing, warning=warning)
    return condition(READY, status, reason, message, previous)


def progressing_condition(ready: Mapping[str, Any], previous: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Progressing: True while KServe works towards the latest spec, False once Ready or when it cannot."""
    if ready["status"] == "True":
        return condition(PROGRESSING, "False", "RolloutComplete", "", previous)
    if ready["reason"] in ("KnativeNotInstalled", "NameConflict", "ApplyFailed"):
        return condition(PROGRESSING, "False", ready["reason"], ready.get("message", ""), previous)
    return condition(PROGRESSING, "True", ready["reason"], ready.get("message", ""), previous)


def _comparable(status: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(status)
    out["conditions"] = [{k: v for k, v in cond.items() if k != "lastTransitionTime"}
                         for cond in status.get("conditions") or []]
    return out


# ----- events -----------------------------------------------------------------------------------------
def post_normal(body: Mapping[str, Any], reason: str, message: str) -> None:
    """A Normal event about the detector (kopf posts it; outside a running operator, e.g. in unit tests, none).
    ``kopf.event``, not ``kopf.info``: the latter obeys ``posting.level`` (WARNING here, so that kopf's own log lines
    do not become events) and would drop it."""
    try:
        kopf.event(dict(body), type="Normal", reason=reason, message=message)
    except LookupError:  # no kopf event queue in this context
        pass


# ----- companions: PodMonitor, PodDisruptionBudget, NetworkPolicy ---------------------------------------
def cluster_problems(kube: Kube, spec: manifests.Spec) -> list[validation.Problem]:
    """What only the cluster can tell about a spec: KEDA must be installed for queue-depth autoscaling (KServe's
    KEDA reconciler creates a keda.sh ScaledObject)."""
    if (spec.get("autoscaling") or {}).get("queueDepth") and not kube.api_group_served(c.KEDA_GROUP):
        return [validation.Problem("autoscaling.queueDepth", "needs KEDA, and this cluster does not serve "
                                                             f"{c.KEDA_GROUP} (see docs/install.md)")]
    return []


def desired_companions(kube: Kube, config: OperatorConfig, body: Mapping[str, Any], spec: manifests.Spec,
                       ) -> list[tuple[companions.Kind, str, dict[str, Any] | None]]:
    """``(kind, name, desired object or None = must not exist)`` for each companion kind the cluster serves."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    out: list[tuple[companions.Kind, str, dict[str, Any] | None]] = []
    pdb_versions = [v for v in c.PDB_VERSIONS if v in kube.served_versions(c.POLICY_GROUP)]
    if pdb_versions:
        out.append((companions.pdb_kind(pdb_versions[0]), name,
                    companions.disruption_budget(name, namespace, spec, pdb_versions[0])))
    out.append((companions.NETWORK_POLICY, name, companions.network_policy(name, namespace, spec, config)))
    if c.MONITORING_VERSION in kube.served_versions(c.MONITORING_GROUP):  # skipped cleanly when absent
        out.append((companions.POD_MONITOR, name, companions.pod_monitor(name, namespace, spec)))
    return out


def apply_companions(kube: Kube, config: OperatorConfig, body: Mapping[str, Any], spec: manifests.Spec,
                     logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Create, patch or delete each companion so that it matches the spec; each is owned by the detector."""
    namespace, uid = body["metadata"]["namespace"], body["metadata"]["uid"]
    for kind, detector, desired in desired_companions(kube, config, body, spec):
        object_name = f"{detector}-predictor"
        live = kube.get_object(kind, namespace, object_name)
        if live is not None and not _owned_by(live, uid):
            logger.warning(f"{kind.kind} {namespace}/{object_name} exists and does not belong to this detector: "
                           "left as it is")
            continue
        if desired is None:
            if live is not None:
                kube.delete_object(kind, namespace, object_name)
                post_normal(body, "Deleted", f"{kind.kind} {object_name} deleted (no longer asked for)")
            continue
        kopf.append_owner_reference(desired, owner=body)  # type: ignore[arg-type]
        if live is None:
            if kube.create_object(kind, desired) is not None:  # None: a concurrent reconcile was first
                post_normal(body, "Created", f"{kind.kind} {object_name} created")
        elif manifests.differs({"metadata": {"labels": desired["metadata"]["labels"]}, "spec": desired["spec"]}, live) \
                or _spec_has_extra(desired["spec"], live.get("spec") or {}):
            kube.patch_object(kind, namespace, object_name, {
                "metadata": {"labels": desired["metadata"]["labels"],
                             "ownerReferences": desired["metadata"]["ownerReferences"]},
                "spec": {**dict.fromkeys(live.get("spec") or {}), **desired["spec"]}})
            post_normal(body, "Updated", f"{kind.kind} {object_name} updated to match the spec")


def _spec_has_extra(desired: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """Whether the live spec has a top-level field the desired one lacks (a manual addition to undo). The API server
    defaults no top-level spec field of these kinds that we leave out (a NetworkPolicy's policyTypes we write), so
    idle resyncs patch nothing (tests/cluster/test_production.py checks it)."""
    return any(key not in desired for key in live)


# ----- reconcile -------------------------------------------------------------------------------------
def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def apply(kube: Kube, desired: Mapping[str, Any], live: Mapping[str, Any] | None,
          logger: logging.Logger | logging.LoggerAdapter, owner_labels: Mapping[str, str] | None = None,
          owner: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """Create ``desired``, or patch the live object where it differs. Returns the live object.

    Labels the operator put there and the spec dropped are removed (``manifests.stale_labels``); the deployment-mode
    annotation is compared as KServe reads it (``manifests.mode_differs``), quantities as quantities."""
    meta = desired["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if live is None:
        created = kube.create_isvc(manifests.without_nulls(desired))
        if created is not None:
            logger.info(f"created InferenceService {namespace}/{name}")
            if owner is not None:
                post_normal(owner, "Created", f"InferenceService {name} created")
            return created
        live = kube.get_isvc(namespace, name)  # 409: it exists after all
        if live is None:
            raise kopf.TemporaryError(f"InferenceService {namespace}/{name} came and went", delay=1)
    labels: dict[str, Any] = dict(meta["labels"])
    labels.update(dict.fromkeys(manifests.stale_labels(labels, live, owner_labels or {})))
    annotations = {k: v for k, v in meta["annotations"].items() if k != c.DEPLOYMENT_MODE_ANNOTATION}
    patch: dict[str, Any] = {
        "metadata": {"labels": labels, "annotations": annotations, "ownerReferences": meta["ownerReferences"]},
        "spec": desired["spec"],
    }
    mode_change = manifests.mode_differs(desired, live)
    if not mode_change and not manifests.differs(patch, live):
        return live
    if mode_change:
        annotations[c.DEPLOYMENT_MODE_ANNOTATION] = meta["annotations"][c.DEPLOYMENT_MODE_ANNOTATION]
    logger.info(f"patching InferenceService {namespace}/{name} to match the YoloDetector")
    patched = kube.patch_isvc(namespace, name, patch)
    if owner is not None:
        post_normal(owner, "Updated", f"InferenceService {name} updated to match the spec (rollout started)")
    return patched


def reconcile(kube: Kube, config: OperatorConfig, body: Mapping[str, Any],
              logger: logging.Logger | logging.LoggerAdapter) -> dict[str, Any]:
    """Bring the detector's InferenceService in line with its spec and write its status. Returns the status.

    The spec is normalised once (``manifests.normalise``) and handed to every check and builder. An invalid spec
    is reported (Valid=False) and not retried: it waits for the next spec change, while the existing
    InferenceService keeps serving the last valid one. Transient API failures raise ``kopf.TemporaryError``
    (kopf retries); a manifest the API server rejects raises ``kopf.PermanentError``.
    """
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    spec = manifests.normalise(body.get("spec"))
    old_status = dict(body.get("status") or {})
    previous = list(old_status.get("conditions") or [])
    if meta.get("deletionTimestamp"):
        return old_status  # the garbage collector takes the InferenceService with it

    live = kube.get_isvc(namespace, name)
    problems = validation.validate(name, spec, config, namespace=namespace, live=live)
    if not validation.errors(problems):
        problems += cluster_problems(kube, spec)
    errors, warnings = validation.errors(problems), validation.warnings(problems)
    status: dict[str, Any] = {"observedGeneration": meta.get("generation"), "inferenceService": name}
    failure: kopf.PermanentError | kopf.TemporaryError | None = None

    if errors:
        message = validation.summary(errors)
        valid = condition(VALID, "False", "InvalidSpec", message, previous)
        ready = _observe(kube, live, spec, previous)
    else:
        valid = condition(VALID, "True", "ValidWithWarnings" if warnings else "Valid",
                          validation.summary(warnings), previous)
        status["model"] = manifests.model_status(spec, config)
        if live is not None and not _owned_by(live, uid):
            message = f"an InferenceService named {name} exists and does not belong to this YoloDetector"
            ready = condition(READY, "False", "NameConflict", message, previous)
            failure = kopf.TemporaryError(message, delay=30)
        else:
            desired = manifests.build_inference_service(name, namespace, spec, config, live)
            # an owner reference only: kopf.adopt would also copy the detector's labels, which KServe passes on
            # to the pod template (a relabelled detector would restart its pods)
            kopf.append_owner_reference(desired, owner=body)  # type: ignore[arg-type]
            try:
                live = apply(kube, desired, live, logger, owner_labels=meta.get("labels") or {}, owner=body)
                ready = _observe(kube, live, spec, previous)
            except (kopf.PermanentError, kopf.TemporaryError) as error:
                ready = condition(READY, "False", "ApplyFailed", str(error), previous)
                failure = error
            else:
                try:  # a companion that fails leaves the InferenceService's account alone: logged, retried
                    apply_companions(kube, config, body, spec, logger)
                except (kopf.PermanentError, kopf.TemporaryError) as error:
                    logger.warning(f"{error} (retried)")
                    failure = kopf.TemporaryError(str(error), delay=30)

    status["conditions"] = [valid, ready, progressing_condition(ready, previous)]
    before = next((p for p in previous if p.get("type") == READY), {})
    if ready["status"] == "True" and before.get("status") != "True":
        post_normal(body, "RolloutComplete", f"InferenceService {name} is Ready (generation {meta.get('generation')})")
    status["url"] = ((live or {}).get("status") or {}).get("url") or None  # None deletes a stale URL
    if _comparable(status) != _comparable({k: old_status.get(k) for k in status}):
        if errors and valid["lastTransitionTime"] != (next((p for p in previous if p.get("type") == VALID), {})
                                                         .get("lastTransitionTime")):
            logger.warning(f"invalid spec, InferenceService left as it is: {valid['message']}")
        kube.patch_detector_status(namespace, name, status)
    if failure is not None:
        raise failure
    return status


def _observe(kube: Kube, live: Mapping[str, Any] | None, spec: manifests.Spec,
             previous: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The Ready condition, with what only the cluster can tell when it is not Ready: whether Knative is
    installed (Serverless), and KServe's latest Warning event about the InferenceService."""
    status, _, _ = rollout_state(live)
    knative_missing, warning = False, ""
    if live is not None and status != "True":
        meta = live["metadata"]
        if manifests.live_mode(live) == c.KNATIVE or manifests.is_serverless(spec):
            try:
                knative_missing = not kube.api_group_served(c.KNATIVE_SERVING_GROUP)
            except kopf.TemporaryError:  # discovery failed this time: say nothing rather than guess
                knative_missing = False
        warning = kube.latest_warning(meta["namespace"], meta["name"])
    return ready_condition(live, previous, knative_missing=knative_missing, warning=warning)


# ----- handlers ------------------------------------------------------------------------------------
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Startup: kopf's bookkeeping in our own annotations, and the API client (the only I/O setup)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.KOPF_ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=c.KOPF_ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # Kubernetes events for warnings and errors only
    # Re-list every watch now and then (the resync timer is the safety net for anything a watch misses).
    settings.watching.server_timeout = max(1, round(memo.config.watch_timeout_seconds))  # the API wants an integer
    settings.watching.client_timeout = memo.config.watch_timeout_seconds + 10
    settings.watching.reconnect_backoff = 1.0
    settings.networking.connect_timeout = 5
    # ride out an API server outage of about five minutes (an upgrade) before giving up and exiting, retrying
    # every 5 s at most so that the watches resume within seconds of the API server's return
    settings.networking.error_backoffs = (1, 1, 2, 3, *([5] * 60))
    settings.execution.max_workers = 8
    memo.kube = Kube(api_client())
    if memo.config.metrics_port:
        try:
            operator_metrics().serve(memo.config.metrics_port)
        except OSError as error:  # a taken port must not stop the operator: it still reconciles
            logger.warning(f"cannot serve /metrics on port {memo.config.metrics_port}: {error}")
    logger.info(f"yolo-v7 operator: image {memo.config.image}, namespaces "
                f"{','.join(memo.config.namespaces) or '(all)'}")


def on_detector(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A YoloDetector was created, changed, found at startup, or is due for a resync."""
    measured_reconcile(memo.kube, memo.config, body, logger)


def measured_reconcile(kube: Kube, config: OperatorConfig, body: Mapping[str, Any],
                       logger: logging.Logger | logging.LoggerAdapter) -> dict[str, Any]:
    """``reconcile``, counted and timed in the operator's metrics."""
    metrics = operator_metrics()
    with metrics.duration.time():
        try:
            status = reconcile(kube, config, body, logger)
        except kopf.TemporaryError as error:
            metrics.reconciles.labels("retry").inc()
            metrics.errors.labels(type(error).__name__).inc()
            raise
        except Exception as error:
            metrics.reconciles.labels("error").inc()
            metrics.errors.labels(type(error).__name__).inc()
            raise
    valid = next((cond for cond in status.get("conditions") or [] if cond.get("type") == VALID), {})
    metrics.reconciles.labels("invalid" if valid.get("status") == "False" else "ok").inc()
    return status


def on_inference_service(event: Mapping[str, Any], body: kopf.Body, name: str, namespace: str, memo: kopf.Memo,
                         logger: kopf.Logger, **_: Any) -> None:
    """Any event of an InferenceService we made (a manual edit, a delete, KServe's status): re-check its owner."""
    owner = (body.get("metadata") or {}).get("labels", {}).get(c.DETECTOR_LABEL) or name
    detector = memo.kube.get_detector(namespace, owner)
    if detector is None:
        return
    try:
        measured_reconcile(memo.kube, memo.config, detector, logger)
    except (kopf.TemporaryError, kopf.PermanentError) as error:
        logger.warning(f"YoloDetector {namespace}/{owner}: {error} (the resync timer retries)")


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> kopf.OperatorRegistry:
    """Attach the handlers to ``registry`` (kept out of import time so that tests and tools stay side-effect free)."""
    detectors: dict[str, Any] = {"group": c.GROUP, "version": c.VERSION, "plural": c.PLURAL, "registry": registry}
    kopf.on.login(registry=registry)(kopf.login_via_client)  # in-cluster or $KUBECONFIG, as the client does
    kopf.on.startup(registry=registry)(configure)
    kopf.on.create(**detectors, id="create")(on_detector)
    kopf.on.update(**detectors, id="update")(on_detector)
    kopf.on.resume(**detectors, id="resume")(on_detector)
    kopf.timer(**detectors, id="resync", interval=config.resync_seconds, initial_delay=config.resync_seconds,
               idle=None)(on_detector)
    kopf.on.event(c.ISVC_GROUP, c.ISVC_VERSION, c.ISVC_PLURAL, registry=registry, id="owned",
                  labels={c.MANAGED_BY_LABEL: c.MANAGED_BY, c.DETECTOR_LABEL: kopf.PRESENT})(on_inference_service)
    return registry
