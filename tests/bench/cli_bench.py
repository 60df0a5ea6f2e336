"""CLI benchmark: ``yolo-v7 detect`` on a video through the predictor, versus the predictor's own
throughput at the same concurrency.

    python -m tests.bench.run --only cli [--quick]

* server: the same frames, JPEG-encoded once up front (as the CLI encodes them, quality 95) and wrapped
  in ready-made v2 JSON bodies, fired by ``concurrency`` threads in a tight loop (httpx) — the most the
  predictor can give a client at that concurrency.
* cli: ``yolo-v7 detect VIDEO --url … --concurrency N --jsonl …`` as a subprocess; frames/s from its own
  summary line (decode + encode + requests + writing, in order), and also over the whole process
  (interpreter start and imports included).
* ratio = cli / server (target ≥ 0.9 for yolov7-tiny on the CPU).
"""

from __future__ import annotations

import base64
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def _video(path: Path, image: Path, frames: int, size: tuple[int, int], fps: float = 25.0) -> None:
    import cv2
    import numpy as np

    base = cv2.resize(cv2.imread(str(image)), size, interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for index in range(frames):
        writer.write(np.roll(base, 4 * index, axis=1))
    writer.release()


def _jpeg_bodies(video: Path, conf: float) -> list[bytes]:
    import cv2

    capture = cv2.VideoCapture(str(video))
    bodies = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        data = cv2.imencode(".jpg", frame, [int(cv2.IMWRITE_JPEG_QUALITY), 95])[1].tobytes()
        bodies.append(json.dumps({
            "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}],
            "parameters": {"confidence": conf},
        }).encode())
    capture.release()
    return bodies


def _server_loop(url: str, bodies: list[bytes], concurrency: int) -> float:
    """Frames/s with ``concurrency`` threads each keeping one request in flight."""
    import httpx

    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency * 2)) as client:
        def post(body: bytes) -> None:
            response = client.post(url, content=body, headers={"content-type": "application/json"})
            response.raise_for_status()

        with ThreadPoolExecutor(concurrency) as pool:
            started = time.perf_counter()
            list(pool.map(post, bodies))
            return len(bodies) / (time.perf_counter() - started)


def _cli(video: Path, url: str, concurrency: int, conf: float, out: Path) -> tuple[float, float, float]:
    """(frames/s from the CLI's summary, frames/s over the whole process, CLI CPU seconds per frame)."""
    command = [sys.executable, "-m", "yolo_cli", "detect", str(video), "--url", url, "--concurrency", str(concurrency),
               "--conf", str(conf), "--jsonl", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise RuntimeError(f"yolo-v7 detect failed ({result.returncode}): {result.stderr[-2000:]}")
    match = re.search(r"(\d+) frames, \d+ detections in [\d.]+ s \(([\d.]+) frames/s\)", result.stderr)
    if not match:
        raise RuntimeError(f"no summary line in: {result.stderr[-1000:]}")
    frames = int(match.group(1))
    return float(match.group(2)), frames / wall, cpu / frames


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO_ROOT))
    from tests.conftest import fixtures_root
    from tests.tools.predictor_server import predictor_server

    weights = fixtures_root() / "yolov7" / "yolov7-tiny-random.pt"
    device = os.environ.get("YOLO_BENCH_DEVICE", "cpu")  # e.g. cuda on a GPU host
    result: dict[str, Any] = {"bench": "cli", "quick": quick, "cpu_count": os.cpu_count()}
    if not weights.is_file():
        result["skipped"] = f"fixture checkpoint not found at {weights}"
        (out_dir / "cli.json").write_text(json.dumps(result, indent=2))
        return result
    frames = 24 if quick else 64
    size = (640, 480)
    input_size = 320 if quick else 640
    concurrencies = [4] if quick else [1, 4]
    conf = 0.25
    repeats = 1 if quick else 2
    result.update({"model": "yolov7-tiny (random weights)", "frames": frames, "frame_size": list(size),
                   "input_size": input_size, "device": device, "conf": conf, "runs": []})
    with tempfile.TemporaryDirectory(prefix="cli-bench-") as tmp:
        video = Path(tmp) / "clip.mp4"
        _video(video, weights.parent / "images" / "bus.jpg", frames, size)
        bodies = _jpeg_bodies(video, conf)
        args = ["--input_size", str(input_size), "--max_batch_size", "8", "--max_batch_delay_ms", "5"]
        with predictor_server(weights, device=device, extra_args=args) as server:
            _server_loop(server.infer_url, bodies[:8], 2)  # warm up
            for concurrency in concurrencies:
                best_server = best_cli = best_wall = 0.0
                cpu_per_frame = float("inf")
                for _ in range(repeats):  # interleaved, best of each: the host is shared
                    best_server = max(best_server, _server_loop(server.infer_url, bodies, concurrency))
                    cli_fps, wall_fps, cpu = _cli(video, server.http_url, concurrency, conf, Path(tmp) / "d.jsonl")
                    best_cli, best_wall = max(best_cli, cli_fps), max(best_wall, wall_fps)
                    cpu_per_frame = min(cpu_per_frame, cpu)
                result["runs"].append({
                    "concurrency": concurrency,
                    "server_frames_per_s": round(best_server, 2),
                    "cli_frames_per_s": round(best_cli, 2),
                    "cli_frames_per_s_with_startup": round(best_wall, 2),
                    "ratio": round(best_cli / best_server, 3),
                    "cli_cpu_ms_per_frame": round(cpu_per_frame * 1000, 1),
                })
    result["target_ratio"] = 0.9
    result["loadavg"] = os.getloadavg()
    (out_dir / "cli.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench-results"), "--quick" in sys.argv),
                     indent=2))
