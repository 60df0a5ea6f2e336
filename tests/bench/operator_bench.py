"""Operator benchmark: how fast a YoloDetector becomes an InferenceService, and what 200 at once cost.

    python -m tests.bench.run --only operator [--quick]

Runs against the test cluster (``tests.tools.kube.ensure_cluster``: $KUBECONFIG, or a local kube-apiserver
from ``make kube-bins``), with the operator as a subprocess (``python -m yolo_operator``) whose RSS is sampled
from /proc. Timings come from a watch on InferenceServices (the moment the API server announces the object
or its change), not from polling. Targets: create → InferenceService p50 ≤ 1 s; 200 detectors reconciled in
≤ 60 s with the operator's RSS ≤ 200 MB.
"""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from yolo_operator import config as c

from tests.cluster.helpers import CRD_PATH, Api, Operator, wait_for
from tests.tools import kube as kt

TARGETS = {"create_p50_s": 1.0, "burst_200_s": 60.0, "peak_rss_mb": 200.0}


class IsvcWatch(threading.Thread):
    """Records when each InferenceService in ``namespace`` first appears, and when its args change."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        super().__init__(daemon=True)
        self.custom = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.added: dict[str, float] = {}
        self.args_seen: dict[tuple[str, str], float] = {}  # (name, an arg) → first time seen
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            stream = watch.Watch()
            try:
                self.ready.set()
                for event in stream.stream(self.custom.list_namespaced_custom_object, c.ISVC_GROUP,
                                           c.ISVC_VERSION, self.namespace, c.ISVC_PLURAL, timeout_seconds=30):
                    now = time.perf_counter()
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    with self.lock:
                        self.added.setdefault(name, now)
                        for arg in obj["spec"]["predictor"]["containers"][0].get("args", []):
                            self.args_seen.setdefault((name, arg), now)
                    if self.stopping.is_set():
                        break
            except Exception:  # noqa: BLE001 - reconnect, as a controller would
                time.sleep(0.2)
            finally:
                stream.stop()

    def wait_added(self, name: str, timeout: float = 30) -> float:
        return wait_for(lambda: self.added.get(name), timeout=timeout, interval=0.005, what=f"ISVC {name}")

    def wait_arg(self, name: str, arg: str, timeout: float = 30) -> float:
        return wait_for(lambda: self.args_seen.get((name, arg)), timeout=timeout, interval=0.005,
                        what=f"{arg} on ISVC {name}")


class RssSampler(threading.Thread):
    def __init__(self, operator: Operator, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.operator, self.interval = operator, interval
        self.peak = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.peak = max(self.peak, self.operator.rss_bytes())
            except (OSError, AssertionError):
                pass
            time.sleep(self.interval)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_s": round(percentile(values, 50), 4), "p99_s": round(percentile(values, 99), 4),
            "max_s": round(max(values), 4), "mean_s": round(statistics.fmean(values), 4)}


def _reconciled(detector: dict[str, Any]) -> bool:
    status = detector.get("status") or {}
    valid = next((x for x in status.get("conditions") or [] if x.get("type") == "Valid"), {})
    return valid.get("status") == "True" and status.get("observedGeneration") == detector["metadata"]["generation"]


def run(out_dir: Path, quick: bool) -> dict:
    sequential = 10 if quick else 50
    burst = 30 if quick else 200
    cluster = kt.ensure_cluster()
    cluster.install_crd(CRD_PATH)
    cluster.install_kserve_crd()
    api_client = cluster.api_client()
    api = Api(api_client)
    core = client.CoreV1Api(api_client)
    namespace = f"bench-operator-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    log_path = Path(out_dir if out_dir else tempfile.gettempdir()) / "operator-bench-operator.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    operator = Operator(cluster.kubeconfig, [namespace], log_path=log_path, resync_seconds=600)
    watcher = IsvcWatch(cluster.api_client(), namespace)
    result: dict[str, Any] = {"quick": quick, "cluster": repr(cluster), "targets": TARGETS}
    try:
        t0 = time.perf_counter()
        operator.start()
        result["operator_start_s"] = round(time.perf_counter() - t0, 2)
        time.sleep(1.0)
        result["idle_rss_mb"] = round(operator.rss_bytes() / 2**20, 1)
        watcher.start()
        watcher.ready.wait(10)
        time.sleep(0.5)

        # 1. create → InferenceService exists, one at a time (after one unmeasured warm-up detector)
        api.create_detector(namespace, "warm-up", {"variant": "yolov7-tiny"})
        watcher.wait_added("warm-up")
        create_latency = []
        for i in range(sequential):
            name = f"seq-{i}"
            t = time.perf_counter()
            api.create_detector(namespace, name, {"variant": "yolov7-tiny"})
            create_latency.append(watcher.wait_added(name) - t)
        result["create_to_isvc"] = summary(create_latency)

        # 2. spec change → InferenceService patched
        update_latency = []
        for i in range(sequential):
            name = f"seq-{i}"
            confidence = round(0.30 + i / 1000, 3)
            t = time.perf_counter()
            api.patch_detector(namespace, name, {"spec": {"thresholds": {"confidence": confidence}}})
            update_latency.append(watcher.wait_arg(name, f"--conf_threshold={confidence}") - t)
        result["spec_change_to_isvc"] = summary(update_latency)

        # 3. a burst: many detectors at once; until every InferenceService exists and every status is written
        sampler = RssSampler(operator)
        sampler.start()
        names = [f"burst-{i}" for i in range(burst)]
        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda n: api.create_detector(namespace, n, {"variant": "yolov7"}), names))
        created_s = time.perf_counter() - t
        for name in names:
            watcher.wait_added(name, timeout=180)
        all_isvcs_s = max(watcher.added[n] for n in names) - t

        def all_reconciled() -> bool:
            items = api.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL)["items"]
            done = sum(1 for d in items if d["metadata"]["name"].startswith("burst-") and _reconciled(d))
            return done == burst

        wait_for(all_reconciled, timeout=180, interval=0.25, what="every burst detector's status")
        reconciled_s = time.perf_counter() - t
        time.sleep(1.0)
        sampler.stopping.set()
        sampler.join()
        isvcs = api.isvcs(namespace)
        result["burst"] = {
            "detectors": burst,
            "all_created_by_client_s": round(created_s, 2),
            "all_isvcs_exist_s": round(all_isvcs_s, 2),
            "all_reconciled_s": round(reconciled_s, 2),
            "peak_rss_mb": round(sampler.peak / 2**20, 1),
            "isvcs_in_namespace": len(isvcs),
            "duplicates": len(isvcs) - len({i["metadata"]["name"] for i in isvcs}),
        }
        result["rss_after_mb"] = round(operator.rss_bytes() / 2**20, 1)
        result["operator_errors_in_log"] = sum(1 for line in operator.log_text().splitlines()
                                               if "[ERROR" in line or "Traceback" in line)
        scale = 200 / burst
        result["verdict"] = {
            "create_p50_ok": result["create_to_isvc"]["p50_s"] <= TARGETS["create_p50_s"],
            "burst_time_ok": result["burst"]["all_reconciled_s"] <= TARGETS["burst_200_s"] / scale,
            "rss_ok": result["burst"]["peak_rss_mb"] <= TARGETS["peak_rss_mb"],
        }
    finally:
        watcher.stopping.set()
        operator.stop()
        try:
            core.delete_namespace(namespace)
        except Exception:  # noqa: BLE001 - best effort
            pass
    if out_dir:
        (Path(out_dir) / "operator-detail.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    ns = parser.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(ns.out, ns.quick), indent=2))
