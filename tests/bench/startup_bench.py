"""Start-up benchmark: the image's entry command as a platform starts it (Cloud Run: no args, ``PORT=8080``,
UID 1001, read-only but /tmp; see tests/tools/container_run.py), CPU, with each fixture checkpoint.

Per run: ``imports_s`` (process start → the start-up log line: interpreter, KServe imports),
``torch_import_s`` (then importing torch and the network code), ``model_load_warmup_s`` (the checkpoint load
and warm-up forward, as the predictor logs it), ``ready_s`` (process start → ``/v2/health/ready`` 200), ``first_answer_s`` (process start → the
first v2 answer for ``bus.jpg``: the platform's cold start), ``warm_ms`` (median of the next few requests,
one at a time), ``rss_mb`` (resident memory after them) and ``peak_rss_mb`` (VmHWM). The two models run
interleaved (A B A B ...) so that other load on the machine hits both alike; medians per model.

``run(out_dir, quick)`` is called by ``python -m tests.bench.run``; ``python -m tests.bench.startup_bench
[--quick]`` runs it alone and prints the JSON.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.conftest import fixtures_root  # noqa: E402
from tests.tools.container_run import run_image, v2_infer  # noqa: E402

MODELS = {"yolov7-tiny": "yolov7-tiny-random.pt", "yolov7": "yolov7-random.pt"}
PLATFORM_ENV = {"PORT": "8080", "K_SERVICE": "yolo-v7", "K_CONFIGURATION": "yolo-v7", "K_REVISION": "yolo-v7-00001"}
IMAGE_USER = 1001
WARM_REQUESTS = 5
# KServe's log format: "2026-11-30 11:15:52.900 <pid> predictor INFO [...] message" (UTC: env -i, no TZ)
LOG_LINE = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) .*?"


def _log_time(log: str, message: str) -> float | None:
    match = re.search(LOG_LINE + re.escape(message), log, re.M)
    if match is None:
        return None
    stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f")
    return stamp.replace(tzinfo=datetime.UTC).timestamp()


def one_start(weights: Path, image: bytes, workdir: Path, torch_free: dict[str, Any] | None = None) -> dict[str, float]:
    """One platform start; ``torch_free``: {"venv_bin", "engines"} — the CPU image (TORCH_FLAVOR=cpu): a venv
    without torch and the build-time export baked beside the weights."""
    extra = {"build_args": {"TORCH_FLAVOR": "cpu"}, **torch_free} if torch_free else {}
    with run_image(platform_env=PLATFORM_ENV, uid=IMAGE_USER, weights=weights, workdir=workdir, **extra) as run:
        result = run.client([v2_infer(image)] * (1 + WARM_REQUESTS))
        if result.ready_at is None or any(a.status != 200 for a in result.answers):
            raise RuntimeError(f"no answer: {run.log_text()[-3000:]}")
        first, *warm = result.answers
        log = run.log_text()
        parsed, model_ready = _log_time(log, "starting model"), _log_time(log, "model 'yolov7' ready")
        loaded_in = re.search(r"\(loaded in ([\d.]+) s\)", log)
        model_s = float(loaded_in.group(1)) if loaded_in else None
        return {
            # where the time goes: interpreter + KServe imports + arguments (→ the "starting model" line);
            # importing torch and the network code (→ the checkpoint load begins); loading the checkpoint and
            # the warm-up forward ("loaded in"); then the server starting to listen (→ ready)
            "imports_s": round(parsed - run.started_at, 2) if parsed else None,
            "torch_import_s": round(model_ready - model_s - parsed, 2) if parsed and model_ready and model_s else None,
            "model_load_warmup_s": model_s,
            "ready_s": round(result.ready_at - run.started_at, 2),
            "first_answer_s": round(first.end - run.started_at, 2),
            "first_request_ms": round((first.end - first.start) * 1000, 1),
            "warm_ms": round(statistics.median((a.end - a.start) * 1000 for a in warm), 1),
            "rss_mb": round(run.rss_bytes() / 2**20, 1),
            "peak_rss_mb": round(run.status_field("VmHWM") / 2**20, 1),
            "isolated": run.isolated,
        }


def run(out_dir: Path | None = None, quick: bool = False, torch_free: bool = False) -> dict[str, Any]:
    """``torch_free``: the CPU image as built now (no torch installed; ONNX Runtime on the build-time export,
    tests/bench/torchfree_bench.py's venv), else the torch environment of this machine."""
    root = fixtures_root() / "yolov7"
    image = (root / "images" / "bus.jpg").read_bytes()
    rounds = 1 if quick else 3
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in MODELS}
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        images: dict[str, dict[str, Any] | None] = {name: None for name in MODELS}
        if torch_free:
            from tests.bench import torchfree_bench

            venv_bin = str(torchfree_bench.ensure_venv().parent)
            for name, file in MODELS.items():
                exported = torchfree_bench.export_model(root / file, Path(tmp) / "export" / name)
                images[name] = {"venv_bin": venv_bin, "engines": exported.parent / ".yolo-v7-engines"}
        for index in range(rounds):
            for name, file in MODELS.items():  # interleaved: A B A B ...
                runs[name].append(one_start(root / file, image, Path(tmp) / f"{name}-{index}", images[name]))
    medians = {name: {key: statistics.median(r[key] for r in rs if r[key] is not None)
                      for key in rs[0] if key != "isolated"} for name, rs in runs.items()}
    return {
        "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "python": platform.python_version()},
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # before, after: others' work
        "how": "entry command, no args, PORT=8080, UID 1001, read-only but /tmp, CPU, fp32, input 640, bus.jpg v2 JSON"
               + ("; the CPU image (TORCH_FLAVOR=cpu): no torch installed, ONNX Runtime on the build-time export"
                  if torch_free else "; torch"),
        "rounds": rounds,
        "median": medians,
        "runs": runs,
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv, torch_free="--torch-free" in sys.argv), indent=2))
