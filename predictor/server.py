"""Additions to KServe's FastAPI app (``kserve.model_server.app``), installed before ``ModelServer.start``.

KServe's ``RESTServer`` registers its own routes on that module-level app when it starts; routes added
here come first and therefore win for the same path. What is added, and why:

* a request-body limit (``--max_request_bytes``) → HTTP 413 with a JSON ``{"error": ...}``;
* too many images in flight (``--max_queued_images``, :class:`~predictor.codec.Overloaded`) → HTTP 503 with
  ``Retry-After: 1``, and no error log with a traceback per refused request (KServe's REST handler and gRPC
  interceptor would write one; ``yolo_request_errors_total{code="overloaded"}`` counts them instead);
* ``POST /v2/models/{name}/infer``: KServe's endpoint (same data plane, same steps), except that the
  binary tensor extension keeps ``BYTES`` elements as bytes (KServe 0.21 turns them into UTF-8 strings,
  which fails for images) and the JSON answer leaves out ``null`` fields (``"model_version": null`` breaks
  the protocol's schema) and is serialised by orjson;
* ``GET /v2/models/{name}``: KServe's metadata plus ``parameters`` (variant, class names, defaults);
* ``GET /model-card``: MODEL_CARD.md (:mod:`predictor.model_card`), linked from the model metadata;
* the demo page (``--demo``), from ``predictor.demo``.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import ModelNotReady
from kserve.logging import logger as kserve_logger
from kserve.protocol.infer_type import InferRequest
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from pydantic import ValidationError

from predictor import model_card
from predictor.codec import Overloaded, PayloadTooLarge, RequestError, infer_request_from_binary

__all__ = ["BodyLimitMiddleware", "install", "overloaded_handler"]


def _too_large(limit: int, size: int | None = None) -> JSONResponse:
    got = f"{size} bytes" if size is not None else "more"
    return JSONResponse(
        status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        content={"error": f"request body is {got}, over the limit of {limit} bytes (--max_request_bytes)"},
    )


async def payload_too_large_handler(_: Request, exc: PayloadTooLarge) -> JSONResponse:
    return JSONResponse(status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE, content={"error": str(exc)})


async def overloaded_handler(_: Request, exc: Overloaded) -> JSONResponse:
    return JSONResponse(status_code=HTTPStatus.SERVICE_UNAVAILABLE, content={"error": str(exc)},
                        headers={"Retry-After": "1"})


class _DropOverloaded(logging.Filter):
    """Leave out KServe's error records about refused requests: an overloaded server should not spend
    its time formatting a traceback per refusal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], Overloaded))


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length or while streaming.

    An oversize body announced by Content-Length is read and discarded (chunk by chunk, so memory stays
    bounded) before answering, so that clients that send the whole body first still see the 413.
    """

    def __init__(self, app: Any, max_bytes: int, on_reject: Any = None):
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
                break
        if length is not None and length > self.max_bytes:
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                more = message.get("more_body", False)
            if self.on_reject is not None:
                self.on_reject(scope)
            await _too_large(self.max_bytes, length)(scope, receive, send)
            return
        received = 0
        limit = self.max_bytes

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if self.on_reject is not None:
                        self.on_reject(scope)
                    raise PayloadTooLarge(
                        f"request body is over the limit of {limit} bytes (--max_request_bytes)"
                    )
            return message

        await self.app(scope, limited_receive, send)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _drop_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [_drop_none(item) for item in value]
    return value


def install(app: FastAPI, server: Any, *, model: Any, max_request_bytes: int, demo: bool = False) -> None:
    """Add the middleware, handlers and routes above to ``app`` (before ``server.start``)."""
    metrics = getattr(model, "metrics", None)

    def on_reject(scope: dict) -> None:
        if metrics is not None:
            path = scope.get("path", "")
            protocol = "v1" if path.startswith("/v1/") else "v2"
            metrics.errors.labels(protocol, "payload_too_large").inc()

    app.add_middleware(BodyLimitMiddleware, max_bytes=max_request_bytes, on_reject=on_reject)
    app.add_exception_handler(PayloadTooLarge, payload_too_large_handler)
    app.add_exception_handler(Overloaded, overloaded_handler)
    if not any(isinstance(f, _DropOverloaded) for f in kserve_logger.filters):
        kserve_logger.addFilter(_DropOverloaded())

    dataplane = server.dataplane

    async def infer(raw_request: Request, model_name: str) -> Response:
        """KServe's v2 infer endpoint, with the binary BYTES fix and a response without ``null`` fields
        (the Open Inference Protocol schema types them as strings/objects), serialised by orjson."""
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

    async def model_metadata(model_name: str) -> dict[str, Any]:
        metadata = await server.dataplane.model_metadata(model_name)
        registered = server.dataplane.get_model_from_registry(model_name)
        if getattr(registered, "ready", False) and hasattr(registered, "describe"):
            metadata["platform"] = "pytorch"
            metadata["parameters"] = {**registered.describe(), "model_card": model_card.MODEL_CARD_ROUTE}
        return metadata

    app.router.add_api_route("/v2/models/{model_name}/infer", infer, methods=["POST"], response_model=None,
                             tags=["V2"])
    app.router.add_api_route("/v2/models/{model_name}", model_metadata, methods=["GET"], response_model=None,
                             tags=["V2"])
    model_card.mount(app)
    if demo:
        from predictor.demo import mount

        mount(app, model_name=model.name)
