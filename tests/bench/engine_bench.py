"""CPU engine benchmark: every ``--engine`` against today's torch path and against ONNX Runtime /
OpenVINO used directly (the anchors), then each engine served end to end.

1. ``forward``: yolov7-tiny and yolov7 at 640, batch 1 and 8, ``YOLO_BENCH_THREADS`` (default 2)
   threads, contenders interleaved round by round (ABAB...), median ms per batch and ratios:
   ``torch`` (Detector.forward as served today: fused, channels-last, fp32), ``onnxruntime`` /
   ``openvino`` (Detector.forward through our runtimes), ``ort_direct`` (a plain InferenceSession, default
   options, same threads), ``ov_direct`` (a plain compile_model, f32 hint, same threads: OpenVINO pins its
   threads by default) and ``ov_direct_unpinned`` (the same, threads not pinned, as ours), plus
   ``openvino_bf16`` vs ``ov_direct_default`` (OpenVINO's own default precision: bf16 on a bf16 CPU).
   The whole benchmark runs with the predictor's ``OMP_WAIT_POLICY=PASSIVE``; ``openmp`` compares it
   with OpenMP's default spinning (torch, two processes interleaved).
2. ``bf16_agreement``: per variant, the share of fp32 detections (OpenVINO fp32, six golden images,
   conf 0.25 / IoU 0.45) that bf16 finds again (same class, IoU >= 0.5, |Δscore| <= 0.05). Random
   weights exaggerate the drift: their class scores sit within bf16's rounding of each other.
3. ``served``: per engine, a real ``python -m predictor`` (yolov7-tiny, 640, REST v2 JSON, bus.jpg):
   cold start (process start → ready → first answer; first start with an empty engine cache = export
   included, then a restart reading the cache), idle RSS, c1 latency p50 with the served forward
   (``Server-Timing``) against the bare forward of the same engine in a process of its own that does
   nothing else, alternating one served request and one bare forward, c2 and c8 throughput, peak RSS.

``run(out_dir, quick)`` is called by ``python -m tests.bench.run --only engine``. Environment:
``YOLO_BENCH_ENGINE_VARIANTS`` (default ``yolov7-tiny,yolov7``), ``YOLO_BENCH_ENGINE_BATCHES`` (``1,8``),
``YOLO_BENCH_SKIP_FORWARD=1`` (sections 1-2 and ``openmp``), ``YOLO_BENCH_SKIP_SERVED=1``, ``YOLO_BENCH_THREADS``.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

EXPORTED = tuple(e for e in ("onnxruntime", "openvino") if importlib.util.find_spec(e) is not None)


def _fixtures() -> Path:
    from tests.conftest import fixtures_root

    return fixtures_root() / "yolov7"


def _interleaved(fns: dict[str, Callable[[], Any]], warmup: int, repeat: int) -> dict[str, float]:
    from tests.bench.model_bench import _time_interleaved

    return {name: round(t["median_ms"], 2) for name, t in _time_interleaved(fns, warmup=warmup, repeat=repeat).items()}


def _detector(variant: str, cache: Path, engine: str = "torch", precision: str = "fp32"):
    from predictor.engine import Detector
    from predictor.runtimes import attach

    weights = _fixtures() / f"{variant}-random.pt"
    detector = Detector.from_weights(weights, device="cpu")
    attach(detector, engine=engine, weights=weights, precision=precision, cache=cache)
    return detector


def bench_forward(variants: list[str], batches: list[int], threads: int, cache: Path, quick: bool) -> list[dict]:
    import onnxruntime as ort
    import openvino as ov
    import torch

    from predictor.runtimes.export import find_or_export
    from predictor.runtimes.openvino import cpu_supports_bf16

    torch.set_num_threads(threads)
    rows = []
    for variant in variants:
        torch_det = _detector(variant, cache)
        onnx_path = find_or_export(torch_det.model, _fixtures() / f"{variant}-random.pt", 640, cache=cache)
        ours = {engine: _detector(variant, cache, engine) for engine in EXPORTED}
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        ort_direct = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        core = ov.Core()
        ov_direct = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                               "INFERENCE_NUM_THREADS": threads})
        ov_unpinned = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                 "INFERENCE_NUM_THREADS": threads,
                                                                 "ENABLE_CPU_PINNING": False})
        bf16 = cpu_supports_bf16()
        if bf16:
            ours["openvino_bf16"] = _detector(variant, cache, "openvino", "bf16")
            ov_default = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_NUM_THREADS": threads})
        for n in batches:
            x = torch.rand((n, 3, 640, 640)).contiguous(memory_format=torch.channels_last)
            xn = x.contiguous().numpy()
            fns: dict[str, Callable[[], Any]] = {"torch": lambda x=x, det=torch_det: det.forward(x)}
            for name, det in ours.items():
                fns[name] = lambda x=x, det=det: det.forward(x)
            fns["ort_direct"] = lambda xn=xn, session=ort_direct: session.run(None, {"images": xn})
            request = ov_direct.create_infer_request()
            fns["ov_direct"] = lambda xn=xn, r=request: r.infer({0: xn})
            request_unpinned = ov_unpinned.create_infer_request()
            fns["ov_direct_unpinned"] = lambda xn=xn, r=request_unpinned: r.infer({0: xn})
            if bf16:
                request_default = ov_default.create_infer_request()
                fns["ov_direct_default"] = lambda xn=xn, r=request_default: r.infer({0: xn})
            repeat = (2 if n > 1 else 4) if quick else (4 if n > 1 else 8)
            medians = _interleaved(fns, warmup=1, repeat=repeat)
            row = {"variant": variant, "batch": n, "threads": threads, "median_ms": medians, "repeat": repeat,
                   "speedup_vs_torch": {k: round(medians["torch"] / v, 3) for k, v in medians.items()},
                   "ours_vs_direct": {}}
            for engine, anchor in (("onnxruntime", "ort_direct"), ("openvino", "ov_direct"),
                                   ("openvino", "ov_direct_unpinned"), ("openvino_bf16", "ov_direct_default")):
                if engine in medians and anchor in medians:
                    row["ours_vs_direct"][f"{engine}/{anchor}"] = round(medians[engine] / medians[anchor], 3)
            row["loadavg"] = _loadavg()
            rows.append(row)
            print(f"[engine] forward {variant} b{n}: {medians}", file=sys.stderr)
    return rows


def bf16_agreement(variants: list[str], cache: Path) -> dict[str, Any]:
    import torch
    import torchvision

    from predictor.runtimes.openvino import cpu_supports_bf16
    from tests.tools.nms import per_image_nms

    if "openvino" not in EXPORTED or not cpu_supports_bf16():
        return {"skipped": "openvino or a bf16 CPU is missing"}
    out: dict[str, Any] = {"note": "random-weight checkpoints: bf16 drift is exaggerated (near-tied class scores)"}
    for variant in variants:
        with np.load(_fixtures() / "golden" / f"{variant}.npz") as z:
            images = np.stack([z[k] for k in sorted(z.files) if k.endswith(".letterboxed_rgb")])
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous()
        fp32, bf16 = _detector(variant, cache, "openvino"), _detector(variant, cache, "openvino", "bf16")
        found = total = 0
        for i in range(len(x)):
            (a,) = per_image_nms(fp32.forward(x[i : i + 1]), 0.25, 0.45)
            (b,) = per_image_nms(bf16.forward(x[i : i + 1]), 0.25, 0.45)
            total += a.shape[0]
            if a.shape[0] and b.shape[0]:
                iou = torchvision.ops.box_iou(a[:, :4], b[:, :4])
                ok = (iou >= 0.5) & (a[:, None, 5] == b[None, :, 5]) & ((a[:, None, 4] - b[None, :, 4]).abs() <= 0.05)
                found += int(ok.any(1).sum())
        out[variant] = {"fp32_detections": total, "found_by_bf16": found,
                        "agreement": round(found / total, 3) if total else None}
    return out


_OMP_CHILD = """
import sys, time, statistics, torch
from predictor.engine import Detector
d = Detector.from_weights(sys.argv[1], device="cpu")
x = torch.rand(1, 3, 640, 640).contiguous(memory_format=torch.channels_last)
d.forward(x)
for line in sys.stdin:
    t = []
    for _ in range(int(line)):
        s = time.perf_counter(); d.forward(x); t.append((time.perf_counter() - s) * 1000)
    print(statistics.median(t), flush=True)
"""


def bench_openmp(quick: bool) -> dict[str, Any]:
    """yolov7-tiny b1 torch forward in two processes, OpenMP's default (spinning) wait policy against
    ``PASSIVE`` (the predictor's, see ``predictor.__main__.passive_openmp``), blocks interleaved."""
    import subprocess

    weights = str(_fixtures() / "yolov7-tiny-random.pt")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    procs = {name: subprocess.Popen([sys.executable, "-c", _OMP_CHILD, weights], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, env={**env, **extra})
             for name, extra in (("spin_default", {}), ("passive", {"OMP_WAIT_POLICY": "PASSIVE"}))}
    blocks: dict[str, list[float]] = {name: [] for name in procs}
    try:
        for _ in range(3 if quick else 6):
            for name, proc in procs.items():
                proc.stdin.write("4\n")
                proc.stdin.flush()
                blocks[name].append(round(float(proc.stdout.readline()), 1))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(60)
    medians = {name: statistics.median(v) for name, v in blocks.items()}
    return {"block_medians_ms": blocks, "median_ms": medians, "loadavg": _loadavg(),
            "spin_over_passive": round(medians["spin_default"] / medians["passive"], 2)}


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _bare_worker(conn: Any, engine: str, cache: str, threads: int, jpeg: bytes) -> None:
    """A process that only runs the bare forward (the served one's twin): ``n`` forwards per request."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    detector = _detector("yolov7-tiny", Path(cache), engine)
    rgb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    serve_forwards(conn, detector.forward, detector.preprocess([rgb])[0])


def serve_forwards(conn: Any, forward: Callable[[Any], Any], x: Any) -> None:
    """The bare-forward loop of a benchmark's helper process: one warm-up, then for each ``n`` received, ``n``
    timed ``forward(x)`` and their milliseconds sent back; 0 ends it."""
    forward(x)
    while n := conn.recv():
        times = []
        for _ in range(n):
            start = time.perf_counter()
            forward(x)
            times.append((time.perf_counter() - start) * 1000)
        conn.send(times)


def bench_served(threads: int, quick: bool) -> list[dict]:
    import httpx
    import torch

    from tests.bench.service_bench import _load
    from tests.tools.predictor_server import predictor_server

    torch.set_num_threads(threads)
    weights = _fixtures() / "yolov7-tiny-random.pt"
    jpeg = (_fixtures() / "images" / "bus.jpg").read_bytes()
    body = json.dumps({"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                                   "data": [base64.b64encode(jpeg).decode()]}]}).encode()
    headers = {"content-type": "application/json"}
    rows = []
    for engine in ("torch", *EXPORTED):
        cache = Path(tempfile.mkdtemp(prefix=f"bench-{engine}-"))
        env = {"YOLO_ENGINE": engine, "YOLO_ENGINE_CACHE": str(cache), "OMP_NUM_THREADS": str(threads)}
        row: dict[str, Any] = {"engine": engine, "cold_start_s": {}}
        for start_kind in ("first_start", "restart"):  # the first exports into the empty cache
            began = time.perf_counter()
            with predictor_server(weights, extra_args=["--enable_latency_logging", "false"], env=env) as server, \
                    httpx.Client(timeout=120) as client:
                ready = time.perf_counter() - began
                client.post(server.infer_url, content=body, headers=headers).raise_for_status()
                row["cold_start_s"][start_kind] = {"ready": round(ready, 2),
                                                   "first_answer": round(time.perf_counter() - began, 2)}
                if start_kind == "first_start":
                    continue
                row["idle_rss_mb"] = _rss_mb(server.pid)
                parent_end, child_end = multiprocessing.get_context("spawn").Pipe()
                bare = multiprocessing.get_context("spawn").Process(
                    target=_bare_worker, args=(child_end, engine, str(cache), threads, jpeg), daemon=True)
                bare.start()
                served_fw, bare_fw = [], []
                for _ in range(12 if quick else 30):  # alternating: one served request, one bare forward
                    response = client.post(server.infer_url, content=body, headers=headers)
                    timing = dict(p.strip().split(";dur=") for p in response.headers["server-timing"].split(","))
                    served_fw.append(float(timing["forward"]))
                    parent_end.send(1)
                    bare_fw.extend(parent_end.recv())
                parent_end.send(0)
                bare.join(60)
                c1 = _load(server.infer_url, content=body, headers=headers, concurrency=1, requests=8 if quick else 20)
                row["c1"] = c1
                row["served_forward_ms_p50"] = round(statistics.median(served_fw), 2)
                row["bare_forward_ms_p50"] = round(statistics.median(bare_fw), 2)
                row["served_over_bare_forward"] = round(row["served_forward_ms_p50"] / row["bare_forward_ms_p50"], 3)
                row["c1_overhead_pct_of_bare_forward"] = round(
                    100 * (c1["latency_ms_p50"] - row["bare_forward_ms_p50"]) / row["bare_forward_ms_p50"], 1)
                for concurrency in (2, 8):
                    row[f"c{concurrency}"] = _load(server.infer_url, content=body, headers=headers,
                                                   concurrency=concurrency, requests=(3 if quick else 6) * concurrency)
                row["peak_rss_mb"] = _rss_mb(server.pid, "VmHWM")
        print(f"[engine] served {engine}: {row}", file=sys.stderr)
        rows.append(row)
    return rows


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    if not EXPORTED:
        return {"skipped": "neither onnxruntime nor openvino is installed (extra cpu-engines)"}
    if not (_fixtures() / "yolov7-tiny-random.pt").is_file():
        return {"skipped": "fixtures not found (set YOLO_FIXTURES)"}
    variants = [v for v in os.environ.get("YOLO_BENCH_ENGINE_VARIANTS", "yolov7-tiny,yolov7").split(",") if v]
    batches = [int(b) for b in os.environ.get("YOLO_BENCH_ENGINE_BATCHES", "1,8").split(",") if b]
    threads = int(os.environ.get("YOLO_BENCH_THREADS", "2"))
    cache = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    from predictor.__main__ import passive_openmp

    passive_openmp()  # as the predictor runs (before torch loads here); spinning: the ``openmp`` section
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "loadavg_before": _loadavg()},
        "quick": quick,
        "threads": threads,
    }
    if os.environ.get("YOLO_BENCH_SKIP_FORWARD") != "1":
        result["forward"] = bench_forward(variants, batches, threads, cache, quick)
        result["bf16_agreement"] = bf16_agreement(variants, cache)
        result["openmp"] = bench_openmp(quick)
    if os.environ.get("YOLO_BENCH_SKIP_SERVED") != "1":
        result["served"] = bench_served(threads, quick)
    result["machine"]["loadavg_after"] = _loadavg()
    return result


if __name__ == "__main__":
    print(json.dumps(run(Path("."), "--quick" in sys.argv), indent=2))
