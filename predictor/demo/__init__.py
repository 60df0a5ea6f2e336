"""The `make dev` demo page: an image, a video file or the webcam in, the predictor's v2 detections drawn.

``mount(app, model_name=...)`` adds to KServe's FastAPI app:

* ``GET /`` — the page, for browsers (requests whose ``Accept`` header names ``text/html``). Every other
  ``GET /`` (probes, ``curl``) still reaches KServe's own liveness route, which stays registered.
* ``GET /demo/`` — the page for any client; ``GET /demo`` redirects there.
* ``GET /demo/app.js``, ``GET /demo/style.css`` — its assets (plain files, no build step, no CDN).
* ``GET /demo/samples/<name>`` — the example photos of :data:`SAMPLES` (``samples/README.md``: source and
  licence of each).

Video and webcam frames are captured by the page itself and sent, one at a time, to the same v2 route as
an uploaded image: the server side has nothing video-specific. ``YOLO_DEMO_NOTICE`` (environment), when
set, is shown as a banner above the page (``make dev`` uses it to label a random-weights model).

The page only talks to the standard v2 routes (``v2/models/{name}``, ``v2/models/{name}/infer``) with
relative URLs, so it also works behind a path prefix. ``mount`` may be called before or after KServe
registers its own routes (our routes are put first either way), and calling it twice is harmless.
"""

from __future__ import annotations

import html
import json
import os
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Route
from starlette.types import Receive, Scope, Send

__all__ = ["ASSETS", "NOTICE_ENV", "SAMPLES", "mount", "render_page"]

# file name -> content type; only these files are served (the folder itself is never exposed)
ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# the examples gallery: file in samples/ -> (what it shows, credit); details in samples/README.md
SAMPLES: dict[str, tuple[str, str]] = {
    "astronaut.jpg": ("an astronaut", "NASA, public domain"),
    "chelsea.jpg": ("a cat", "Stefan van der Walt, CC0"),
    "coffee.jpg": ("a coffee cup", "Rachel Michetti, CC0"),
}
NOTICE_ENV = "YOLO_DEMO_NOTICE"
_SECURITY_HEADERS = {
    # everything comes from this server: no CDN, no inline script; images are drawn from blob: URLs
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


def render_page(model_name: str, *, root: str, notice: str = "") -> bytes:
    """index.html with the model name, the relative path to the server root (``""`` or ``"../"``), the
    examples gallery and an optional notice banner."""
    samples = [{"name": name, "alt": alt, "credit": credit} for name, (alt, credit) in SAMPLES.items()]
    config = json.dumps({"modelName": model_name, "root": root, "samples": samples, "notice": notice})
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
    notice = os.environ.get(NOTICE_ENV, "")
    routes: list[BaseRoute] = [
        _BrowserRoot(render_page(model_name, root="", notice=notice)),
        Route("/demo/", _static(render_page(model_name, root="../", notice=notice), "text/html; charset=utf-8"),
              methods=["GET"], name="yolo_demo_page"),
        Route("/demo", _redirect_to_demo, methods=["GET"], name="yolo_demo_redirect"),
    ]
    for name, media_type in ASSETS.items():
        routes.append(Route(f"/demo/{name}", _static(_read(name), media_type), methods=["GET"],
                            name=f"yolo_demo_{name.replace('.', '_')}"))
    for name in SAMPLES:
        routes.append(Route(f"/demo/samples/{name}", _static(_read(f"samples/{name}"), "image/jpeg"),
                            methods=["GET"], name=f"yolo_demo_sample_{name.replace('.', '_')}"))
    app.router.routes[0:0] = routes
