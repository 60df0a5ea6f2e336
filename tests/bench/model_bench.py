"""Model benchmark: network forward speed per variant.

CPU (fp32): our path (BN folded, RepConv re-parameterised — ``fuse=True`` — and channels-last memory, as
the Detector runs it) against the eager *unfused* NCHW network, interleaved in the same run, batch 1 and
8, median of N after warm-up; ms/image and the ratio (plus fused NCHW at batch 1).
CUDA (fp16), when present: :meth:`predictor.engine.Detector.forward` with ``accel`` eager, cudagraph and
compile at batch 1/8/32/64 — latency per batch and images/s.

Weights values do not matter for speed: the fixture checkpoints are used when present, otherwise a
randomly initialised network. ``run(out_dir, quick)`` is called by ``python -m tests.bench.run``;
``python -m tests.bench.model_bench [--quick]`` runs it alone.
Environment: ``YOLO_BENCH_COMPILE_MODE`` (torch.compile mode; default ``max-autotune-no-cudagraphs``,
``default`` in quick mode), ``YOLO_BENCH_CPU_BATCHES`` / ``YOLO_BENCH_CUDA_BATCHES`` (e.g. ``1,8``),
``YOLO_BENCH_ACCELS`` (e.g. ``eager,cudagraph``), ``YOLO_BENCH_SKIP_CPU=1``, ``YOLO_BENCH_CPU_THREADS``.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

VARIANTS = ("yolov7-tiny", "yolov7")


def _fixtures() -> Path:
    from tests.conftest import fixtures_root

    return fixtures_root() / "yolov7"


def build_models(variant: str) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """(fused, unfused, weights source) for ``variant``, eval mode, fp32, CPU."""
    from predictor.yolov7.fuse import fuse_model
    from predictor.yolov7.network import YOLOv7

    ckpt_path = _fixtures() / f"{variant}-random.pt"
    try:
        from predictor.yolov7 import build_model, load_checkpoint

        if ckpt_path.is_file():
            ckpt = load_checkpoint(ckpt_path)
            return build_model(ckpt, fuse=True), build_model(ckpt, fuse=False), str(ckpt_path.name)
    except ImportError:
        pass
    unfused = YOLOv7(variant).eval()
    return fuse_model(copy.deepcopy(unfused)).eval(), unfused, "random init"


def _time(
    fn: Callable[[], Any], *, warmup: int, repeat: int, sync: Callable[[], None] = lambda: None
) -> dict:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "n": repeat}


def _time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int, repeat: int) -> dict[str, dict]:
    """Like :func:`_time` for several functions, alternating them each round so that a shared, noisy
    CPU slows them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1000.0)
    return {
        k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "n": repeat}
        for k, v in times.items()
    }


def bench_cpu(quick: bool) -> list[dict]:
    """Our path (fused, channels-last — what :class:`~predictor.engine.Detector` runs) against the
    unfused eager reference (NCHW), interleaved; at batch 1 also fused NCHW, to separate the two gains."""
    size = 320 if quick else 640
    batches = _env_list("YOLO_BENCH_CPU_BATCHES", (1,) if quick else (1, 8), int)
    rows = []
    for variant in VARIANTS:
        fused, unfused, source = build_models(variant)
        ours = copy.deepcopy(fused).to(memory_format=torch.channels_last)
        for batch in batches:
            x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            x_cl = x.contiguous(memory_format=torch.channels_last)
            repeat = 2 if quick else (3 if variant == "yolov7" and batch == 8 else 5)
            fns = {"ours": partial(ours, x_cl), "unfused": partial(unfused, x)}
            if batch == 1:
                fns["fused_nchw"] = partial(fused, x)
            with torch.inference_mode():
                res = _time_interleaved(fns, warmup=1, repeat=repeat)
            f, u = res["ours"]["median_ms"], res["unfused"]["median_ms"]
            row = {
                "variant": variant,
                "device": "cpu",
                "precision": "fp32",
                "input": size,
                "batch": batch,
                "weights": source,
                "ours_ms_per_batch": round(f, 2),
                "ours_ms_per_image": round(f / batch, 2),
                "unfused_ms_per_batch": round(u, 2),
                "unfused_ms_per_image": round(u / batch, 2),
                "speedup_vs_unfused": round(u / f, 3),
                "timings": res,
            }
            if "fused_nchw" in res:
                row["fused_nchw_ms_per_image"] = round(res["fused_nchw"]["median_ms"], 2)
            rows.append(row)
            print(
                f"  cpu {variant} b{batch}@{size}: ours (fused, channels-last) {f / batch:.1f} ms/img, "
                f"unfused {u / batch:.1f} ms/img (x{u / f:.2f})"
                + (f", fused NCHW {row['fused_nchw_ms_per_image']:.1f}" if batch == 1 else ""),
                file=sys.stderr,
            )
        del fused, unfused, ours
    return rows


def bench_cpu_end_to_end(quick: bool) -> dict | None:
    """Detector.detect on one real photo (letterbox + forward + NMS + scaling), yolov7-tiny, batch 1."""
    import numpy as np

    from predictor.engine import Detector

    fused, _, source = build_models("yolov7-tiny")
    det = Detector(fused, device="cpu", input_size=320 if quick else 640)
    img_path = _fixtures() / "images" / "bus.jpg"
    if img_path.is_file():
        import cv2

        img = np.ascontiguousarray(cv2.imread(str(img_path))[:, :, ::-1])
    else:
        img = np.random.default_rng(0).integers(0, 256, (1080, 810, 3), dtype=np.uint8)
    timings = {
        "preprocess": _time(lambda: det.preprocess([img]), warmup=1, repeat=3 if quick else 10),
        "detect": _time(lambda: det.detect([img]), warmup=1, repeat=3 if quick else 10),
    }
    return {
        "variant": "yolov7-tiny",
        "input": det.input_size,
        "image_shape": list(img.shape),
        "weights": source,
        **{f"{k}_ms": round(v["median_ms"], 2) for k, v in timings.items()},
    }


def bench_cuda(quick: bool) -> list[dict]:
    from predictor.engine import Detector

    compile_mode = os.environ.get(
        "YOLO_BENCH_COMPILE_MODE", "default" if quick else "max-autotune-no-cudagraphs"
    )
    batches = _env_list("YOLO_BENCH_CUDA_BATCHES", (1, 8) if quick else (1, 8, 32, 64), int)
    accels = _env_list("YOLO_BENCH_ACCELS", ("eager", "cudagraph", "compile"), str)
    rows = []
    sync = torch.cuda.synchronize
    for variant in _env_list("YOLO_BENCH_VARIANTS", VARIANTS, str):
        fused, _, source = build_models(variant)
        for accel in accels:
            try:
                det = Detector(
                    copy.deepcopy(fused),
                    device="cuda",
                    precision="fp16",
                    accel=accel,
                    compile_mode=compile_mode,
                    graph_max_batch=max(batches),  # measure graphs at every size
                )
            except Exception as e:  # report, keep benchmarking the rest
                rows.append({"variant": variant, "accel": accel, "error": repr(e)})
                continue
            for batch in batches:
                x = torch.rand(batch, 3, 640, 640, device="cuda").half()
                try:
                    t0 = time.perf_counter()
                    det.forward(x)
                    sync()
                    first_ms = (time.perf_counter() - t0) * 1000
                    r = _time(
                        lambda d=det, x=x: d.forward(x), warmup=3, repeat=10 if quick else 30, sync=sync
                    )
                except Exception as e:
                    rows.append({"variant": variant, "accel": accel, "batch": batch, "error": repr(e)})
                    continue
                med = r["median_ms"]
                rows.append(
                    {
                        "variant": variant,
                        "device": torch.cuda.get_device_name(),
                        "precision": "fp16",
                        "accel": accel,
                        "effective_accel": _effective(det),
                        "batch": batch,
                        "input": 640,
                        "weights": source,
                        "compile_mode": compile_mode if accel == "compile" else None,
                        "first_call_ms": round(first_ms, 1),
                        "latency_ms": round(med, 3),
                        "img_per_s": round(1000 * batch / med, 1),
                        "timing": r,
                    }
                )
                print(
                    f"  cuda {variant} {accel} b{batch}: {med:.2f} ms, {1000 * batch / med:.0f} img/s",
                    file=sys.stderr,
                )
            del det
            torch.cuda.empty_cache()
    return rows


def _env_list(name: str, default: tuple, cast: Callable[[str], Any]) -> tuple:
    raw = os.environ.get(name, "").strip()
    return tuple(cast(v) for v in raw.split(",") if v.strip()) if raw else default


def _effective(det: Any) -> str:
    if det.accel == "cudagraph" and det._graph_failed:
        return "eager (capture failed)"
    if det.accel == "compile" and det._compiled is None:
        return "eager (compile failed)"
    return det.accel


def run(out_dir: Path, quick: bool = False) -> dict:
    """Run the model benchmark; write ``out_dir/model.json``; return the result."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "bench": "model",
        "quick": quick,
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "loadavg_start": _loadavg(),
        },
    }
    try:
        import predictor.yolov7.network  # noqa: F401
    except ImportError as e:
        result["skipped"] = f"predictor.yolov7 not importable: {e}"
        (out_dir / "model.json").write_text(json.dumps(result, indent=2))
        return result
    threads = os.environ.get("YOLO_BENCH_CPU_THREADS")
    if threads:  # on a loaded host fewer OpenMP threads than cores avoids barrier stalls
        torch.set_num_threads(int(threads))
        result["host"]["torch_threads"] = torch.get_num_threads()
    if os.environ.get("YOLO_BENCH_SKIP_CPU") != "1":
        result["cpu"] = bench_cpu(quick)
        result["cpu_end_to_end"] = bench_cpu_end_to_end(quick)
    result["cuda"] = bench_cuda(quick) if torch.cuda.is_available() else None
    result["host"]["loadavg_end"] = _loadavg()
    (out_dir / "model.json").write_text(json.dumps(result, indent=2))
    return result


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages (timings on a shared CPU are only as good as this is low)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    print(json.dumps(run(a.out, a.quick), indent=2))
