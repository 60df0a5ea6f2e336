"""Additions to KServe's FastAPI app (``kserve.model_server.app``), installed before ``ModelServer.start``.

KServe's ``RESTServer`` registers its own routes on that module-level app when it starts; routes added
here come first and therefore win for the same path. What is added, and why:

* a request-body limit (``--max_request_bytes``) → HTTP 413, and ``Content-Encoding: gzip`` request
  bodies decoded under the same limit (any other encoding → 415);
* the error handlers of :mod:`predictor.errors` (``{"error": ...}`` bodies, one log line per rejection);
* ``POST /v2/models/{name}/infer``: KServe's endpoint (same data plane, same steps), except that the
  binary tensor extension keeps ``BYTES`` elements as bytes (KServe 0.21 turns them into UTF-8 strings,
  which fails for images) and the JSON answer leaves out ``null`` fields (``"model_version": null`` breaks
  the protocol's schema) and is serialised by orjson;
* ``GET /v2/models/{name}``: KServe's metadata plus ``parameters`` (variant, class names, defaults);
* ``GET /model-card``: MODEL_CARD.md (:mod:`predictor.model_card`), linked from the model metadata;
* the demo page (``--demo``), from ``predictor.demo``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import ModelNotReady
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from predictor import model_card
from predictor.errors import (
    PayloadTooLarge,
    RequestError,
    ServiceError,
    UnsupportedMedia,
    error_response,
    install_handlers,
)
from predictor.wire import gunzip, infer_request_from_binary

__all__ = ["BodyLimitMiddleware", "InferFastPath", "install"]

_IDENTITY = (b"", b"identity")
_GZIP = (b"gzip", b"x-gzip")


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length or while streaming.

    An oversize body announced by Content-Length is read and discarded (chunk by chunk, so memory stays
    bounded) before answering, so that clients that send the whole body first still see the 413.
    """

    def __init__(self, app: Any, max_bytes: int, on_reject: Any = None):
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject

    async def _refuse(self, error: ServiceError, scope: dict, receive: Any, send: Any) -> None:
        more = True  # read (and drop) the rest of the body first: clients that send it all see the answer
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            more = message.get("more_body", False)
        if self.on_reject is not None:
            self.on_reject(scope, error.code)
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope.get("headers", ())}
        await error_response(error, path=scope.get("path", ""), headers=headers)(scope, receive, send)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, encoding = None, b""
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
            elif key == b"content-encoding":
                encoding = value.strip().lower()
        limit = self.max_bytes
        if length is not None and length > limit:
            got = f"{length} bytes"
            await self._refuse(PayloadTooLarge(f"request body is {got}, over the limit of {limit} bytes "
                                               "(--max_request_bytes)"), scope, receive, send)
            return
        if encoding not in _IDENTITY and encoding not in _GZIP:
            await self._refuse(UnsupportedMedia(
                f"Content-Encoding {encoding.decode('latin-1')[:40]!r} is not supported; send gzip or identity"),
                scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if self.on_reject is not None:
                        self.on_reject(scope, "payload_too_large")
                    raise PayloadTooLarge(
                        f"request body is over the limit of {limit} bytes (--max_request_bytes)"
                    )
            return message

        if encoding in _GZIP:
            await self._gzip(scope, receive, send)
            return
        await self.app(scope, limited_receive, send)

    async def _gzip(self, scope: dict, receive: Any, send: Any) -> None:
        """Read the whole (compressed, limited) body, decode it under the limit, pass it on decoded."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(PayloadTooLarge(f"request body is over the limit of {self.max_bytes} bytes "
                                                   "(--max_request_bytes)"), scope, receive, send)
                return
        try:
            body = gunzip(b"".join(chunks), self.max_bytes)
        except ServiceError as error:
            await self._refuse(error, scope, _no_more_body, send)
            return
        headers = [(k, v) for k, v in scope.get("headers", ()) if k not in (b"content-encoding", b"content-length")]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def decoded_receive() -> dict:
            nonlocal sent
            if sent:
                return await receive()  # http.disconnect, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, decoded_receive, send)


def _is_async(function: Any) -> bool:
    while isinstance(function, functools.partial):
        function = function.func
    call = None if inspect.isfunction(function) else type(function).__dict__.get("__call__")  # an async callable object
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call)


class InferFastPath:
    """Answers ``POST /v2/models/{name}/infer`` (``route``) itself, in front of the framework's inner layers
    (exception middleware, exit-stack middleware, the router's scan of every route, the route's
    request/response wrappers): about a quarter of the event loop's time per small request went to them.
    Everything else goes on to ``app``. An exception gets the app's handler for its class, as Starlette's
    exception middleware would give it; one without a handler goes on up to the server-error middleware
    (500), as before. Placed inside :class:`BodyLimitMiddleware`, so the body is limited and decoded the same."""

    def __init__(self, app: Any, route: Any, exception_handlers: dict[Any, Any]):
        self.app = app
        self.route = route
        self.handlers = exception_handlers  # the app's own dict: handlers added later count too

    def _handler(self, error: Exception) -> Any:
        """Starlette's choice: a status-code handler for an HTTPException, else the handler of the nearest
        class; never the app's 500 / ``Exception`` handler, which belongs to the server-error middleware."""
        handlers = self.handlers
        if isinstance(error, HTTPException) and error.status_code != 500 and error.status_code in handlers:
            return handlers[error.status_code]
        return next((handlers[cls] for cls in type(error).__mro__ if cls is not Exception and cls in handlers), None)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match, child_scope = self.route.matches(scope)
        if match is not Match.FULL:
            await self.app(scope, receive, send)
            return
        scope.update(child_scope, route=self.route)
        request = Request(scope, receive, send)
        try:
            response = await self.route.endpoint(request)
        except Exception as error:
            handler = self._handler(error)
            if handler is None:
                raise
            if _is_async(handler):
                response = await handler(request, error)
            else:  # as Starlette runs a plain function handler
                response = await run_in_threadpool(handler, request, error)
            if response is None:
                return
        await response(scope, receive, send)


async def _no_more_body() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _drop_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [_drop_none(item) for item in value]
    return value


def _infer_endpoint(server: Any, metrics: Any) -> Any:
    dataplane = server.dataplane

    async def infer(raw_request: Request) -> Response:
        """KServe's v2 infer endpoint, with the binary BYTES fix and a response without ``null`` fields
        (the Open Inference Protocol schema types them as strings/objects), serialised by orjson.

        Answered by :class:`InferFastPath`, not through FastAPI: its per-request dependency solving and
        response handling had nothing to do here and took ~13 % of the event loop's time at concurrency
        64 (py-spy). KServe's own route for this path stays in the OpenAPI document."""
        model_name = raw_request.path_params["model_name"]
        body = await raw_request.body()
        header_length = raw_request.headers.get(INFERENCE_CONTENT_LENGTH_HEADER)
        try:
            if header_length is not None:
                infer_request: Any = infer_request_from_binary(body, header_length, model_name)
            else:
                try:
                    parsed = InferenceRequest.model_validate_json(body)
                except ValidationError as error:
                    problems = "; ".join(
                        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()[:5]
                    )
                    raise RequestError(f"invalid v2 inference request: {problems}", "request") from None
                infer_request = InferRequest.from_inference_request(parsed, model_name)
        except RequestError as error:
            if metrics is not None:
                metrics.errors.labels("v2", error.code).inc()
            raise
        if not await dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        headers = dict(raw_request.headers)
        response, response_headers = await dataplane.infer(model_name=model_name, request=infer_request,
                                                            headers=headers)
        response, encode_headers = dataplane.encode(model_name=model_name, response=response, headers=headers,
                                                    req_attributes={})
        response_headers.update(encode_headers)
        response_headers.pop("content-length", None)
        media_type = response_headers.pop("content-type", None)
        if isinstance(response, bytes | str):
            return Response(content=response, headers=response_headers,
                            media_type=media_type or "application/octet-stream")
        return Response(content=orjson.dumps(_drop_none(response), option=orjson.OPT_SERIALIZE_NUMPY),
                        headers=response_headers, media_type=media_type or "application/json")

    return infer


def install(app: FastAPI, server: Any, *, model: Any, max_request_bytes: int, demo: bool = False,
            multiprocess_metrics: bool = False) -> None:
    """Add the middleware, handlers and routes above to ``app`` (before ``server.start``).
    ``multiprocess_metrics``: ``/metrics`` sums every process of the pod (``--workers`` > 1); our route,
    added first, answers before KServe's own (this process's registry only)."""
    if multiprocess_metrics:
        from predictor.metrics import multiprocess_exposition

        async def metrics_route(raw_request: Request) -> Response:
            body, content_type = multiprocess_exposition(raw_request.headers.get("accept"))
            return Response(content=body, headers={"content-type": content_type})

        app.router.add_api_route("/metrics", metrics_route, methods=["GET"], include_in_schema=False)
    metrics = getattr(model, "metrics", None)

    def on_reject(scope: dict, code: str) -> None:
        if metrics is not None:
            path = scope.get("path", "")
            protocol = "v1" if path.startswith("/v1/") else "v2"
            metrics.errors.labels(protocol, code).inc()

    infer_route = Route("/v2/models/{model_name}/infer", _infer_endpoint(server, metrics), methods=["POST"],
                        include_in_schema=False)
    app.router.routes.append(infer_route)  # before KServe's: names it for url_for and KServe's timing middleware
    app.add_middleware(InferFastPath, route=infer_route, exception_handlers=app.exception_handlers)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes, on_reject=on_reject)  # outside the above
    settings = getattr(model, "settings", None)
    install_handlers(app, request_logs=bool(getattr(settings, "request_logs", False)))

    async def model_metadata(model_name: str) -> dict[str, Any]:
        metadata = await server.dataplane.model_metadata(model_name)
        registered = server.dataplane.get_model_from_registry(model_name)
        if getattr(registered, "ready", False) and hasattr(registered, "describe"):
            metadata["platform"] = "pytorch"
            metadata["parameters"] = {**registered.describe(), "model_card": model_card.MODEL_CARD_ROUTE}
        return metadata

    app.router.add_api_route("/v2/models/{model_name}", model_metadata, methods=["GET"], response_model=None,
                             tags=["V2"])
    model_card.mount(app)
    if demo:
        from predictor.demo import mount

        mount(app, model_name=model.name)
