"""The torch-free CPU server as the CPU image runs it: installed size, cold start and idle memory.

The CPU image's runtime stage (Dockerfile ``predictor-venv-cpu``) is reproduced as a venv holding only
the ``predictor-cpu`` extra's packages (kserve, OpenCV, ONNX Runtime, numpy, pyyaml; no torch at all),
cached in ``~/.cache/yolo-v7/torchfree-venv``. The model is exported with this (torch) environment, as
the image's build stage does. Then, ``--runs`` times: ``python -m predictor`` from that venv (the image's
entry command, the repository on ``PYTHONPATH``) with the exported yolov7-tiny; timed from process start
to ``/v2/health/ready`` answering, and to the first REST v2 answer for bus.jpg; RSS read from /proc after
the answer (idle). Medians, with the load average before and after::

    python -m tests.bench.torchfree_bench --runs 3 --out docs/bench/cpu-torchfree.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path.home() / ".cache" / "yolo-v7" / "torchfree-venv"
EXTRA = "predictor-cpu"


def extra_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"][EXTRA]]


def ensure_venv(venv: Path = VENV, python: str = "python3.11") -> Path:
    """The cached torch-free venv (built once: pip install -c constraints.txt <the extra's requirements>);
    raises RuntimeError when pip cannot install (offline)."""
    stamp = venv / ".requirements.json"
    wanted = json.dumps(extra_requirements() + [(ROOT / "constraints.txt").read_text()])
    if stamp.is_file() and stamp.read_text() == wanted:
        return venv / "bin" / "python"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"),
                           *extra_requirements()], capture_output=True, text=True)
    if done.returncode:
        shutil.rmtree(venv, ignore_errors=True)
        raise RuntimeError(f"pip could not build the torch-free venv: {done.stderr[-800:]}")
    stamp.write_text(wanted)
    return venv / "bin" / "python"


def site_packages_mb(venv: Path) -> float:
    [site] = list((venv / "lib").glob("python3.*/site-packages"))
    out = subprocess.run(["du", "-sk", str(site)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def export_model(weights: Path, folder: Path) -> Path:
    """The checkpoint copied into ``folder`` and exported beside it (.yolo-v7-engines/), as the image's
    build stage does; returns the copied checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / weights.name
    shutil.copy(weights, target)
    subprocess.run([sys.executable, "-m", "predictor.runtimes.export", "--weights", str(target)],
                   check=True, cwd=ROOT, capture_output=True, env={**os.environ, **_isolated(folder)})
    return target


def _isolated(folder: Path) -> dict[str, str]:
    """No other run's export in $TMPDIR or ~/.cache may be found: only the one beside the weights."""
    scratch = folder.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    return {"TMPDIR": str(scratch), "XDG_CACHE_HOME": str(scratch), "HOME": str(scratch)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cold_start(python: Path, weights: Path, image: bytes, *, timeout: float = 120.0) -> dict:
    """One start of the server as the image runs it: seconds to ready and to the first answer, idle RSS."""
    http, grpc = _free_port(), _free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **_isolated(weights.parent),
           "YOLO_DEVICE": "auto", "YOLO_ENGINE": "auto"}  # the image's defaults (Dockerfile ENV)
    body = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                   "data": [base64.b64encode(image).decode()]}]}).encode()
    for decision in weights.parent.rglob("batching-*.json"):  # each start measures, as in the image (whose
        decision.unlink()  # baked engine folder is read-only and whose writable caches start empty)
    start = time.perf_counter()
    process = subprocess.Popen([str(python), "-m", "predictor", "--weights", str(weights), "--http_port", str(http),
                                "--grpc_port", str(grpc)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ready = None
        while time.perf_counter() - start < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited: {process.stdout.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        ready = time.perf_counter() - start
                        break
            except OSError:
                time.sleep(0.02)
        if ready is None:
            raise RuntimeError("not ready in time")
        request = urllib.request.Request(f"http://127.0.0.1:{http}/v2/models/yolov7/infer", data=body,
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.loads(r.read())
        first = time.perf_counter() - start
        time.sleep(1.0)
        meta = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/yolov7", timeout=5).read())
        torch_loaded = _torch_mapped(process.pid)
        return {"ready_s": round(ready, 3), "first_answer_s": round(first, 3), "idle_rss_mb": round(_rss_mb(process.pid), 1),
                "engine": meta["parameters"]["engine"], "torch_loaded": torch_loaded,
                "batching": meta["parameters"].get("batching"),
                "detections": int(next(o for o in answer["outputs"] if o["name"] == "num_detections")["data"][0])}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def _torch_mapped(pid: int) -> bool:
    """Whether any torch library is mapped into the process (it is not even installed in the venv)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--weights", default=str(ROOT.parent / "shared/fixtures/yolov7/yolov7-tiny-random.pt"))
    parser.add_argument("--image", default=str(ROOT.parent / "shared/fixtures/yolov7/images/bus.jpg"))
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    python = ensure_venv()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="torchfree-") as tmp:
        weights = export_model(Path(args.weights), Path(tmp) / "weights")
        model_mb = sum(p.stat().st_size for p in weights.parent.rglob("*") if p.is_file()) / 2**20
        image = Path(args.image).read_bytes()
        runs = [cold_start(python, weights, image) for _ in range(args.runs)]
    median = {key: statistics.median(r[key] for r in runs) for key in ("ready_s", "first_answer_s", "idle_rss_mb")}
    result = {
        "what": "python -m predictor from a venv with only the predictor-cpu extra (no torch), yolov7-tiny exported "
                "to ONNX, engine auto (= onnxruntime there), REST v2 bus.jpg; process start -> ready -> first answer",
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "installed_mb": {"site_packages": round(site_packages_mb(VENV), 1), "model": round(model_mb, 1)},
        "runs": runs,
        "median": median,
        "targets": {"first_answer_s": 3.0, "idle_rss_mb": 600, "installed_mb": 1000},
    }
    result["installed_mb"]["total"] = round(result["installed_mb"]["site_packages"] + model_mb, 1)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
