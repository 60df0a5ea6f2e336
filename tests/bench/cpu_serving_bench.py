"""CPU serving: the batching rule against batching always on, and the served overhead over the bare forward.

1. ``batching`` (yolov7-tiny, 640, REST v2 JSON, bus.jpg), per installed engine: two servers side by side,
   ``before`` (``--max_batch_size 8 --max_batch_delay_ms 5``: batching on, as before the rule) and
   ``after`` (no batching flag: :mod:`predictor.batch_plan` decides), driven in turn, round by round
   (ABAB): c1 p50 latency, c2 and c8 throughput; medians over the rounds and after/before ratios; the
   rule's decision (figures) as the ``after`` server reported it.
2. ``overhead`` (yolov7-tiny and yolov7, 640, bus.jpg, c1), per engine: the served request latency against
   the bare forward of the same engine and threads in a process of its own that does nothing else
   (the same letterboxed bus.jpg), alternating one served request and one bare forward (60 rounds for
   tiny, 12 for yolov7); medians, ``served_over_bare`` (median over median; target: tiny <= 1.20,
   yolov7 <= 1.10) and ``served_over_bare_paired_p50`` (the median of each request over its own round's
   bare forward: a drift of the shared host's speed cancels), with the served stages from
   ``Server-Timing``; per protocol and client (``YOLO_BENCH_SERVING_PROTOCOLS``, default all of
   ``rest-json``, ``rest-binary`` (the JPEG bytes as they are, no base64) through httpx, the same two
   with ``/socket`` (a lean client sending prebuilt bytes, as wrk would: the server's overhead without
   a Python client's) and ``grpc`` (grpcio)), requests of each in turn.

The exported engines serve the ONNX export itself (``--weights model.onnx``: the CPU image's torch-free
path); torch serves the checkpoint. Load averages are recorded before and after each section.
``run(out_dir, quick)`` is called by ``python -m tests.bench.run --only cpu_serving``. Environment:
``YOLO_BENCH_SERVING_ENGINES`` (default: every installed one and torch), ``YOLO_BENCH_SERVING_VARIANTS``
(overhead; default ``yolov7-tiny,yolov7``), ``YOLO_BENCH_SKIP_BATCHING=1``, ``YOLO_BENCH_SKIP_OVERHEAD=1``,
``YOLO_BENCH_THREADS`` (default 2).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

EXPORTED = tuple(e for e in ("onnxruntime", "openvino") if importlib.util.find_spec(e) is not None)
BEFORE_FLAGS = ["--max_batch_size", "8", "--max_batch_delay_ms", "5"]
PROTOCOLS = ("rest-json", "rest-binary", "rest-json/socket", "rest-binary/socket", "grpc")


def _fixtures() -> Path:
    from tests.conftest import fixtures_root

    return fixtures_root() / "yolov7"


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _model(variant: str, engine: str, folder: Path) -> Path:
    """The checkpoint (torch) or its ONNX export with metadata (the exported engines), in ``folder``."""
    weights = folder / f"{variant}-random.pt"
    if not weights.is_file():
        shutil.copy(_fixtures() / weights.name, weights)
    if engine == "torch":
        return weights
    from predictor.engine import Detector
    from predictor.runtimes.export import export_onnx, exported_name, weights_sha256, write_metadata

    detector = Detector.from_weights(weights, device="cpu")
    path = folder / exported_name(weights, weights_sha256(weights), detector.input_size)
    if not path.is_file():  # exported here: never another run's export (nor its cached decisions) elsewhere
        export_onnx(detector.model, detector.input_size, path)
    write_metadata(path, detector)
    return path


def _rest_bodies(jpeg: bytes) -> dict[str, tuple[bytes, dict[str, str]]]:
    """``rest-json`` and ``rest-binary``: the v2 request for bus.jpg, every output as JSON in the answer."""
    from tests.bench.frontend_bench import rest_bodies

    bodies = rest_bodies(jpeg, [1], binary_output=False)
    return {"rest-json": bodies["rest_json"], "rest-binary": bodies["rest_binary"]}


class _SocketClient:
    """A lean HTTP/1.1 client, as wrk is one: the request's bytes built once, sent on one kept-alive socket
    (TCP_NODELAY), the answer read up to its ``Content-Length`` — so that the latency holds the server's
    work and not a Python client's (httpx spends 0.5–1.5 ms per bus.jpg request of its own here)."""

    def __init__(self, host: str, port: int, path: str, body: bytes, headers: dict[str, str]):
        import socket

        head = [f"POST {path} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}",
                *(f"{k}: {v}" for k, v in headers.items())]
        self.request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self) -> str:
        self.sock.sendall(self.request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split()[1] != "200":
            raise RuntimeError(f"HTTP {lines[0]}")
        fields = dict(line.split(":", 1) for line in lines[1:])
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        remaining = int(fields["content-length"]) - len(rest)
        while remaining > 0:
            chunk = self.sock.recv(remaining)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            remaining -= len(chunk)
        return fields["server-timing"]


def _senders(server: Any, http: Any, jpeg: bytes, protocols: list[str]) -> dict[str, Any]:
    """protocol -> a call that sends bus.jpg once and returns the ``Server-Timing`` header (None on gRPC).
    ``rest-json`` and ``rest-binary`` go through httpx; ``rest-json/socket`` and ``rest-binary/socket``
    send the same bytes with :class:`_SocketClient`."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    bodies = _rest_bodies(jpeg)

    def rest(protocol: str):
        if protocol.endswith("/socket"):
            body, headers = bodies[protocol.removesuffix("/socket")]
            return _SocketClient("127.0.0.1", server.http_port, f"/v2/models/{server.model_name}/infer", body,
                                 headers).send

        def send() -> str:
            response = http.post(server.infer_url, content=bodies[protocol][0], headers=bodies[protocol][1])
            response.raise_for_status()
            return response.headers["server-timing"]
        return send

    channel = grpc.insecure_channel(server.grpc_target)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    raw = len(jpeg).to_bytes(4, "little") + jpeg
    request = pb.ModelInferRequest(model_name="yolov7", raw_input_contents=[raw], inputs=[
        pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])])

    def grpc_send() -> None:
        stub.ModelInfer(request, timeout=120)

    return {p: (grpc_send if p == "grpc" else rest(p)) for p in protocols}


@contextlib.contextmanager
def _server(model: Path, engine: str, threads: int, extra: list[str]):
    from tests.tools.predictor_server import predictor_server

    scratch = model.parent / "scratch"  # this run's caches only: the engine choice and batching decisions
    scratch.mkdir(exist_ok=True)
    env = {"YOLO_ENGINE": engine, "OMP_NUM_THREADS": str(threads), "YOLO_ENGINE_CACHE": str(scratch),
           "TMPDIR": str(scratch), "XDG_CACHE_HOME": str(scratch)}
    with predictor_server(model, extra_args=["--enable_latency_logging", "false", *extra], env=env) as server:
        yield server


def bench_batching(engines: list[str], threads: int, folder: Path, quick: bool) -> list[dict]:
    import httpx

    from tests.bench.service_bench import _load

    body, headers = _rest_bodies((_fixtures() / "images" / "bus.jpg").read_bytes())["rest-json"]
    rows = []
    for engine in engines:
        model = _model("yolov7-tiny", engine, folder)
        loads = {"before": _loadavg()}
        with _server(model, engine, threads, BEFORE_FLAGS) as before, _server(model, engine, threads, []) as after:
            with httpx.Client(timeout=60) as http:
                plan = http.get(f"{after.http_url}/v2/models/yolov7").json()["parameters"]["batching"]
            servers = {"before": before, "after": after}
            figures: dict[str, dict[str, list[float]]] = {k: {"c1_p50_ms": [], "c2_rps": [], "c8_rps": []}
                                                          for k in servers}
            for _ in range(2 if quick else 3):
                for name, server in servers.items():  # ABAB
                    load = dict(content=body, headers=headers)
                    figures[name]["c1_p50_ms"].append(
                        _load(server.infer_url, **load, concurrency=1, requests=6 if quick else 12)["latency_ms_p50"])
                    for c in (2, 8):
                        figures[name][f"c{c}_rps"].append(
                            _load(server.infer_url, **load, concurrency=c, requests=(2 if quick else 4) * c)[
                                "throughput_rps"])
        loads["after"] = _loadavg()
        medians = {name: {k: round(statistics.median(v), 2) for k, v in f.items()} for name, f in figures.items()}
        row = {"engine": engine, "variant": "yolov7-tiny", "rule": plan, "rounds": figures, "median": medians,
               "after_over_before": {k: round(medians["after"][k] / medians["before"][k], 3)
                                     for k in medians["before"]},
               "loadavg": loads}
        print(f"[cpu_serving] batching {engine}: {medians} rule {plan}", file=sys.stderr)
        rows.append(row)
    return rows


def _bare_worker(conn: Any, model: str, engine: str, threads: int, jpeg: bytes) -> None:
    """Only the bare forward, on the same engine and threads, on the letterboxed bus.jpg."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from predictor import images

    if engine == "torch":
        import torch

        from predictor.engine import Detector

        torch.set_num_threads(threads)
        detector: Any = Detector.from_weights(model, device="cpu")
    else:
        from predictor.runtimes.detector import ExportedDetector

        detector = ExportedDetector.load(model, engine=engine, threads=threads)
    from tests.bench.engine_bench import serve_forwards

    serve_forwards(conn, detector.forward, detector.preprocess([images.decode_image(jpeg, 40_000_000)])[0])


def bench_overhead(variants: list[str], engines: list[str], threads: int, folder: Path, quick: bool) -> list[dict]:
    import httpx

    jpeg = (_fixtures() / "images" / "bus.jpg").read_bytes()
    protocols = [p for p in os.environ.get("YOLO_BENCH_SERVING_PROTOCOLS", ",".join(PROTOCOLS)).split(",") if p]
    rows = []
    for variant in variants:
        for engine in engines:
            model = _model(variant, engine, folder)
            loads = {"before": _loadavg()}
            spawn = multiprocessing.get_context("spawn")
            parent, child = spawn.Pipe()
            bare = spawn.Process(target=_bare_worker, args=(child, str(model), engine, threads, jpeg), daemon=True)
            bare.start()
            served = {p: [] for p in protocols}
            bare_ms: list[float] = []
            stages = {p: {"decode": [], "preprocess": [], "forward": [], "postprocess": []} for p in protocols}
            with _server(model, engine, threads, []) as server, httpx.Client(timeout=120) as http:
                senders = _senders(server, http, jpeg, protocols)
                n = (8 if quick else 60) if variant == "yolov7-tiny" else (4 if quick else 12)
                for index in range(n + 2):  # two warm-up rounds, then alternate: each protocol once, one bare
                    for protocol, send in senders.items():
                        start = time.perf_counter()
                        header = send()
                        latency = (time.perf_counter() - start) * 1000
                        if index >= 2:
                            served[protocol].append(latency)
                            if header:
                                timing = dict(p.strip().split(";dur=") for p in header.split(","))
                                for stage in stages[protocol]:
                                    stages[protocol][stage].append(float(timing[stage]))
                    parent.send(1)
                    forward = parent.recv()[0]
                    if index >= 2:
                        bare_ms.append(forward)
            parent.send(0)
            bare.join(60)
            loads["after"] = _loadavg()
            bare_p50 = round(statistics.median(bare_ms), 2)
            for protocol in protocols:
                row = {"variant": variant, "engine": engine, "protocol": protocol, "threads": threads,
                       "requests": len(served[protocol]),
                       "served_c1_ms_p50": round(statistics.median(served[protocol]), 2),
                       "bare_forward_ms_p50": bare_p50, "loadavg": loads}
                row["served_over_bare"] = round(row["served_c1_ms_p50"] / bare_p50, 3)
                # each request against the bare forward of its own round: a drift of the host's speed cancels
                row["served_over_bare_paired_p50"] = round(statistics.median(
                    s / b for s, b in zip(served[protocol], bare_ms, strict=True)), 3)
                if stages[protocol]["forward"]:
                    row["served_stages_ms_p50"] = {k: round(statistics.median(v), 2)
                                                   for k, v in stages[protocol].items()}
                    row["served_forward_over_bare"] = round(row["served_stages_ms_p50"]["forward"] / bare_p50, 3)
                row["target"] = 1.20 if variant == "yolov7-tiny" else 1.10
                print(f"[cpu_serving] overhead {variant} {engine}: {row}", file=sys.stderr)
                rows.append(row)
    return rows


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    if not (_fixtures() / "yolov7-tiny-random.pt").is_file():
        return {"skipped": "fixtures not found (set YOLO_FIXTURES)"}
    threads = int(os.environ.get("YOLO_BENCH_THREADS", "2"))
    engines = [e for e in os.environ.get("YOLO_BENCH_SERVING_ENGINES", ",".join((*EXPORTED, "torch"))).split(",") if e]
    variants = [v for v in os.environ.get("YOLO_BENCH_SERVING_VARIANTS", "yolov7-tiny,yolov7").split(",") if v]
    folder = Path(tempfile.mkdtemp(prefix="bench-cpu-serving-"))
    import platform

    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                                          "loadavg_before": _loadavg()}, "quick": quick, "threads": threads}
    try:
        if os.environ.get("YOLO_BENCH_SKIP_BATCHING") != "1":
            result["batching"] = bench_batching(engines, threads, folder, quick)
        if os.environ.get("YOLO_BENCH_SKIP_OVERHEAD") != "1":
            result["overhead"] = bench_overhead(variants, engines, threads, folder, quick)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result["machine"]["loadavg_after"] = _loadavg()
    return result


if __name__ == "__main__":
    out = json.dumps(run(Path("."), "--quick" in sys.argv), indent=1)
    if "--out" in sys.argv:
        Path(sys.argv[sys.argv.index("--out") + 1]).write_text(out + "\n")
    print(out)
