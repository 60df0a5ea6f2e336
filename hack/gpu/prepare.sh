#!/usr/bin/env bash
# Prepare what hack/gpu/check.sh needs on a GPU host that cannot reach a package registry:
#   .whl/           kserve 0.21 and the dependencies that host's Python 3.12 image lacks (manylinux wheels)
#   .cache/gpuslim/ the yolov7-tiny fixture checkpoint, the test images and architectures.json
#                   (../shared does not travel)
# Both stay out of git (.gitignore / .git/info/exclude). Run from the repository root, here:
#   bash hack/gpu/prepare.sh [FIXTURES_DIR]
set -euo pipefail
fixtures=${1:-${YOLO_FIXTURES:-../shared/fixtures}}
mkdir -p .whl .cache/gpuslim/yolov7/images
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
wheels=(kserve==0.21.0 py-spy==0.4.3 pyasn1==0.6.5 pyjwt==2.15.1 python-multipart==0.0.34 cryptography==50.0.2 cffi==2.1.1
        pycparser==3.12 pydantic==2.14.4 typing-inspection==0.4.5 pydantic-core==2.50.5 annotated-types==0.8.0
        tzdata==2026.6 pytz==2026.6 timing-asgi==0.3.2 orjson==3.13.0 grpc-interceptor==0.15.4 grpcio-tools==1.81.1
        cloudevents==1.13.0 deprecation==2.1.0 starlette==1.10.0 fastapi==0.165.0 watchfiles==1.3.0 uvicorn==0.54.0
        h11 httptools uvloop python-dotenv websockets kubernetes==37.0.1 durationpy==0.11 requests-oauthlib==2.0.0
        oauthlib==4.0.1 websocket-client==1.9.2 aiohttp-retry==2.9.1 opentelemetry-api==1.45.2
        pybase64==1.5.1)
for wheel in "${wheels[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$wheel"
done
cp "$fixtures/yolov7/yolov7-tiny-random.pt" .cache/gpuslim/yolov7/
cp "$fixtures/yolov7/architectures.json" .cache/gpuslim/yolov7/
cp "$fixtures"/yolov7/images/*.jpg .cache/gpuslim/yolov7/images/
du -sh .whl .cache/gpuslim
echo "then: device run, command 'bash hack/gpu/check.sh', carry ['.whl', '.cache/gpuslim']"
