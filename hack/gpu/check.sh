#!/usr/bin/env bash
# One GPU check on a lent device machine (about 5 minutes): the CUDA tests, then the service end to end
# (yolov7, 640, fp16, bus.jpg, REST v2 binary extension) at concurrency 1 and 64, with torch.compile +
# CUDA graphs (the throughput setting) and with the default CUDA graphs; then --workers 1 against the
# multi-process data plane (auto front ends) on REST binary and gRPC at concurrency 1, 8 and 64. Results land in $OUT (the device
# tool's folder) or /tmp/gpu-out. Run from the repository root:
#   bash hack/gpu/check.sh
# Needs (made by hack/gpu/prepare.sh): carry .whl (kserve and its deps for the device's Python) and
# .cache/gpuslim (fixture checkpoint, images, architectures.json; ../shared does not travel).
set -u
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
RESULTS=$OUT; OUT=/tmp/gpu-check; rm -rf "$OUT"; mkdir -p "$OUT"  # packed into one file at the end
trap 'tar czf "$RESULTS/gpu-check.tgz" -C "$OUT" . && echo "results: gpu-check.tgz"' EXIT
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export YOLO_FIXTURES=$PWD/.cache/gpuslim
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
nproc

echo "== CUDA tests (engine paths, graph padding, the staged GPU pipeline)"
timeout "${YOLO_CHECK_TEST_TIMEOUT:-150}" python3 -m pytest -q -x -p no:cacheprovider -m gpu -s \
  tests/unit/test_engine.py tests/service/test_gpu_pipeline.py > "$OUT/gpu-tests.log" 2>&1
echo "gpu tests exit $?"; grep -E "passed|failed|error|images/s|^image|batches" "$OUT/gpu-tests.log" | tail -20

python3 hack/gpu/random_checkpoint.py yolov7 /tmp/yolov7-init.safetensors
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 250 > "$OUT/gpu-util.txt" &
sampler=$!
bench() {  # bench NAME "SERVER ARGS" TIMEOUT CONCURRENCY REQUESTS [PROFILE]
  echo "== service: $1 ($2)"
  YOLO_BENCH_WEIGHTS=/tmp/yolov7-init.safetensors YOLO_BENCH_DEVICE=cuda YOLO_BENCH_CONCURRENCY=$4 \
    YOLO_BENCH_REQUESTS=$5 YOLO_BENCH_BINARY=1 YOLO_BENCH_CLIENT_PROCESSES=4 \
    YOLO_BENCH_SERVER_ARGS="$2" YOLO_BENCH_SERVER_LOG="$OUT/server-$1.log" \
    YOLO_BENCH_PROFILE=${6:-} YOLO_BENCH_PYSPY=/tmp/site/bin/py-spy \
    timeout "$3" python3 -m tests.bench.service_bench > "$OUT/service-$1.json" 2> "$OUT/service-$1.err"
  echo "exit $?"; tail -3 "$OUT/service-$1.err"
  python3 - "$OUT/service-$1.json" <<'PY'
import json, sys
try:
    data = json.load(open(sys.argv[1]))
    for run in data["runs"]:
        print(f"c{run['concurrency']}: {run['throughput_rps']} img/s, p50 {run['latency_ms_p50']} ms, "
              f"p99 {run['latency_ms_p99']} ms, mean batch {run['mean_batch_size']}, forward {run['forward_ms_mean']} ms, "
              f"decode {run['decode_ms_mean']} ms, nms {run['postprocess_ms_mean']} ms")
except Exception as error:
    print("no service result:", error)
PY
  grep -iE "warn|fail|error|ready" "$OUT/server-$1.log" | grep -v "^$" | tail -5
}
bench compile "--accel compile --max_batch_size 32 --max_batch_delay_ms 2" 230 1,8,32,64 \
  1:300,8:2000,32:4000,64:6000 "$OUT/profile.txt"
python3 hack/gpu/profile_summary.py "$OUT/profile.all.txt" "$OUT/profile.gil.txt"
bench cudagraph "--max_batch_size 32 --max_batch_delay_ms 2" 90 1,64 1:300,64:3000
echo "== front ends (--workers 1 against auto: one per core, at most 8), real forward, bus.jpg, REST binary + gRPC"
YOLO_BENCH_WEIGHTS=/tmp/yolov7-init.safetensors YOLO_BENCH_DEVICE=cuda YOLO_BENCH_STUB_MS=0 \
  YOLO_BENCH_WORKERS=1,0 YOLO_BENCH_IMAGES=bus YOLO_BENCH_PROTOCOLS=rest_binary,grpc \
  YOLO_BENCH_CONCURRENCY=1,8,64 YOLO_BENCH_CELL_SECONDS=8 YOLO_BENCH_ROUNDS=1 \
  YOLO_BENCH_SERVER_ARGS="--accel compile --max_batch_size 32 --max_batch_delay_ms 2 --warmup true" \
  timeout 240 python3 -m tests.bench.frontend_bench "$OUT/frontend" > "$OUT/frontend.json" 2> "$OUT/frontend.err"
echo "exit $?"; grep "^\[frontend\]" "$OUT/frontend.err" | cut -c1-400
kill $sampler 2>/dev/null
python3 - "$OUT/gpu-util.txt" <<'PY'
import sys
values = [int(v) for v in open(sys.argv[1]).read().split() if v.isdigit()]
busy = [v for v in values if v > 0]
print(f"GPU utilisation samples: {len(values)}, busy {len(busy)}, max {max(values, default=0)}%, "
      f"mean when busy {sum(busy) / max(1, len(busy)):.0f}%")
PY
