"""Service benchmark: the real predictor end to end (REST v2, JPEG bytes in), and its overhead.

Starts ``python -m predictor`` (yolov7-tiny fixture checkpoint, native 640 input, CPU unless
``YOLO_BENCH_DEVICE`` says otherwise) and drives it with closed-loop aiohttp clients at concurrency 1, 8
and 32: throughput (requests/s = images/s) and latency p50/p99 per request.

Server overhead = end-to-end latency − the model forward time, both measured in the same run: the
forward time comes from the server itself (same process, same image, same thresholds) — per request
from its ``Server-Timing`` header (``overhead_ms_p50``: the median of latency − forward, robust to other
load on the machine) and as means from the ``yolo_stage_seconds`` histograms (``overhead_ms`` = mean
e2e − mean forward at concurrency 1, one image per forward). The other stages (decode, letterbox, NMS)
come from the same histograms.

``run(out_dir, quick)`` is called by ``python -m tests.bench.run``; ``python -m tests.bench.service_bench
[--quick]`` runs it alone and prints the JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.tools.predictor_server import predictor_server  # noqa: E402

CONCURRENCY = (1, 8, 32)
STAGES = ("decode", "preprocess", "forward", "postprocess")


def _fixtures() -> Path:
    from tests.conftest import fixtures_root

    return fixtures_root() / "yolov7"


def _scrape(client: httpx.Client, url: str) -> dict[str, float]:
    values = {}
    for line in client.get(f"{url}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def _stage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    out = {}
    for stage in STAGES:
        count = after.get(f'yolo_stage_seconds_count{{stage="{stage}"}}', 0) - before.get(
            f'yolo_stage_seconds_count{{stage="{stage}"}}', 0)
        total = after.get(f'yolo_stage_seconds_sum{{stage="{stage}"}}', 0) - before.get(
            f'yolo_stage_seconds_sum{{stage="{stage}"}}', 0)
        out[f"{stage}_ms_mean"] = round(1000 * total / count, 3) if count else None
        out[f"{stage}_count"] = int(count)
    batches = after.get("yolo_batch_size_count", 0) - before.get("yolo_batch_size_count", 0)
    images = after.get("yolo_batch_size_sum", 0) - before.get("yolo_batch_size_sum", 0)
    out["batches"] = int(batches)
    out["mean_batch_size"] = round(images / batches, 2) if batches else None
    return out


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _client(url: str, content: bytes, headers: dict[str, str], concurrency: int, requests: int) -> dict:
    """Closed-loop load: ``concurrency`` workers each send a request, wait for it, send the next.

    The load generator is aiohttp, not httpx: httpx's async connection pool collapses under many
    concurrent uploads (against a do-nothing ASGI app on this machine, 0.5 MB bodies: httpx 591 req/s at
    concurrency 1 but 121 at 64; aiohttp 1,155 and 3,750), which would measure the client, not the server.
    """
    import aiohttp

    latencies: list[float] = []
    overheads: list[float] = []  # per request: latency - its batch's forward (Server-Timing)
    remaining = requests
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                async with session.post(url, data=content, headers=headers) as response:
                    body = await response.read()
                    latencies.append(time.perf_counter() - start)
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {body[:300]!r}")
                    server_timing = response.headers["server-timing"]
                timing = dict(p.strip().split(";dur=") for p in server_timing.split(","))
                overheads.append(latencies[-1] - float(timing["forward"]) / 1000)

        started = time.time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        ended = time.time()
    return {"latencies": latencies, "overheads": overheads, "started": started, "ended": ended}


def _client_process(url: str, content: bytes, headers: dict[str, str], concurrency: int, requests: int) -> dict:
    return asyncio.run(_client(url, content, headers, concurrency, requests))


def _load(url: str, *, content: bytes, headers: dict[str, str], concurrency: int, requests: int,
          processes: int = 1) -> dict:
    """Run the closed-loop clients, split over ``processes`` client processes (one Python process cannot
    drive a fast GPU server: at c64 with 0.5 MB bodies the client itself would be the bottleneck), and
    summarise: throughput over the span from the first start to the last end, latency percentiles."""
    processes = max(1, min(processes, concurrency))
    if processes == 1:
        parts = [asyncio.run(_client(url, content, headers, concurrency, requests))]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        shares = [(concurrency // processes + (i < concurrency % processes),
                   requests // processes + (i < requests % processes)) for i in range(processes)]
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(len, "").result()  # start the workers before the clock does
            futures = [pool.submit(_client_process, url, content, headers, c, r) for c, r in shares]
            parts = [future.result() for future in futures]
    latencies = [value for part in parts for value in part["latencies"]]
    overheads = [value for part in parts for value in part["overheads"]]
    wall = max(part["ended"] for part in parts) - min(part["started"] for part in parts)
    return {
        "concurrency": concurrency,
        "client_processes": processes,
        "requests": len(latencies),
        "throughput_rps": round(len(latencies) / wall, 3),
        "latency_ms_p50": round(1000 * _percentile(latencies, 50), 2),
        "latency_ms_p99": round(1000 * _percentile(latencies, 99), 2),
        "latency_ms_mean": round(1000 * statistics.fmean(latencies), 2),
        "overhead_ms_p50": round(1000 * _percentile(overheads, 50), 2),
    }


def _profile(pid: int, out: Path, url: str, content: bytes, headers: dict[str, str], concurrency: int,
             requests: int, processes: int) -> None:
    """Two more loads at ``concurrency`` under py-spy (``YOLO_BENCH_PYSPY``, default ``py-spy``): all
    samples (``OUT.all.txt``) and only those of the thread holding the GIL (``OUT.gil.txt``), raw
    collapsed stacks per thread. Not part of the measured runs."""
    import subprocess

    spy = os.environ.get("YOLO_BENCH_PYSPY", "py-spy")
    for kind, extra in (("all", []), ("gil", ["--gil"])):
        target = out.with_name(f"{out.stem}.{kind}.txt")
        record = subprocess.Popen([spy, "record", "-p", str(pid), "-r", "250", "-d", "3", "--threads", "--nonblocking",
                                   "-f", "raw", "-o", str(target), *extra],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _load(url, content=content, headers=headers, concurrency=concurrency, requests=requests, processes=processes)
        record.wait(timeout=60)


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    fixtures = _fixtures()
    # Overrides for other machines (the GPU check): weights file, concurrency levels, extra server flags,
    # and the binary tensor extension for every run (no base64/JSON parsing of the image).
    weights = Path(os.environ.get("YOLO_BENCH_WEIGHTS") or fixtures / "yolov7-tiny-random.pt")
    concurrency_levels = tuple(int(c) for c in os.environ.get("YOLO_BENCH_CONCURRENCY", "").split(",") if c) or CONCURRENCY
    server_args = os.environ.get("YOLO_BENCH_SERVER_ARGS", "").split()
    all_binary = os.environ.get("YOLO_BENCH_BINARY") == "1"
    image_path = fixtures / "images" / "bus.jpg"
    if not weights.is_file() or not image_path.is_file():
        return {"skipped": f"fixtures not found under {fixtures} (set YOLO_FIXTURES)"}
    device = os.environ.get("YOLO_BENCH_DEVICE", "cpu")
    jpeg = image_path.read_bytes()
    confidence = 0.25
    json_body = json.dumps({
        "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(jpeg).decode()]}],
        "parameters": {"confidence": confidence},
    }).encode()
    json_headers = {"content-type": "application/json"}
    raw = len(jpeg).to_bytes(4, "little") + jpeg
    header = json.dumps({
        "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"confidence": confidence},
    }).encode()
    binary_body = header + raw
    binary_headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}
    counts = {c: max(5, 2 * c) if quick else max(40, 6 * c) for c in concurrency_levels}
    for pair in os.environ.get("YOLO_BENCH_REQUESTS", "").split(","):  # "1:300,64:4000": enough for a GPU
        if pair:
            level, count = (int(part) for part in pair.split(":"))
            counts[level] = max(level, count)
    client_processes = int(os.environ.get("YOLO_BENCH_CLIENT_PROCESSES", "1"))

    result: dict[str, Any] = {
        "model": weights.name,
        "image": f"{image_path.name} ({len(jpeg)} bytes JPEG, 810x1080)",
        "device": device,
        "input_size": 640,
        "confidence": confidence,
        "protocol": "REST v2 binary tensor extension" if all_binary else "REST v2 JSON (base64 BYTES)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "quick": quick,
        "runs": [],
    }
    with predictor_server(weights, device=device, extra_args=["--enable_latency_logging", "false", *server_args]) as server, \
            httpx.Client(timeout=60) as client:
        url = server.infer_url
        for _ in range(3):  # warm-up
            client.post(url, content=json_body, headers=json_headers).raise_for_status()
        if all_binary:
            json_body, json_headers = binary_body, binary_headers
        for concurrency in concurrency_levels:
            before = _scrape(client, server.http_url)
            stats = _load(url, content=json_body, headers=json_headers, concurrency=concurrency,
                          requests=counts[concurrency], processes=client_processes)
            stats.update(_stage_means(before, _scrape(client, server.http_url)))
            result["runs"].append(stats)
        before = _scrape(client, server.http_url)
        binary = _load(url, content=binary_body, headers=binary_headers, concurrency=1, requests=counts.get(1, 40))
        binary.update(_stage_means(before, _scrape(client, server.http_url)))
        binary["protocol"] = "REST v2 binary tensor extension"
        result["binary_c1"] = binary
        if os.environ.get("YOLO_BENCH_PROFILE"):  # the GPU check: where the server's time goes
            _profile(server.pid, Path(os.environ["YOLO_BENCH_PROFILE"]), url, binary_body, binary_headers,
                     max(concurrency_levels), counts[max(concurrency_levels)], client_processes)
        if os.environ.get("YOLO_BENCH_SERVER_LOG"):  # the GPU check keeps the server's log
            Path(os.environ["YOLO_BENCH_SERVER_LOG"]).write_text(server.log_text())

    c1 = result["runs"][0]
    forward = c1["forward_ms_mean"]
    overhead = c1["latency_ms_mean"] - forward
    image_work = sum(c1[f"{stage}_ms_mean"] or 0 for stage in ("decode", "preprocess", "postprocess"))
    result["overhead_c1"] = {
        "e2e_ms_mean": c1["latency_ms_mean"],
        "forward_ms_mean": forward,
        "overhead_ms": round(overhead, 2),
        "overhead_pct_of_forward": round(100 * overhead / forward, 1),
        # of which: JPEG decode + letterbox + NMS (per-image work any deployment pays) and the rest
        # (HTTP, JSON/base64, KServe routing, batching hand-offs, response encoding, the client itself)
        # per request (latency - its own forward from the Server-Timing header), median: robust to
        # the noise of other processes on a shared machine
        "overhead_ms_p50": c1["overhead_ms_p50"],
        "overhead_p50_pct_of_forward": round(100 * c1["overhead_ms_p50"] / forward, 1),
        "image_work_ms": round(image_work, 2),
        "serving_ms": round(overhead - image_work, 2),
        "serving_pct_of_forward": round(100 * (overhead - image_work) / forward, 1),
        "binary_overhead_ms": round(binary["latency_ms_mean"] - binary["forward_ms_mean"], 2),
        "binary_overhead_pct_of_forward": round(
            100 * (binary["latency_ms_mean"] - binary["forward_ms_mean"]) / binary["forward_ms_mean"], 1),
        "target_pct": 10,
    }
    return result


if __name__ == "__main__":
    out = run(Path("."), "--quick" in sys.argv)
    print(json.dumps(out, indent=2))
