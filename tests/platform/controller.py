"""KServe's InferenceService controller for one namespace of a real kube-apiserver (stand-in; rules in kserve.py).

``KServeController(api_client, profile, namespace)`` polls the namespace's InferenceServices and does what KServe's
controller does with each:

- adds its finalizer, and removes it once the object is being deleted (both are updates that go through the
  admission webhooks: KServe 0.16 refused them when the annotation did not say what its status did);
- RawDeployment/Standard: creates the Deployment, Service and HorizontalPodAutoscaler of ``kserve.raw_objects`` in
  the API server, owned by the InferenceService, so that the API server's own validation judges the pod template,
  then one Pod from the template (the ReplicaSet controller's work; no node runs it): "admitted";
- Serverless/Knative: builds the Knative Service (``kserve.knative_service``) and applies Knative's admission
  (``knative.check_service`` with the profile's config-features; there is no Knative API server here);
- writes the status (``kserve.status``: mode name, observedGeneration, PredictorReady/Ready) only when it changes,
  and a Warning Event about the InferenceService for each failure, as KServe does.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException
from yolo_operator.kube import _message  # the API error's message, as the operator reads it

from tests.platform import knative, kserve

FINALIZER = "inferenceservice.finalizers"
ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")


class KServeController:
    def __init__(self, api_client: client.ApiClient, profile: kserve.Profile, namespace: str,
                 interval: float = 0.3, report_status: bool = True) -> None:
        """``report_status=False``: leave the status to someone who runs the pods (the e2e's LocalKubelet)."""
        self.profile, self.namespace, self.interval = profile, namespace, interval
        self.report_status = report_status
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        # the 1.20 API server serves autoscaling/v2beta2, which this kubernetes client has no typed API for
        self.hpas = dynamic.DynamicClient(api_client).resources.get(api_version="autoscaling/v2beta2",
                                                                     kind="HorizontalPodAutoscaler")
        self.errors: dict[str, str] = {}  # isvc name -> the last failure (what its Warning event says)
        self.refused_finalizer_updates = 0
        self.loop_errors: list[str] = []  # anything else that went wrong in a round (the loop goes on)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"kserve-standin-{namespace}")

    def __enter__(self) -> KServeController:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                items = self.custom.list_namespaced_custom_object(*ISVC[:2], self.namespace, ISVC[2])["items"]
                for isvc in items:
                    self.reconcile(isvc)
            except ApiException:
                pass  # e.g. the namespace is going away
            except Exception as error:  # noqa: BLE001 - KServe's controller retries; one bad round must not end ours
                self.loop_errors = [*self.loop_errors[-4:], repr(error)]
            self._stop.wait(self.interval)

    # ----- one InferenceService ------------------------------------------------------------------------
    def reconcile(self, isvc: dict[str, Any]) -> None:
        meta = isvc["metadata"]
        name = meta["name"]
        finalizers = list(meta.get("finalizers") or [])
        if meta.get("deletionTimestamp"):
            if FINALIZER in finalizers:
                self._set_finalizers(name, [f for f in finalizers if f != FINALIZER])
            return
        if FINALIZER not in finalizers and not self._set_finalizers(name, [*finalizers, FINALIZER]):
            return
        problem = kserve.check_storage_uri(kserve.storage_uri(isvc))
        if not problem:
            if kserve.effective_mode(isvc, self.profile) == "Standard":
                problem = self._raw_deployment(isvc)
            else:
                features = knative.features_with(self.profile.knative_features)
                found = knative.check_service(kserve.knative_service(isvc, self.profile), features,
                                              self.profile.knative_minor)
                problem = "; ".join(found)
        if problem and self.errors.get(name) != problem:
            self._warn(isvc, problem)
        self.errors[name] = problem
        if not self.report_status:
            return
        status = kserve.status(isvc, self.profile, ready=not problem, reason="ReconcileFailed", message=problem,
                               url=f"http://{name}-{self.namespace}.example.com")
        if status != {k: (isvc.get("status") or {}).get(k) for k in status}:
            try:
                self.custom.patch_namespaced_custom_object_status(*ISVC[:2], self.namespace, ISVC[2], name,
                                                                  {"status": status})
            except ApiException:
                pass  # changed meanwhile: next round

    def _set_finalizers(self, name: str, finalizers: list[str]) -> bool:
        try:
            self.custom.patch_namespaced_custom_object(*ISVC[:2], self.namespace, ISVC[2], name,
                                                       {"metadata": {"finalizers": finalizers}})
            return True
        except ApiException as error:
            if error.status == 400:  # the validating webhook refused it
                self.refused_finalizer_updates += 1
            return False

    def _raw_deployment(self, isvc: dict[str, Any]) -> str:
        owner = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": isvc["metadata"]["name"],
                 "uid": isvc["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        deployment, service, hpa = kserve.raw_objects(isvc, self.profile)
        for obj in (deployment, service, hpa):
            obj["metadata"]["ownerReferences"] = [owner]
        try:
            self._apply(deployment, self.apps.read_namespaced_deployment, self.apps.create_namespaced_deployment,
                        self.apps.replace_namespaced_deployment)
            self._apply(service, self.core.read_namespaced_service, self.core.create_namespaced_service, None)
            self._apply(hpa, lambda name, ns: self.hpas.get(name=name, namespace=ns),
                        lambda ns, body: self.hpas.create(body=body, namespace=ns),
                        lambda name, ns, body: self.hpas.replace(body=body, name=name, namespace=ns))
            self._pod(deployment)
        except ApiException as error:
            return f"{error.status} {error.reason}: {_message(error)}"
        return ""

    def _apply(self, obj: dict[str, Any], read, create, replace) -> None:
        name = obj["metadata"]["name"]
        try:
            live = read(name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            create(self.namespace, obj)
            return
        if replace is not None:
            obj["metadata"]["resourceVersion"] = live.metadata.resourceVersion if hasattr(
                live.metadata, "resourceVersion") else live.metadata.resource_version
            replace(name, self.namespace, obj)

    def pod_spec(self, isvc: dict[str, Any]) -> dict[str, Any] | None:
        """The pod template of the Deployment made for ``isvc`` (None until it exists), as a plain dict."""
        try:
            deployment = self.apps.read_namespaced_deployment(kserve.component_name(isvc), self.namespace)
        except ApiException:
            return None
        return self.apps.api_client.sanitize_for_serialization(deployment.spec.template.spec)

    def _pod(self, deployment: dict[str, Any]) -> None:
        """One pod of the current template, as the ReplicaSet controller would create it (old ones go)."""
        template = deployment["spec"]["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{deployment['metadata']['name']}-{digest}"
        selector = f"app={deployment['spec']['selector']['matchLabels']['app']}"
        for pod in self.core.list_namespaced_pod(self.namespace, label_selector=selector).items:
            if pod.metadata.name != name:
                self.core.delete_namespaced_pod(pod.metadata.name, self.namespace, grace_period_seconds=0)
        try:
            self.core.read_namespaced_pod(name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            owner = dict(deployment["metadata"]["ownerReferences"][0])
            self.core.create_namespaced_pod(self.namespace, {
                "metadata": {"name": name, "labels": template["metadata"]["labels"], "ownerReferences": [owner]},
                "spec": template["spec"]})

    def _warn(self, isvc: dict[str, Any], message: str) -> None:
        meta = isvc["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            self.core.create_namespaced_event(self.namespace, {
                "metadata": {"generateName": f"{meta['name']}."},
                "involvedObject": {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                                   "name": meta["name"], "namespace": self.namespace, "uid": meta["uid"]},
                "type": "Warning", "reason": "InternalError", "message": message[:1000],
                "firstTimestamp": now, "lastTimestamp": now, "source": {"component": "kserve-controller-manager"}})
        except ApiException:
            pass
