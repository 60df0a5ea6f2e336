"""The `make dev` demo page: upload an image, see the detections the predictor's v2 endpoint returns.

``mount(app, model_name=...)`` adds to KServe's FastAPI app:

* ``GET /`` — the page, for browsers (requests whose ``Accept`` header names ``text/html``). Every other
  ``GET /`` (probes, ``curl``) still reaches KServe's own liveness route, which stays registered.
* ``GET /demo/`` — the page for any client; ``GET /demo`` redirects there.
* ``GET /demo/app.js``, ``GET /demo/style.css`` — its assets (plain files, no build step, no CDN).

The page only talks to the standard v2 routes (``v2/models/{name}``, ``v2/models/{name}/infer``) with
relative URLs, so it also works behind a path prefix. ``mount`` may be called before or after KServe
registers its own routes (our routes are put first either way), and calling it twice is harmless.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Route
from starlette.types import Receive, Scope, Send

__all__ = ["ASSETS", "mount", "render_page"]

# file name -> content type; only these files are served (the folder itself is never exposed)
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS = {
    # everything comes from this server: no CDN, no inline script; images are drawn from blob: URLs
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def render_page(model_name: str, *, root: str) -> bytes:
    """index.html with the model name and the relative path to the server root (``""`` or ``"../"``)."""
    config = json.dumps({"modelName": model_name, "root": root})
    text = _read("index.html").decode("utf-8")
    text = text.replace("{{ROOT}}", html.escape(root, quote=True))
    text = text.replace("{{MODEL_NAME}}", html.escape(model_name))
    text = text.replace("{{CONFIG}}", html.escape(config, quote=True))
    return text.encode("utf-8")


def _wants_html(scope: Scope) -> bool:
    for key, value in scope.get("headers", ()):
        if key == b"accept":
            return b"text/html" in value
    return False


class _BrowserRoot(BaseRoute):
    """``GET /`` for browsers only; other clients fall through to the next route (KServe's liveness)."""

    def __init__(self, page: bytes) -> None:
        self.page = page
        self.path = "/"

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if (
            scope["type"] == "http"
            and scope["path"] == "/"
            and scope["method"] in ("GET", "HEAD")
            and _wants_html(scope)
        ):
            return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = Response(self.page, media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS)
        await response(scope, receive, send)


def _static(body: bytes, media_type: str):
    async def endpoint(request: Request) -> Response:
        return Response(body, media_type=media_type, headers=_SECURITY_HEADERS)

    return endpoint


async def _redirect_to_demo(request: Request) -> Response:
    return RedirectResponse("demo/", status_code=307)


def mount(app: Any, *, model_name: str) -> None:
    """Add the demo page and its assets to ``app`` (KServe's ``fastapi.FastAPI``), ahead of its routes."""
    if getattr(app.state, "yolo_demo_model", None) is not None:
        return
    app.state.yolo_demo_model = model_name
    routes: list[BaseRoute] = [
        _BrowserRoot(render_page(model_name, root="")),
        Route("/demo/", _static(render_page(model_name, root="../"), "text/html; charset=utf-8"),
              methods=["GET"], name="yolo_demo_page"),
        Route("/demo", _redirect_to_demo, methods=["GET"], name="yolo_demo_redirect"),
    ]
    for name, media_type in ASSETS.items():
        routes.append(Route(f"/demo/{name}", _static(_read(name), media_type), methods=["GET"],
                            name=f"yolo_demo_{name.replace('.', '_')}"))
    app.router.routes[0:0] = routes
