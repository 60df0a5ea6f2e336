# syntax=docker/dockerfile:1
#
# yolo-v7 images, one file, two targets (and two torch flavours of the predictor):
#
#   docker build --target predictor --build-arg WEIGHTS=yolov7 -t yolo-v7:1.0.0 .        (make build)
#   docker build --target predictor --build-arg TORCH_FLAVOR=cpu -t yolo-v7:1.0.0-cpu .  (make build-cpu)
#   docker build --target operator -t yolo-v7-operator:1.0.0 .
#   (podman build takes the same arguments; the Makefile uses whichever engine it finds, or CONTAINER_ENGINE)
#
# predictor  the KServe model server (python -m predictor). TORCH_FLAVOR=cuda (default): torch 2.14.1 from PyPI
#            with the CUDA 13 runtime as nvidia-* wheels (~3 GB; GPU nodes need only an NVIDIA driver >= 580).
#            TORCH_FLAVOR=cpu: no torch at run time (Cloud Run, Fargate, laptops): the baked checkpoints are
#            exported to ONNX at build time by our own network (CPU torch wheel, build stage only) and served
#            with ONNX Runtime, letterbox and NMS in OpenCV/numpy (.[predictor-cpu]; docs/cpu.md);
#            CPU_EXTRAS=predictor-cpu,cpu-openvino adds OpenVINO (auto then times both at start-up).
#            Official weights optionally baked in at /opt/yolo-v7/weights/<variant>.pt (WEIGHTS=none: none).
#            With no arguments it serves KServe's /mnt/models when mounted, else the baked checkpoint, REST on
#            $PORT (default 8080) and gRPC on 8081: see deploy/ for Cloud Run, Fargate, OpenShift Serverless.
# operator   the kopf operator (yolo-v7-operator): kopf + kubernetes + predictor.settings only, no torch.
#
# Both run as a numeric non-root user (1001, group 0) and also under an arbitrary UID with group 0
# (OpenShift restricted-v2) and a read-only root filesystem: every path they may write is group-0 owned and
# group-writable (HOME), or under /tmp.
# Ports: predictor 8080 (HTTP: v1/v2 REST, /v2/health/*, /model-card) and 8081 (gRPC); operator 8080 (/healthz).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# cuda: torch's PyPI wheels (CUDA runtime included); cpu: the CPU-only wheels (no CUDA libraries)
ARG TORCH_FLAVOR=cuda

# ---------------------------------------------------------------------------------------------------
# base: the user, the directories and the environment both targets share
# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base

ENV APP_ROOT=/opt/yolo-v7 \
    HOME=/opt/yolo-v7/home \
    USER=yolo \
    LOGNAME=yolo \
    PATH=/opt/yolo-v7/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/yolo-v7/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# USER/LOGNAME are set because an arbitrary UID has no /etc/passwd entry: getpass.getuser() (torch's
# inductor cache path, for one) would fail without them.
RUN useradd --uid 1001 --gid 0 --no-create-home --home-dir /opt/yolo-v7/home --shell /usr/sbin/nologin yolo \
 && mkdir -p /opt/yolo-v7/home /opt/yolo-v7/weights \
 && chgrp -R 0 /opt/yolo-v7/home \
 && chmod -R g=u /opt/yolo-v7/home

WORKDIR /opt/yolo-v7

# ---------------------------------------------------------------------------------------------------
# torch-cuda / torch-cpu: a virtual environment with torch, in its own layer (most of the image, changes least)
# ---------------------------------------------------------------------------------------------------
FROM base AS torch-cuda

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

WORKDIR /src
COPY constraints.txt ./
RUN python -m venv /opt/yolo-v7/venv \
 && pip install -c constraints.txt "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

FROM base AS torch-cpu

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

WORKDIR /src
COPY constraints.txt ./
# The CPU index's wheels are versioned 2.14.1+cpu, which the constraints' torch==2.14.1 admits.
RUN python -m venv /opt/yolo-v7/venv \
 && pip install -c constraints.txt --index-url "${TORCH_CPU_INDEX}" \
      "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
 && python -c "import importlib.metadata as m, torch; \
cuda = [d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].lower().startswith('nvidia-')]; \
assert torch.version.cuda is None and not cuda, ('CUDA in the CPU image', torch.version.cuda, cuda)"

# ---------------------------------------------------------------------------------------------------
# predictor-build: the predictor (and its model card, as package data) on top of the chosen torch
# (DL3006 below: "torch-cuda"/"torch-cpu" are this file's stages, not images to tag)
# ---------------------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM torch-${TORCH_FLAVOR} AS predictor-build

WORKDIR /src
COPY pyproject.toml ./
COPY predictor/ predictor/
COPY MODEL_CARD.md predictor/
RUN pip install --no-cache-dir -c constraints.txt ".[predictor]" \
 && python -c "import predictor.model_card as c, torch, kserve; assert c.card_path(); print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---------------------------------------------------------------------------------------------------
# weights: the official checkpoints named by WEIGHTS (one name or a comma list), each checked in place
# against weights/manifest.json (size + sha256) by the project's own fetch tool, with no network: make build
# runs `make weights WEIGHTS=...` first. WEIGHTS=none bakes nothing in.
# ---------------------------------------------------------------------------------------------------
FROM base AS weights

ARG WEIGHTS=yolov7

WORKDIR /src
COPY weights/ weights/
RUN mkdir -p /out \
 && IFS=', ' \
 && for name in ${WEIGHTS}; do \
      if [ "${name}" = "none" ]; then continue; fi; \
      python -m weights.fetch "${name}" --dest weights --from-file "weights/${name}.pt" || exit 1; \
      cp "weights/${name}.pt" "/out/${name}.pt" && chmod 0644 "/out/${name}.pt" || exit 1; \
    done \
 && ls -l /out

# ---------------------------------------------------------------------------------------------------
# engines-cpu: the baked checkpoints exported to ONNX by our own network (torch CPU wheel, this stage only),
# with the metadata a torch-free server needs (.yolo-v7-engines/ beside the weights: predictor.runtimes.export)
# engines-cuda: nothing (the CUDA image serves with torch)
# ---------------------------------------------------------------------------------------------------
FROM predictor-build AS engines-cpu

COPY --from=weights /out/ /out/
RUN pip install --no-cache-dir -c constraints.txt "onnx" \
 && for checkpoint in /out/*.pt; do \
      if [ -e "${checkpoint}" ]; then python -m predictor.runtimes.export --weights "${checkpoint}" || exit 1; fi; \
    done \
 && mkdir -p /out/.yolo-v7-engines \
 && rm -f /out/*.pt \
 && ls -la /out/.yolo-v7-engines

FROM base AS engines-cuda

RUN mkdir -p /out/.yolo-v7-engines

# ---------------------------------------------------------------------------------------------------
# predictor-venv-cpu: the torch-free runtime environment (kserve, OpenCV, numpy, ONNX Runtime);
# predictor-venv-cuda: predictor-build's (torch). (DL3006: stage names, not images to tag.)
# ---------------------------------------------------------------------------------------------------
FROM base AS predictor-venv-cpu

# the extras installed: predictor-cpu (ONNX Runtime); predictor-cpu,cpu-openvino adds OpenVINO (+184 MB)
ARG CPU_EXTRAS=predictor-cpu
WORKDIR /src
COPY constraints.txt pyproject.toml ./
COPY predictor/ predictor/
COPY MODEL_CARD.md predictor/
RUN python -m venv /opt/yolo-v7/venv \
 && pip install --no-cache-dir -c constraints.txt ".[${CPU_EXTRAS}]" \
 && python -c "import predictor.model, predictor.pipeline, predictor.runtimes.detector, onnxruntime, cv2, kserve" \
 && if pip show torch >/dev/null 2>&1 || pip show torchvision >/dev/null 2>&1; then \
      echo "torch must not be in the CPU image" >&2; exit 1; fi

FROM predictor-build AS predictor-venv-cuda

# hadolint ignore=DL3006
FROM predictor-venv-${TORCH_FLAVOR} AS predictor-venv

# hadolint ignore=DL3006
FROM engines-${TORCH_FLAVOR} AS engines

# ---------------------------------------------------------------------------------------------------
# predictor: the image KServe runs (the operator's InferenceService points at it)
# ---------------------------------------------------------------------------------------------------
FROM base AS predictor

ARG VERSION=1.0.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG WEIGHTS=yolov7
ARG TORCH_FLAVOR
# The code is Apache-2.0; the official YOLOv7 weights baked in are GPL-3.0 (WongKinYiu/yolov7). make build
# passes LICENSES=Apache-2.0 for WEIGHTS=none. MODEL_CARD.md has the details (served at /model-card).
ARG LICENSES="Apache-2.0 AND GPL-3.0"
LABEL org.opencontainers.image.title="yolo-v7" \
      org.opencontainers.image.description="YOLOv7 object detection KServe predictor (v1/v2 REST, v2 gRPC), torch ${TORCH_FLAVOR}; model card at /model-card" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/yolo-v7/yolo-v7" \
      org.opencontainers.image.licenses="${LICENSES}" \
      org.opencontainers.image.vendor="yolo-v7" \
      org.opencontainers.image.documentation="https://github.com/yolo-v7/yolo-v7/blob/main/MODEL_CARD.md" \
      io.yolo-v7.weights="${WEIGHTS}" \
      io.yolo-v7.torch="${TORCH_FLAVOR}"

# A C compiler for --accel compile (YoloDetector batching.acceleration: compile): Triton builds its kernel
# launchers with it at start-up. CUDA flavour only. Versions follow the pinned base image's Debian release.
# hadolint ignore=DL3008
RUN if [ "${TORCH_FLAVOR}" = cuda ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends gcc libc6-dev \
      && rm -rf /var/lib/apt/lists/*; \
    fi

COPY --from=predictor-venv /opt/yolo-v7/venv /opt/yolo-v7/venv
COPY --from=weights /out/ /opt/yolo-v7/weights/
# CPU flavour: the exported models (.yolo-v7-engines/); --engine auto serves them without torch, which is
# not installed (predictor.runtimes.detector). CUDA flavour: an empty folder.
COPY --from=engines /out/ /opt/yolo-v7/weights/

# Defaults through the environment (flags override them). No --weights/YOLO_WEIGHTS: KServe's /mnt/models
# when mounted, else the one checkpoint in /opt/yolo-v7/weights (predictor.settings.default_weights; the
# operator passes --weights for baked variants). No --http_port: $PORT when set, else 8080.
ENV YOLO_DEVICE=auto \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton

USER 1001:0
EXPOSE 8080 8081
# Kubernetes ignores HEALTHCHECK; the InferenceService probes the same route (/v2/health/ready). The same
# command is the Fargate task definition's container health check (deploy/fargate/task-definition.json).
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('PORT', '8080'), timeout=4)"]
ENTRYPOINT ["python", "-m", "predictor"]

# ---------------------------------------------------------------------------------------------------
# operator-build: kopf + kubernetes and the operator package, plus the torch-free predictor.settings and
# predictor.yolov7.names (options and class names declared once, shared with the predictor)
# ---------------------------------------------------------------------------------------------------
FROM base AS operator-build

WORKDIR /src
COPY constraints.txt pyproject.toml ./
COPY predictor/__init__.py predictor/settings.py predictor/
COPY predictor/yolov7/__init__.py predictor/yolov7/names.py predictor/yolov7/
COPY operator/ operator/
RUN python -m venv /opt/yolo-v7/venv \
 && pip install -c constraints.txt ".[operator]" \
 && python -c "import yolo_operator, predictor.settings, predictor.yolov7.names, kopf" \
 && if pip show torch >/dev/null 2>&1; then echo "torch must not be in the operator image" >&2; exit 1; fi

# ---------------------------------------------------------------------------------------------------
# operator: the image the Helm chart deploys
# ---------------------------------------------------------------------------------------------------
FROM base AS operator

ARG VERSION=1.0.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="yolo-v7-operator" \
      org.opencontainers.image.description="Kubernetes operator for YoloDetector resources (creates KServe InferenceServices)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/yolo-v7/yolo-v7" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="yolo-v7"

COPY --from=operator-build /opt/yolo-v7/venv /opt/yolo-v7/venv

USER 1001:0
EXPOSE 8080
# Kubernetes ignores HEALTHCHECK; the chart's livenessProbe uses the same route.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["yolo-v7-operator"]
