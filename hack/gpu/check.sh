#!/usr/bin/env bash
# One GPU check on a lent device machine (about 3 minutes): model forward and service end to end.
# Run from the repository root; results land in $OUT (the device tool's folder) or /tmp/gpu-out.
#   bash hack/gpu/check.sh
# Needs (made by hack/gpu/prepare.sh): carry .whl (kserve and its deps for the device's Python) and
# .cache/gpuslim (yolov7-tiny fixture checkpoint + bus.jpg; ../shared does not travel).
set -u
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export YOLO_FIXTURES=$PWD/.cache/gpuslim
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

echo "== model forward (fp16, 640): eager / CUDA graphs / torch.compile"
YOLO_BENCH_SKIP_CPU=1 YOLO_BENCH_CUDA_BATCHES=1,32 YOLO_BENCH_ACCELS=eager,cudagraph,compile \
  YOLO_BENCH_COMPILE_MODE=default timeout 120 python3 -m tests.bench.model_bench --out "$OUT" > /dev/null

echo "== service end to end (yolov7, bus.jpg, REST v2 binary extension)"
python3 hack/gpu/random_checkpoint.py yolov7 /tmp/yolov7-init.safetensors
YOLO_BENCH_WEIGHTS=/tmp/yolov7-init.safetensors YOLO_BENCH_DEVICE=cuda YOLO_BENCH_CONCURRENCY=1,64 \
  YOLO_BENCH_BINARY=1 YOLO_BENCH_SERVER_ARGS="--max_batch_size 32 --max_batch_delay_ms 2" \
  timeout 120 python3 -m tests.bench.service_bench > "$OUT/service.json" 2> "$OUT/service.err"
echo "service bench exit $?"; tail -5 "$OUT/service.err"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
try:
    for run in json.loads((out / "service.json").read_text())["runs"]:
        print(f"service c{run['concurrency']}: {run['throughput_rps']} img/s, p50 {run['latency_ms_p50']} ms, p99 {run['latency_ms_p99']} ms")
except Exception as error:
    print("no service result:", error)
PY
