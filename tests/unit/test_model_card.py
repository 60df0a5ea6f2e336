"""predictor.model_card: GET /model-card serves MODEL_CARD.md from the installed package or the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from predictor import model_card

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    model_card.mount(app)
    return TestClient(app)


def test_serves_the_repositorys_card_as_markdown(client):
    response = client.get(model_card.MODEL_CARD_ROUTE)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/markdown; charset=utf-8"
    assert response.content == (ROOT / "MODEL_CARD.md").read_bytes()


def test_package_copy_first_then_checkout_then_404(client, tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "predictor"
    package.mkdir(parents=True)
    monkeypatch.setattr(model_card, "__file__", str(package / "model_card.py"))
    (package / "MODEL_CARD.md").write_text("# installed")
    (package.parent / "MODEL_CARD.md").write_text("# beside")
    assert client.get("/model-card").text == "# installed"  # the image: package data
    (package / "MODEL_CARD.md").unlink()
    assert client.get("/model-card").text == "# beside"  # a checkout: the repository root
    (package.parent / "MODEL_CARD.md").unlink()
    response = client.get("/model-card")
    assert response.status_code == 404 and "MODEL_CARD.md" in response.json()["error"]
