"""With request logs off, KServe's per-request log work is gone: the gRPC call log, the REST timing middleware."""

from __future__ import annotations

import types

from fastapi import FastAPI


def test_request_log_work_is_dropped_unless_an_access_log_is_asked_for(monkeypatch):
    from kserve.protocol.grpc import server as grpc_server
    from kserve.protocol.rest import server as rest_server

    from predictor.__main__ import _QuietLoggingInterceptor, drop_request_log_work

    monkeypatch.setattr(grpc_server, "LoggingInterceptor", grpc_server.LoggingInterceptor)
    monkeypatch.setattr(rest_server.RESTServer, "_add_middlewares", rest_server.RESTServer._add_middlewares)

    stock = FastAPI()
    rest_server.RESTServer._add_middlewares(types.SimpleNamespace(access_log_format=None), stock)
    assert [m.cls.__name__ for m in stock.user_middleware] == ["TimingMiddleware"]  # what KServe adds

    drop_request_log_work()
    wrapper = rest_server.RESTServer._add_middlewares
    drop_request_log_work()  # twice: still one wrapper
    assert rest_server.RESTServer._add_middlewares is wrapper
    quiet = FastAPI()
    rest_server.RESTServer._add_middlewares(types.SimpleNamespace(access_log_format=None), quiet)
    assert quiet.user_middleware == []
    calls = []
    monkeypatch.setattr(rest_server.RESTServer._add_middlewares, "__wrapped__",
                        lambda server, app: calls.append(server.access_log_format))
    rest_server.RESTServer._add_middlewares(types.SimpleNamespace(access_log_format="%(h)s"), FastAPI())
    assert calls == ["%(h)s"]  # an access log asked for: KServe's own middleware (asgi-logger) is kept
    assert grpc_server.LoggingInterceptor is _QuietLoggingInterceptor
