"""Front-end ceiling: what one request costs the server's CPU when the forward is (almost) free.

The forward is stubbed (``YOLO_TEST_STUB_FORWARD_MS``, a test hook: it sleeps like a device and finds
nothing), so req/s and CPU ms per request measure the front end: parsing, validation, decoding,
letterboxing, batching, answering. Contenders, all up at once and measured interleaved (round r:
``--workers 1``, ``--workers 2``, PyTriton, then round r + 1 ...), medians over the rounds:

* ``workers1`` / ``workers2``: ``python -m predictor --workers N``;
* ``triton``: Triton's C++ front end with a PyTriton Python callable doing the same work (decode, the same
  letterbox, the same stub sleep; :mod:`tests.bench.pytriton_baseline`), in the interpreter named by
  ``YOLO_BENCH_PYTRITON_PYTHON`` (PyTriton's wheel pins its own dependencies: a venv of its own). When it
  cannot start, the JSON says why and the other contenders still run;
* ``before_workers1`` / ``before_workers2`` (only with ``YOLO_BENCH_BEFORE``, a checkout of an earlier
  commit, e.g. ``git archive <commit> | tar -x -C DIR``): that code's predictor, in the same rounds, so a
  change is measured against what it changes under the same load.

Cells: image (``small``: bus.jpg re-encoded to ~21 KB; ``bus``: bus.jpg, 1080 x 810) x protocol (REST v2
JSON with base64, REST v2 binary extension, gRPC raw contents) x concurrency. CPU ms per request = the
server's process tree's CPU time (user + system, every process) over the requests answered. Also: the
mean batch depth per cell (our ``yolo_batch_size``), and the machine's load average before each cell.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CONCURRENCY = (1, 8, 32, 64)
PROTOCOLS = ("rest_json", "rest_binary", "grpc")
STUB_MS = 2.0
MAX_BATCH = 32
SMALL_JPEG_BYTES = 21_000
CELL_SECONDS = 3.0
ROUNDS = 2


def _fixtures() -> Path:
    from tests.conftest import fixtures_root

    return fixtures_root() / "yolov7"


def small_jpeg(jpeg: bytes, target: int = SMALL_JPEG_BYTES) -> bytes:
    """``jpeg`` re-encoded as the largest JPEG at most ``target`` bytes (widths 640 down to 320, quality
    90 down to 30)."""
    import cv2

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    best = b""
    for width in (640, 512, 416, 320):
        resized = cv2.resize(image, (width, round(image.shape[0] * width / image.shape[1])),
                             interpolation=cv2.INTER_AREA)
        for quality in range(90, 25, -5):
            encoded = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
            if len(best) < len(encoded) <= target:
                best = encoded
    if not best:
        raise RuntimeError(f"cannot re-encode the image under {target} bytes")
    return best


def _env_list(name: str, default: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(item for item in os.environ.get(name, "").split(",") if item) or tuple(str(d) for d in default)


# ----- requests --------------------------------------------------------------------------------------
def rest_bodies(jpeg: bytes, shape: list[int], *, binary_output: bool = True) -> dict[str, tuple[bytes, dict[str, str]]]:
    """The v2 request for one image: JSON (base64 BYTES) and the binary extension. ``shape``: ours takes
    ``[1]``, Triton's batching model ``[1, 1]`` (batch, then the model's own dimension). ``binary_output``:
    the binary request asks for ``num_detections`` alone, as binary data (the front-end ceiling); else it
    asks for nothing and gets every output as JSON (the served overhead, ``cpu_serving_bench``)."""
    json_body = json.dumps({"inputs": [{"name": "images", "shape": shape, "datatype": "BYTES",
                                        "data": [base64.b64encode(jpeg).decode()]}]}).encode()
    outputs = {"outputs": [{"name": "num_detections", "parameters": {"binary_data": True}}]} if binary_output else {}
    header = json.dumps({"inputs": [{"name": "images", "shape": shape, "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 4 + len(jpeg)}}], **outputs}).encode()
    binary = header + len(jpeg).to_bytes(4, "little") + jpeg
    return {
        "rest_json": (json_body, {"Content-Type": "application/json"}),
        "rest_binary": (binary, {"Content-Type": "application/octet-stream",
                                 "Inference-Header-Content-Length": str(len(header))}),
    }


async def _rest(url: str, content: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> list[float]:
    import aiohttp

    done: list[float] = []  # latencies
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                start = time.perf_counter()
                async with session.post(url, data=content, headers=headers) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {body[:300]!r}")
                done.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def _grpc(target: str, model: str, jpeg: bytes, shape: list[int], concurrency: int,
                seconds: float) -> list[float]:
    """Closed loop over min(concurrency, 8) channels, each its own TCP connection (front ends share the
    port by SO_REUSEPORT: one connection would reach one front end)."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
    from kserve.protocol.infer_type import serialize_byte_tensor

    raw = serialize_byte_tensor(np.array([jpeg], dtype=object)).item()
    request = pb.ModelInferRequest(
        model_name=model, raw_input_contents=[raw],
        inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=shape)],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="num_detections")],
    )
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(min(concurrency, 8))]
    stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
    done: list[float] = []  # latencies
    deadline = time.monotonic() + seconds

    async def worker(index: int) -> None:
        stub = stubs[index % len(stubs)]
        while time.monotonic() < deadline:
            start = time.perf_counter()
            await stub.ModelInfer(request, timeout=120)
            done.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        for channel in channels:
            await channel.close()
    return done


# ----- servers ---------------------------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
    except psutil.Error:
        pass
    return total


def _scrape_batches(http_url: str) -> tuple[float, float]:
    import httpx

    text = httpx.get(f"{http_url}/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        if line.startswith("yolo_batch_size_sum") or line.startswith("yolo_batch_size_count"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values.get("yolo_batch_size_sum", 0.0), values.get("yolo_batch_size_count", 0.0)


def _triton_env(python: str, repo: Path) -> dict[str, str]:
    """The environment for PyTriton's server. Its Python-backend stub is linked against
    ``libpython3.X.so.1.0`` and takes the first one the loader finds — on Debian the system's (3.11.2) —
    while it runs the standard library of the venv's interpreter (here pyenv's 3.11.7): the mismatch
    fails the model load with ``'_thread.RLock' object has no attribute '_recursion_count'`` (3.11.7's
    ``multiprocessing/resource_tracker.py`` calls what 3.11.2's C ``RLock`` lacks). The interpreter's own
    ``libpython`` first on ``LD_LIBRARY_PATH`` makes the stub's runtime and standard library one version."""
    libdir = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"],
                            capture_output=True, text=True, check=True).stdout.strip()
    env = {**os.environ, "PYTHONPATH": str(repo)}
    if libdir and any(Path(libdir).glob("libpython3*.so.1.0")):
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, (libdir, env.get("LD_LIBRARY_PATH"))))
    return env


@contextlib.contextmanager
def _triton(stub_ms: float):
    """PyTriton's server (HTTP + gRPC ports) in its own interpreter; yields a dict (ports, pid) or the error."""
    python = os.environ.get("YOLO_BENCH_PYTRITON_PYTHON", "")
    if not python:
        yield {"error": "YOLO_BENCH_PYTRITON_PYTHON is not set (a Python with nvidia-pytriton installed)"}
        return
    from tests.tools.ports import free_port_pair

    http_port, grpc_port = free_port_pair()
    repo = Path(__file__).resolve().parents[2]
    log = Path(f"/tmp/pytriton-baseline-{os.getpid()}.log")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [python, "-m", "tests.bench.pytriton_baseline", "--http_port", str(http_port), "--grpc_port",
             str(grpc_port), "--stub_ms", str(stub_ms), "--max_batch_size", str(MAX_BATCH)],
            cwd=repo, stdout=out, stderr=subprocess.STDOUT, env=_triton_env(python, repo))
    try:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                yield {"error": f"PyTriton exited ({process.returncode}): {log.read_text(errors='replace')[-2000:]}"}
                return
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{http_port}/v2/models/yolov7/ready", timeout=5).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            yield {"error": f"PyTriton not ready in 180 s: {log.read_text(errors='replace')[-2000:]}"}
            return
        yield {"http_url": f"http://127.0.0.1:{http_port}", "grpc_target": f"127.0.0.1:{grpc_port}",
               "pid": process.pid}
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)
        if process.poll() is None:
            process.kill()


def _launcher_of(checkout: str) -> list[str]:
    """``python -m predictor`` importing the predictor of another checkout (the server's working directory
    is this one, which ``-m`` would put first on ``sys.path``)."""
    code = (f"import runpy, sys; sys.path[:0] = [{checkout!r}, {checkout + '/operator'!r}]; "
            "runpy.run_module('predictor', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code]


def _measure(server: dict, protocol: str, jpeg: bytes, concurrency: int, seconds: float) -> dict:
    shape = [1] if server.get("ours") else [1, 1]
    bodies = rest_bodies(jpeg, shape)
    before_cpu = _cpu_seconds(server["pid"])
    ours = server.get("ours", False)
    batches_before = _scrape_batches(server["http_url"]) if ours else None
    start = time.perf_counter()
    if protocol == "grpc":
        latencies = asyncio.run(_grpc(server["grpc_target"], "yolov7", jpeg, shape, concurrency, seconds))
    else:
        content, headers = bodies[protocol]
        latencies = asyncio.run(_rest(f"{server['http_url']}/v2/models/yolov7/infer", content, headers,
                                      concurrency, seconds))
    wall = time.perf_counter() - start
    cpu = _cpu_seconds(server["pid"]) - before_cpu
    done = len(latencies)
    result = {"requests": done, "rps": round(done / wall, 1),
              "cpu_ms_per_request": round(1000 * cpu / max(done, 1), 3),
              "latency_ms_p50": round(1000 * statistics.median(latencies), 2) if latencies else None}
    if batches_before is not None:
        total, count = _scrape_batches(server["http_url"])
        result["mean_batch"] = round((total - batches_before[0]) / max(1.0, count - batches_before[1]), 2)
    return result


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    from tests.tools.predictor_server import predictor_server

    fixtures = _fixtures()
    bus = (fixtures / "images" / "bus.jpg").read_bytes()
    images = {"small": small_jpeg(bus), "bus": bus}
    images = {name: images[name] for name in _env_list("YOLO_BENCH_IMAGES", tuple(images))}
    protocols = _env_list("YOLO_BENCH_PROTOCOLS", PROTOCOLS)
    levels = tuple(int(c) for c in _env_list("YOLO_BENCH_CONCURRENCY", ("8", "32") if quick else CONCURRENCY))
    worker_counts = _env_list("YOLO_BENCH_WORKERS", ("1", "2"))
    seconds = 1.0 if quick else float(os.environ.get("YOLO_BENCH_CELL_SECONDS", CELL_SECONDS))
    rounds = 1 if quick else int(os.environ.get("YOLO_BENCH_ROUNDS", ROUNDS))
    stub_ms = float(os.environ.get("YOLO_BENCH_STUB_MS", STUB_MS))  # 0: the real forward (the GPU check)
    args = ["--input_size", "640", "--max_batch_size", str(MAX_BATCH), "--max_batch_delay_ms", "5",
            "--warmup", "false", *os.environ.get("YOLO_BENCH_SERVER_ARGS", "").split()]
    env = {"YOLO_TEST_STUB_FORWARD_MS": str(stub_ms)} if stub_ms > 0 else {}
    weights = os.environ.get("YOLO_BENCH_WEIGHTS") or fixtures / "yolov7-tiny-random.pt"
    device = os.environ.get("YOLO_BENCH_DEVICE", "cpu")
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()}, "stub_forward_ms": stub_ms, "cell_seconds": seconds,
        "rounds": rounds, "image_bytes": {k: len(v) for k, v in images.items()}, "cells": [],
    }
    with contextlib.ExitStack() as stack:
        servers: dict[str, dict] = {}
        for workers in worker_counts:
            running = stack.enter_context(predictor_server(weights, device=device, env=env,
                                                           extra_args=[*args, "--workers", workers]))
            servers[f"workers{workers}"] = {"http_url": running.http_url, "grpc_target": running.grpc_target,
                                            "pid": running.pid, "ours": True}
        before = os.environ.get("YOLO_BENCH_BEFORE", "")
        for workers in worker_counts if before else ():
            running = stack.enter_context(predictor_server(weights, device=device, env=env,
                                                           extra_args=[*args, "--workers", workers],
                                                           launcher=_launcher_of(before)))
            servers[f"before_workers{workers}"] = {"http_url": running.http_url, "grpc_target": running.grpc_target,
                                                   "pid": running.pid, "ours": True}
        triton = stack.enter_context(_triton(stub_ms)) if stub_ms > 0 else {"error": "real forward: no baseline"}
        if "error" in triton:
            result["triton_error"] = triton["error"]
        else:
            servers["triton"] = triton
        for image_name, jpeg in images.items():
            for protocol in protocols:
                for concurrency in levels:
                    samples: dict[str, list[dict]] = {name: [] for name in servers}
                    load = os.getloadavg()[0]
                    for _ in range(rounds):  # interleaved: A B C A B C ...
                        for name, server in servers.items():
                            samples[name].append(_measure(server, protocol, jpeg, concurrency, seconds))
                    cell: dict[str, Any] = {"image": image_name, "protocol": protocol, "concurrency": concurrency,
                                            "load_average_1m": round(load, 2)}
                    for name, runs in samples.items():
                        cell[name] = {key: statistics.median(run[key] or 0 for run in runs) for key in runs[0]}
                    for prefix in ("", "before_"):
                        ours = [name for name in servers if name.startswith(f"{prefix}workers")]
                        if ours:
                            first, last = cell[ours[0]], cell[ours[-1]]
                            cell[f"rps_ratio_{ours[-1]}_over_{ours[0]}"] = round(last["rps"] / max(first["rps"], 1e-9), 3)
                    ours = [name for name in servers if "workers" in name]
                    if "triton" in cell:
                        for name in ours:
                            cell[f"cpu_ratio_{name}_over_triton"] = round(
                                cell[name]["cpu_ms_per_request"] / max(cell["triton"]["cpu_ms_per_request"], 1e-9), 3)
                    print(f"[frontend] {json.dumps(cell)}", file=sys.stderr)
                    result["cells"].append(cell)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "frontend_cells.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench-results")
    print(json.dumps(run(out, "--quick" in sys.argv), indent=1))
