"""Per-request work: KServe's request-log work dropped when logs are off; the front ends' shared REST socket."""

from __future__ import annotations

import types

from fastapi import FastAPI


def test_request_log_work_is_dropped_unless_an_access_log_is_asked_for(monkeypatch):
    from kserve.protocol.grpc import server as grpc_server
    from kserve.protocol.rest import server as rest_server

    from predictor.__main__ import _QuietLoggingInterceptor, drop_request_log_work

    monkeypatch.setattr(grpc_server, "LoggingInterceptor", grpc_server.LoggingInterceptor)
    monkeypatch.setattr(grpc_server, "aio", grpc_server.aio)
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


def test_the_grpc_server_gets_no_interceptor_in_place_of_kserves_logging_one(monkeypatch):
    """KServe builds its server with ``interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor())``;
    with request logs off the first is left out altogether (grpc.aio awaits every interceptor on every
    call, a pass-through one too), the error mapping stays."""
    import grpc
    from kserve.protocol.grpc import server as grpc_server
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.rest import server as rest_server

    from predictor.__main__ import drop_request_log_work

    monkeypatch.setattr(grpc_server, "LoggingInterceptor", grpc_server.LoggingInterceptor)
    monkeypatch.setattr(grpc_server, "aio", grpc_server.aio)
    monkeypatch.setattr(rest_server.RESTServer, "_add_middlewares", rest_server.RESTServer._add_middlewares)
    built = []
    monkeypatch.setattr(grpc.aio, "server", lambda *args, interceptors=None, **kwargs: built.append(interceptors))
    drop_request_log_work()
    drop_request_log_work()  # twice: grpc.aio wrapped once
    errors = ExceptionToStatusInterceptor()
    grpc_server.aio.server(None, interceptors=(grpc_server.LoggingInterceptor(), errors), options=[])
    assert built == [[errors]]
    from predictor import auth

    auth.install_grpc(auth.TokenCheck(b"secret"))  # the token check goes first, through the same wrapper
    auth.install_grpc(auth.TokenCheck(b"other"))  # once
    grpc_server.aio.server(None, interceptors=(grpc_server.LoggingInterceptor(), errors), options=[])
    assert len(built[1]) == 2 and type(built[1][0]).__name__ == "BearerTokenInterceptor" and built[1][1] is errors
    assert grpc_server.aio.insecure_channel is grpc.aio.insecure_channel  # the rest is grpc.aio's own
    placeholder = grpc_server.LoggingInterceptor()
    assert isinstance(placeholder, grpc.aio.ServerInterceptor)  # a plain pass-through, should it reach a server


def test_front_end_socket_shares_the_port_and_sends_at_once():
    """Two front ends bind one port (SO_REUSEPORT); connections accepted on it have TCP_NODELAY (inherited
    from the listening socket), else small answers wait for the client's delayed ACK."""
    import socket

    from predictor.__main__ import shared_listening_socket

    first = shared_listening_socket(0)
    port = first.getsockname()[1]
    second = shared_listening_socket(port)
    try:
        first.listen()
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = first.accept() if client else (None, None)
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert second.getsockname()[1] == port
    finally:
        first.close()
        second.close()


def test_auto_workers_follow_the_pod_cpu_limit_not_the_node(tmp_path):
    import os

    from predictor.__main__ import usable_cpus

    affinity = len(os.sched_getaffinity(0))
    limit = tmp_path / "cpu.max"
    limit.write_text("150000 100000\n")  # a pod limit of 1.5 CPUs
    assert usable_cpus(str(limit)) == min(affinity, 2)
    limit.write_text("max 100000\n")
    assert usable_cpus(str(limit)) == affinity
    assert usable_cpus(str(tmp_path / "absent")) == affinity


def test_v2_infer_is_answered_in_front_of_the_framework_with_the_apps_error_handlers():
    """POST /v2/models/{name}/infer: answered by our endpoint in front of FastAPI's inner layers and the
    router (no scan of every route, no dependency solving), inside the body limit; errors get the app's
    handlers as through the router (400 for a bad request, 500 for the unexpected); every other request,
    and KServe's own route for the path in the OpenAPI document, are as before."""
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient
    from starlette.exceptions import HTTPException

    from predictor.rest import InferFastPath, install

    calls = []

    class DataPlane:
        async def model_ready(self, name: str, *_: object) -> bool:
            return True

        async def infer(self, model_name: str, request: object, headers: dict) -> tuple[dict, dict]:
            calls.append(model_name)
            if model_name == "broken":
                raise RuntimeError("boom")
            if model_name in ("teapot", "http500"):
                raise HTTPException(418 if model_name == "teapot" else 500, detail=model_name)
            return {"model_name": model_name, "model_version": None, "id": "1", "outputs": []}, {}

        def encode(self, model_name: str, response: dict, headers: dict, req_attributes: dict) -> tuple[dict, dict]:
            return response, {}

    app = FastAPI()
    model = types.SimpleNamespace(name="m", metrics=None, settings=None)
    install(app, types.SimpleNamespace(dataplane=DataPlane()), model=model, max_request_bytes=1 << 16)
    app.add_exception_handler(418, lambda request, error: JSONResponse({"status": error.detail}, 418))
    app.add_exception_handler(500, lambda request, error: JSONResponse({"unexpected": str(error)}, 500))
    kserve_calls = []

    @app.post("/v2/models/{model_name}/infer")  # KServe's, added when its server starts
    async def kserve_infer(model_name: str) -> dict:
        kserve_calls.append(model_name)
        return {}

    assert [m.cls for m in app.user_middleware][-1] is InferFastPath  # innermost: inside the body limit
    routes = [r for r in app.router.routes if getattr(r, "path", "") == "/v2/models/{model_name}/infer"]
    assert len(routes) == 2 and routes[0].endpoint.__module__ == "predictor.rest"  # ours named first, as before
    assert "/v2/models/{model_name}/infer" in app.openapi()["paths"]
    body = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/v2/models/m/infer", json=body)
        assert answer.status_code == 200 and answer.json() == {"model_name": "m", "id": "1", "outputs": []}
        bad = client.post("/v2/models/m/infer", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "invalid v2 inference request" in bad.json()["error"]
        broken = client.post("/v2/models/broken/infer", json=body)  # the server-error middleware's 500 handler
        assert broken.status_code == 500 and broken.json() == {"unexpected": "boom"}
        teapot = client.post("/v2/models/teapot/infer", json=body)  # a status-code handler, as Starlette picks
        assert teapot.status_code == 418 and teapot.json() == {"status": "teapot"}
        http500 = client.post("/v2/models/http500/infer", json=body)  # the HTTPException class handler (ours)
        assert http500.status_code == 500 and http500.json() == {"error": "http500"}
        assert client.post("/v2/models/m/infer", content=b"x" * (1 << 17)).status_code == 413
        assert client.get("/v2/models/m/infer").status_code == 405  # the router's answer, as before
        assert client.post("/v2/models/m/infer/more", json=body).status_code == 404
    assert calls == ["m", "broken", "teapot", "http500"] and kserve_calls == []


def test_decoder_threads_keep_opencv_in_the_calling_thread(tmp_path):
    """The decode pool parallelises over images; OpenCV's own worker threads on top of it only cost CPU
    (resize and border fan out to them per call). Every pool that decodes — the one-process pipeline's and
    a front end's — leaves OpenCV to one thread (``images.decoder_pool``)."""
    import multiprocessing
    import pickle

    import cv2
    from prometheus_client import CollectorRegistry

    from predictor import images, wire
    from predictor.engine import Detector
    from predictor.frontend import ModelLink
    from predictor.metrics import service_metrics
    from predictor.pipeline import DetectionPipeline
    from predictor.slots import SlotFile
    from tests.unit.test_engine import TinyHead

    def made_with_opencv_threads(make):  # the pool, and OpenCV's thread count after making it
        cv2.setNumThreads(4)
        pool = make()
        return pool.threads, cv2.getNumThreads()

    try:
        assert made_with_opencv_threads(lambda: images.decoder_pool(3)) == (3, 1)
        assert made_with_opencv_threads(images.decoder_pool)[0] >= 2
        detector = Detector(TinyHead(), names=[f"c{i}" for i in range(5)], device="cpu")
        pipeline = lambda: DetectionPipeline(  # noqa: E731
            detector, limits=wire.Limits(4, 10_000, 1 << 20), max_batch_size=2, max_batch_delay_s=0.0,
            metrics=service_metrics(CollectorRegistry()), decode_threads=3)._pool
        assert made_with_opencv_threads(pipeline) == (3, 1)
        ours, theirs = multiprocessing.Pipe()
        slots = pickle.loads(pickle.dumps(SlotFile.create("t", 2, 32, str(tmp_path))))
        spec = types.SimpleNamespace(index=0, conn=theirs, slots=slots, run_dir=str(tmp_path), slot_count=2,
                                     input_size=32, summary={})
        front_end = lambda: ModelLink(spec, wire.Limits(4, 10_000, 1 << 20),  # noqa: E731
                                      service_metrics(CollectorRegistry()))._decoders
        assert made_with_opencv_threads(front_end)[1] == 1
        ours.close()
        theirs.close()
    finally:
        cv2.setNumThreads(-1)
