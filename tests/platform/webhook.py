"""KServe's InferenceService admission webhooks, served for a real kube-apiserver (stand-in; rules in kserve.py).

``KServeWebhooks(api_client, profile, namespace)`` starts an HTTPS server on 127.0.0.1 and registers a
MutatingWebhookConfiguration (``default_isvc``, as KServe's ``inferenceservice.kserve-webhook-server.defaulter``)
and a ValidatingWebhookConfiguration (``validate_isvc``) for InferenceServices in namespaces labelled for this
stand-in only, so other tests on the shared cluster are untouched. The API server then calls them on every create
and update, the operator's patches and the controller stand-in's finalizer removal alike.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.platform import kserve
from tests.platform.inmemory import _canonical_resources
from tests.tools.ports import free_port

NAMESPACE_LABEL = "yolo-tests.kserve-standin"


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed serving certificate for 127.0.0.1 (its own CA bundle)."""
    key, cert = directory / "tls.key", directory / "tls.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    return key, cert


def review(body: dict[str, Any], profile: kserve.Profile, mutate: bool) -> dict[str, Any]:
    """An AdmissionReview (admission.k8s.io/v1) answered as KServe's defaulter or validator."""
    request = body["request"]
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    obj = request.get("object") or {}
    if mutate:
        new = kserve.default_isvc(obj, profile)
        _canonical_resources(new)
        ops = [{"op": "add", "path": "/metadata/annotations", "value": new["metadata"]["annotations"]},
               {"op": "add", "path": "/spec", "value": new["spec"]}]
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
    else:
        old = request.get("oldObject") if request.get("operation") == "UPDATE" else None
        try:
            kserve.validate_isvc(obj, old, profile)
        except kserve.Refused as error:
            response.update(allowed=False, status={"code": 400, "message": str(error), "reason": "BadRequest"})
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


class KServeWebhooks:
    def __init__(self, api_client: client.ApiClient, profile: kserve.Profile, namespace: str) -> None:
        self.api, self.profile, self.namespace = api_client, profile, namespace
        self.name = f"yolo-test-kserve-{namespace}"
        self.calls: list[tuple[str, str, bool]] = []  # (path, operation, allowed)
        self._dir = tempfile.TemporaryDirectory()
        self.server: ThreadingHTTPServer | None = None

    def __enter__(self) -> KServeWebhooks:
        key, cert = _certificate(Path(self._dir.name))
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = review(body, owner.profile, mutate=self.path.startswith("/mutate"))
                owner.calls.append((self.path, body["request"].get("operation"), answer["response"]["allowed"]))
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True, name=self.name).start()
        bundle = base64.b64encode(cert.read_bytes()).decode()
        client.CoreV1Api(self.api).patch_namespace(self.namespace,
                                                   {"metadata": {"labels": {NAMESPACE_LABEL: self.namespace}}})
        hook = {
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 10,
            "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: self.namespace}},
            "rules": [{"apiGroups": ["serving.kserve.io"], "apiVersions": ["v1beta1"],
                       "resources": ["inferenceservices"], "operations": ["CREATE", "UPDATE"]}],
        }
        admission = client.AdmissionregistrationV1Api(self.api)
        admission.create_mutating_webhook_configuration({
            "metadata": {"name": self.name}, "webhooks": [{
                **hook, "name": "inferenceservice.kserve-webhook-server.defaulter",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate", "caBundle": bundle}}]})
        admission.create_validating_webhook_configuration({
            "metadata": {"name": self.name}, "webhooks": [{
                **hook, "name": "inferenceservice.kserve-webhook-server.validator",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/validate", "caBundle": bundle}}]})
        return self

    def __exit__(self, *exc: object) -> None:
        admission = client.AdmissionregistrationV1Api(self.api)
        for delete in (admission.delete_mutating_webhook_configuration,
                       admission.delete_validating_webhook_configuration):
            try:
                delete(self.name)
            except client.ApiException:
                pass
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self._dir.cleanup()
