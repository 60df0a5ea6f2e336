"""The model card (``MODEL_CARD.md``) served by the predictor at ``GET /model-card`` as Markdown.

An app store or a person holding only the image URI can read what the model is, its limits, its measured
performance and its licences (code Apache-2.0, official weights GPL-3.0) from the running service. The
model metadata (``GET /v2/models/{name}`` → ``parameters.model_card``) links here.

The file is the repository's ``MODEL_CARD.md``; the image copies it into this package (Dockerfile, stage
``predictor-build``), so it is found beside this module there and one folder up in a checkout. It is read
per request (a few kB, rarely asked for): nothing happens at import time.
"""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse, Response

__all__ = ["MODEL_CARD_ROUTE", "card_path", "mount"]

MODEL_CARD_ROUTE = "/model-card"
CARD_FILE = "MODEL_CARD.md"
MEDIA_TYPE = "text/markdown; charset=utf-8"


def card_path() -> Path | None:
    """The card inside the installed package (the image), else the checkout's; None when neither exists."""
    here = Path(__file__).resolve().parent
    for candidate in (here / CARD_FILE, here.parent / CARD_FILE):
        if candidate.is_file():
            return candidate
    return None


async def model_card() -> Response:
    path = card_path()
    if path is None:
        return JSONResponse(status_code=HTTPStatus.NOT_FOUND,
                            content={"error": f"{CARD_FILE} is not installed with this predictor"})
    return Response(content=path.read_bytes(), media_type=MEDIA_TYPE)


def mount(app: Any) -> None:
    """Add ``GET /model-card`` to the FastAPI ``app``."""
    app.router.add_api_route(MODEL_CARD_ROUTE, model_card, methods=["GET"], response_model=None,
                             include_in_schema=False)
