"""Shared pytest fixtures: where the reference fixtures live, and a clear skip when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def fixtures_root() -> Path:
    """`YOLO_FIXTURES`, defaulting to ../shared/fixtures beside the checkout."""
    return Path(os.environ.get("YOLO_FIXTURES") or REPO_ROOT.parent / "shared" / "fixtures").resolve()


def pytest_configure(config) -> None:
    """Exported CPU engines (``--engine``) go to a per-run folder, never next to the shared fixtures;
    servers started by the tests inherit it (``YOLO_ENGINE_CACHE``)."""
    if not os.environ.get("YOLO_ENGINE_CACHE"):
        import tempfile

        os.environ["YOLO_ENGINE_CACHE"] = tempfile.mkdtemp(prefix="yolo-engines-")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    root = fixtures_root()
    if not (root / "yolov7" / "architectures.json").is_file():
        pytest.skip(
            f"reference fixtures not found at {root} (set YOLO_FIXTURES to the shared/fixtures folder; "
            "a user's fresh clone does not have them)"
        )
    return root


@pytest.fixture(scope="session")
def yolo_fixtures(fixtures_dir: Path) -> Path:
    return fixtures_dir / "yolov7"


@pytest.fixture(scope="session")
def kserve_fixtures(fixtures_dir: Path) -> Path:
    return fixtures_dir / "kserve"
