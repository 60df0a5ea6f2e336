"""`helm test` for the yolo-v7 chart: run inside the operator image (stdlib only).

1. The YoloDetector API is served: the API server's discovery for detection.yolo-v7.io/v1alpha1 lists
   yolodetectors (so the CRD is installed and Established).
2. The operator is alive: its /healthz answers 200 (retried until TEST_TIMEOUT seconds).

Environment: HEALTHZ_URL, TEST_TIMEOUT, and (for running it outside a pod) KUBE_API (https://host:port),
KUBE_TOKEN_FILE and KUBE_CA_FILE, which default to the pod's in-cluster ones.
"""

import json
import os
import ssl
import sys
import time
import urllib.request

GROUP_VERSION = "detection.yolo-v7.io/v1alpha1"
PLURAL = "yolodetectors"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def api_base():
    if os.environ.get("KUBE_API"):
        return os.environ["KUBE_API"].rstrip("/")
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def check_crd():
    with open(os.environ.get("KUBE_TOKEN_FILE", SA_DIR + "/token")) as handle:
        token = handle.read().strip()
    context = ssl.create_default_context(cafile=os.environ.get("KUBE_CA_FILE", SA_DIR + "/ca.crt"))
    request = urllib.request.Request(api_base() + "/apis/" + GROUP_VERSION,
                                     headers={"Authorization": "Bearer " + token, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            names = [item["name"] for item in json.load(response).get("resources", [])]
    except Exception as error:  # report any failure the same way
        sys.exit(f"FAIL: the API server does not serve {GROUP_VERSION}: {error}")
    if PLURAL not in names:
        sys.exit(f"FAIL: {GROUP_VERSION} does not list {PLURAL} (got {names})")
    print(f"ok: {GROUP_VERSION}/{PLURAL} is served")


def check_healthz():
    url = os.environ["HEALTHZ_URL"]
    deadline = time.monotonic() + float(os.environ.get("TEST_TIMEOUT", "120"))
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                print(f"ok: {url} answered {response.status}")
                return
        except Exception as error:
            if time.monotonic() > deadline:
                sys.exit(f"FAIL: the operator's {url} did not answer: {error}")
            time.sleep(3)


check_crd()
check_healthz()
print("PASS")
