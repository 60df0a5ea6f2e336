# syntax=docker/dockerfile:1
#
# yolo-v7 images, one file, two targets:
#
#   docker build --target predictor --build-arg WEIGHTS=yolov7 -t yolo-v7:1.0.0 .   (make build)
#   docker build --target operator -t yolo-v7-operator:1.0.0 .
#
# predictor  the KServe model server (python -m predictor) with CUDA-capable torch from PyPI (torch 2.14.1
#            brings the CUDA 13 runtime as nvidia-* wheels: GPU nodes need only an NVIDIA driver >= 580); official
#            weights optionally baked in at /opt/yolo-v7/weights/<variant>.pt (WEIGHTS=none: none baked).
# operator   the kopf operator (yolo-v7-operator): kopf + kubernetes + predictor.settings only, no torch.
#
# Both run as a numeric non-root user (1001, group 0) and also under an arbitrary UID with group 0
# (OpenShift restricted-v2): every path they may write is group-0 owned and group-writable, HOME included.
# Ports: predictor 8080 (HTTP: v1/v2 REST, /v2/health/*) and 8081 (gRPC); operator 8080 (/healthz).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

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
# predictor-build: a virtual environment with torch (CUDA wheels from PyPI) and the predictor
# ---------------------------------------------------------------------------------------------------
FROM base AS predictor-build

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

WORKDIR /src
COPY constraints.txt ./
# torch first, in its own layer: it is most of the image and changes least often.
RUN python -m venv /opt/yolo-v7/venv \
 && pip install -c constraints.txt "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

COPY pyproject.toml ./
COPY predictor/ predictor/
RUN pip install -c constraints.txt ".[predictor]" \
 && python -c "import predictor.settings, torch, kserve; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

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
# predictor: the image KServe runs (the operator's InferenceService points at it)
# ---------------------------------------------------------------------------------------------------
FROM base AS predictor

ARG VERSION=1.0.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG WEIGHTS=yolov7
LABEL org.opencontainers.image.title="yolo-v7" \
      org.opencontainers.image.description="YOLOv7 object detection KServe predictor (v1/v2 REST, v2 gRPC), CUDA-capable" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/yolo-v7/yolo-v7" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="yolo-v7" \
      io.yolo-v7.weights="${WEIGHTS}"

# A C compiler for --accel compile (YoloDetector batching.acceleration: compile): Triton builds its kernel
# launchers with it at start-up. Versions follow the pinned base image's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

COPY --from=predictor-build /opt/yolo-v7/venv /opt/yolo-v7/venv
COPY --from=weights /out/ /opt/yolo-v7/weights/

# Defaults through the environment (flags override them): KServe mounts storageUri at /mnt/models,
# the baked-in weights are at /opt/yolo-v7/weights/<variant>.pt (the operator passes --weights for them).
ENV YOLO_DEVICE=auto \
    YOLO_WEIGHTS=/mnt/models \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton

USER 1001:0
EXPOSE 8080 8081
# Kubernetes ignores HEALTHCHECK; the InferenceService probes the same route (/v2/health/ready).
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=4)"]
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
