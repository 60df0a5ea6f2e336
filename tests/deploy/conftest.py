"""The deploy/ manifests, loaded once, and what each platform does when it starts the image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
IMAGE_USER = 1001  # the Dockerfile's USER (tests/unit/test_dockerfile.py checks it)
OPENSHIFT_UID = 1000650000  # an arbitrary UID from a namespace's range (restricted-v2), group 0


def load(relpath: str) -> Any:
    path = DEPLOY / relpath
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())


def knative_env(service: dict) -> dict[str, str]:
    """What Knative (and Cloud Run) give the container: PORT = the one containerPort, K_* names, its env."""
    name = service["metadata"]["name"]
    [container] = service["spec"]["template"]["spec"]["containers"]
    [port] = container["ports"]
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    return {**env, "PORT": str(port["containerPort"]), "K_SERVICE": name, "K_CONFIGURATION": name,
            "K_REVISION": f"{name}-00001"}


def knative() -> Any:
    """The Knative Serving admission stand-in (tests/platform/knative.py, from the operator work)."""
    return pytest.importorskip("tests.platform.knative", reason="the Knative stand-in tests/platform/knative.py "
                               "is not in this checkout")


def fargate_env(task: dict) -> dict[str, str]:
    [container] = task["containerDefinitions"]
    return {item["name"]: item["value"] for item in container.get("environment", [])}


# name -> (environment the platform sets, UID it runs the image as)
PLATFORMS = {
    "cloud-run": (lambda: knative_env(load("cloud-run/service.yaml")), IMAGE_USER),
    "fargate": (lambda: fargate_env(load("fargate/task-definition.json")), IMAGE_USER),
    "openshift-serverless": (lambda: knative_env(load("openshift-serverless/service.yaml")), OPENSHIFT_UID),
    "app-store": (lambda: {}, IMAGE_USER),  # the image URI alone: no args, no env
}
