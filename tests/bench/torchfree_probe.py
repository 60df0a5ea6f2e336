"""What a torch-free CPU image would pay at start: the probe imports what such a server imports (kserve,
OpenCV, numpy and one engine — never torch), loads the pre-exported ONNX model, prints ``ready``, then
answers one image (decode, letterbox, forward, class-aware NMS with OpenCV) and prints ``answer`` with
its RSS. Run by a parent that times process start → ready → answer:

    python tests/bench/torchfree_probe.py --parent --python /tmp/venv/bin/python --model m.onnx --image bus.jpg

Not a server (no HTTP listener: uvicorn's start adds ~0.1-0.3 s); the measured figures for docs/cpu.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(model: str, image: str, engine: str) -> None:
    import cv2
    import kserve  # noqa: F401 - the server's own import cost
    import numpy as np

    if engine == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()

        def forward(x):
            request.infer({0: x})
            return request.get_output_tensor(0).data
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

        def forward(x):
            return session.run(None, {session.get_inputs()[0].name: x})[0]

    print("ready", flush=True)
    bgr = cv2.imdecode(np.fromfile(image, np.uint8), cv2.IMREAD_COLOR)
    h, w = bgr.shape[:2]
    r = min(640 / h, 640 / w)
    nh, nw = round(h * r), round(w * r)
    top, left = (640 - nh) // 2, (640 - nw) // 2
    canvas = cv2.copyMakeBorder(cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR), top, 640 - nh - top,
                                left, 640 - nw - left, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    x = np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    raw = forward(x)[0]
    scores = raw[:, 5:] * raw[:, 4:5]
    classes = scores.argmax(1)
    best = scores[np.arange(len(classes)), classes]
    boxes = np.stack([raw[:, 0] - raw[:, 2] / 2, raw[:, 1] - raw[:, 3] / 2, raw[:, 2], raw[:, 3]], 1)
    keep = cv2.dnn.NMSBoxesBatched(boxes.tolist(), best.tolist(), classes.tolist(), 0.25, 0.45)
    rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
    print("answer", json.dumps({"detections": len(keep), "rss_mb": round(rss / 1024, 1)}), flush=True)


def parent(python: str, model: str, image: str, engine: str) -> dict:
    start = time.perf_counter()
    process = subprocess.Popen([python, __file__, "--model", model, "--image", image, "--engine", engine],
                               stdout=subprocess.PIPE, text=True)
    out: dict = {"engine": engine}
    for line in process.stdout:
        if line.startswith("ready"):
            out["ready_s"] = round(time.perf_counter() - start, 2)
        elif line.startswith("answer"):
            out["first_answer_s"] = round(time.perf_counter() - start, 2)
            out.update(json.loads(line.split(" ", 1)[1]))
    process.wait()
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--parent", action="store_true")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--engine", default="onnxruntime", choices=("onnxruntime", "openvino"))
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    if a.parent:
        runs = [parent(a.python, a.model, a.image, a.engine) for _ in range(a.runs)]
        print(json.dumps({"runs": runs, "median_first_answer_s": sorted(r["first_answer_s"] for r in runs)[len(runs) // 2]}))
    else:
        child(a.model, a.image, a.engine)
