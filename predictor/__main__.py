"""``python -m predictor``: the YOLOv7 KServe predictor.

KServe's own flags (``--model_name``, ``--http_port``, ``--grpc_port``, ...) plus every
:mod:`predictor.settings` option (flag > ``YOLO_*`` environment variable > default).

With no arguments at all it starts as a platform expects (Cloud Run, Fargate, Knative, an app store): the
weights from KServe's ``/mnt/models`` or else the image's baked checkpoint, REST on ``$PORT`` (else 8080),
gRPC on 8081; the start-up log names the weights, device, ports and URLs chosen.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from typing import Any

from predictor.malloc import keep_freed_memory
from predictor.settings import PredictorSettings

DEFAULT_MODEL_NAME = "yolov7"
# gRPC framing and the other fields of a ModelInferRequest around the image bytes.
GRPC_ENVELOPE_BYTES = 64 * 1024
GIL_SWITCH_INTERVAL_S = 0.0001
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
# --workers > 1: metrics files (prometheus_client multiprocess) and shared slots live in a fresh folder here
RUN_DIR_PARENT = "/tmp"  # the image's root is read-only; /tmp is writable


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    from predictor.settings import GRPC_PORT, HTTP_PORT, PORT_ENV

    parser = argparse.ArgumentParser(
        prog="python -m predictor",
        description="YOLOv7 object detection predictor (KServe ModelServer: REST v1/v2 and gRPC v2).",
        parents=[model_server.parser],
        conflict_handler="resolve",  # our --workers (front-end processes) replaces KServe's (uvicorn's)
    )
    PredictorSettings.add_arguments(parser)
    # Ours by default; KServe's is "model". None = follow --max_request_bytes; ports: see serving_ports.
    parser.set_defaults(model_name=DEFAULT_MODEL_NAME, grpc_max_receive_message_length=None,
                        http_port=None, grpc_port=None)
    port_help = {
        "http_port": f"REST port (default: ${PORT_ENV} when set, as Cloud Run and Knative do, else {HTTP_PORT})",
        "grpc_port": f"gRPC port (default: {GRPC_PORT}, or the REST port + 1 when the REST port is {GRPC_PORT})",
    }
    for action in parser._actions:
        action.help = port_help.get(action.dest, action.help)
    return parser


def quiet_request_logs() -> None:
    """Silence the per-request INFO lines: uvicorn's access log and KServe's request timing trace."""
    from kserve.logging import KSERVE_TRACE_LOGGER_NAME

    for name in ("uvicorn.access", KSERVE_TRACE_LOGGER_NAME):
        logging.getLogger(name).setLevel(logging.WARNING)


def tune_for_serving() -> None:
    """Interpreter settings for one process that serves many requests with a few worker threads.

    GIL switch interval 0.1 ms instead of 5 ms: the batch stages (decode, forward, NMS) give up the GIL
    at every CUDA synchronisation and must get it back from a busy event loop. Measured on an H200
    (yolov7, compile, concurrency 64, same warm machine, back to back): NMS stage 19.7 → 13.9 ms per
    batch, 491 → 521 images/s. On the CPU no difference was measurable.
    """
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def passive_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, unless set already).

    Must run before torch is imported (libgomp reads it once, at load). Why: torch's CPU forward is a
    chain of OpenMP parallel regions; with the default policy its threads spin at every barrier, and as
    soon as anything else wants the cores (the event loop and decode threads of this very process, a
    client, a neighbour on the node) a spinning thread holds the core its descheduled peer needs. Measured
    on the 2-core host under load ~6, yolov7-tiny b1 forward, two processes interleaved: 1.0-2.3 s
    spinning against 100-146 ms passive (tests/bench/engine_bench.py ``openmp``). It is the served
    forward's slowdown against the bare one. ONNX Runtime's own spinning is off too (predictor.runtimes).
    """
    for name, value in OPENMP_ENV.items():
        os.environ.setdefault(name, value)


class _QuietLoggingInterceptor:
    """Stands in for KServe's gRPC ``LoggingInterceptor`` (one INFO line per call, which ``--request_logs``
    does not reach) when request logs are off: a placeholder that :func:`predictor.kserve_grpc.kserve_aio`
    leaves out of the server (an interceptor that only passes the call on still cost 5-7 % of the CPU per small
    gRPC request: grpc.aio awaits every interceptor on every call); if it ever reached a server, it
    would pass each call straight through."""

    def __new__(cls) -> Any:
        import grpc

        class Passthrough(grpc.aio.ServerInterceptor):
            async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
                return await continuation(handler_call_details)

        instance = Passthrough()
        instance.placeholder = True
        return instance


def drop_request_log_work() -> None:
    """With request logs off, skip the per-request work that only feeds them: KServe's gRPC
    ``LoggingInterceptor`` (one INFO line per call, which ``--request_logs`` does not reach; not even a
    pass-through interceptor is left in its place) and its REST ``TimingMiddleware``, whose only output
    is the trace logger that :func:`quiet_request_logs` silences. An ``--access_log_format`` keeps
    KServe's middleware (the access log is asked for)."""
    from kserve.protocol.grpc import server as grpc_server
    from kserve.protocol.rest import server as rest_server

    from predictor.kserve_grpc import kserve_aio

    grpc_server.LoggingInterceptor = _QuietLoggingInterceptor
    kserve_aio()  # leaves the placeholder out
    kserve_middlewares = rest_server.RESTServer._add_middlewares
    if getattr(kserve_middlewares, "__wrapped__", None) is not None:
        return

    def add_middlewares(self: Any, app: Any) -> None:
        if self.access_log_format:
            add_middlewares.__wrapped__(self, app)

    add_middlewares.__wrapped__ = kserve_middlewares  # type: ignore[attr-defined]
    rest_server.RESTServer._add_middlewares = add_middlewares


def planned_workers(argv: list[str] | None) -> tuple[int, str]:
    """``(front ends, device)`` from ``--workers``/``--device`` (or ``YOLO_WORKERS``/``YOLO_DEVICE``), read
    before KServe (and so prometheus_client) is imported: multiprocess metrics must be set up first. Bad
    values are left for the full parser to report (1 here)."""
    from predictor.settings import PredictorSettings, SettingsError, front_ends

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--workers", default=None)
    pre.add_argument("--device", default=None)
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = PredictorSettings.from_sources(known)
    except SettingsError:
        return 1, "cpu"
    device = settings.device
    if settings.workers == 0 and device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return front_ends(settings.workers, device.split(":")[0], usable_cpus()), device


def usable_cpus(cgroup_cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity, capped by the cgroup v2 CPU quota (a pod's CPU limit) — not
    the node's core count, which ``os.cpu_count()`` reports inside a container."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open(cgroup_cpu_max).read().split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))  # rounded up: 1.5 CPUs → 2
    except (OSError, ValueError):
        pass
    return count


def main(argv: list[str] | None = None) -> None:
    passive_openmp()  # before torch is imported (planned_workers may import it)
    keep_freed_memory()
    workers, _ = planned_workers(argv)
    run_dir = None
    if workers > 1:  # before prometheus_client is imported, here and (inherited) in every front end
        from predictor.dataplane import claim_run_dir

        run_dir = claim_run_dir(RUN_DIR_PARENT)

    from predictor.model import YoloV7Model
    from predictor.settings import SettingsError, default_weights, serving_ports

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = PredictorSettings.from_sources(args)
        args.http_port, args.grpc_port, port_source = serving_ports(args.http_port, args.grpc_port)
    except SettingsError as error:
        parser.error(str(error))
    weights_source = "--weights or YOLO_WEIGHTS"
    weights_given = bool(settings.weights)
    if not weights_given:
        weights, weights_source = default_weights()
        settings = dataclasses.replace(settings, weights=weights)
    configure(args, settings)

    log = logging.getLogger("predictor")
    log.info("starting model %r: weights %s (%s), device %s, REST port %d (%s), gRPC port %s, %s",
             args.model_name, settings.weights, weights_source, settings.device, args.http_port, port_source,
             args.grpc_port if args.enable_grpc else "off",
             f"{workers} front-end processes" if workers > 1 else "one process")
    model = YoloV7Model(args.model_name, settings)
    try:
        model.load()
    except (FileNotFoundError, ValueError) as error:
        if not weights_given:
            error = f"{error} ({weights_source}: give --weights, mount a model at KServe's /mnt/models, or " \
                    "use an image built with weights baked in)"
        log.error("cannot load the model: %s", error)
        sys.exit(f"error: {error}")
    if run_dir is not None:
        from predictor.dataplane import serve_front_ends

        tune_for_serving()
        sys.exit(serve_front_ends(model, vars(args), workers, run_dir))
    serve(args, settings, model)


def configure(args: argparse.Namespace, settings: Any) -> None:
    """Logging and KServe's module-level options, in the model process and in every front end."""
    from kserve import model_server
    from kserve.logging import configure_logging
    from kserve.logging import logger as kserve_logger

    from predictor.errors import filter_native_stderr

    if args.configure_logging:
        configure_logging(args.log_config_file)
        ours = logging.getLogger("predictor")
        ours.handlers = list(kserve_logger.handlers)
        ours.setLevel(logging.INFO)
        ours.propagate = False

    if not settings.request_logs:
        quiet_request_logs()
        drop_request_log_work()
    filter_native_stderr()  # one log line per rejected image, not one more from libpng/libjpeg

    # KServe's GRPCServer reads its message limits from kserve.model_server.args (parsed at import).
    grpc_receive = args.grpc_max_receive_message_length
    if grpc_receive is None:
        grpc_receive = settings.max_request_bytes + GRPC_ENVELOPE_BYTES
    model_server.args.grpc_max_receive_message_length = grpc_receive
    model_server.args.grpc_max_send_message_length = args.grpc_max_send_message_length


def serve(args: argparse.Namespace, settings: Any, model: Any, *, front_end: Any = None) -> None:
    """KServe's ModelServer around ``model`` (loaded), REST and gRPC, until SIGTERM. ``front_end``: this is
    a front-end process (:mod:`predictor.frontend`): configure it, share the REST port with the other front
    ends (SO_REUSEPORT; gRPC does so by default), watch the model process."""
    import kserve
    from kserve import model_server

    from predictor.model_card import MODEL_CARD_ROUTE
    from predictor.rest import install

    if front_end is not None:
        configure(args, settings)
    server_class = kserve.ModelServer if front_end is None else _front_end_server(front_end)
    server = server_class(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
    )
    install(model_server.app, server, model=model, max_request_bytes=settings.max_request_bytes,
            demo=settings.demo, multiprocess_metrics=front_end is not None)
    if settings.auth_token_file:  # predictor/auth.py: bearer token on REST and gRPC, probes exempt
        from predictor import auth

        try:
            auth.install(model_server.app, settings.auth_token_file)
        except (OSError, ValueError) as error:
            sys.exit(f"error: --auth_token_file: {error}")
    tune_for_serving()
    log = logging.getLogger("predictor")
    base = f"http://0.0.0.0:{args.http_port}"
    where = f"front end {front_end.spec.index} (pid {os.getpid()})" if front_end is not None else \
        str(model.pipeline.detector.device)
    log.info("serving %r on %s: %s/v2/models/%s/infer (v2), %s/v1/models/%s:predict (v1), health "
             "%s/v2/health/ready, model card %s%s%s", args.model_name, where, base,
             args.model_name, base, args.model_name, base, base, MODEL_CARD_ROUTE,
             f", gRPC 0.0.0.0:{args.grpc_port}" if args.enable_grpc else "")
    server.start([model])


def shared_listening_socket(port: int) -> Any:
    """The REST socket of one front end: ``SO_REUSEPORT`` (every front end binds the same port; the kernel
    spreads the connections) and ``TCP_NODELAY``, which accepted connections inherit — without it Nagle's
    algorithm and the client's delayed ACK held each small response back 40 ms (measured: 52 → 8 ms p50 at
    concurrency 1)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("0.0.0.0", port))
    return sock


def _front_end_server(front_end: Any) -> type:
    """KServe's ModelServer, with its REST server on a SO_REUSEPORT socket shared by every front end."""
    import kserve

    class FrontEndServer(kserve.ModelServer):
        async def _serve(self) -> None:
            front_end.watch_model()
            rest = self._rest_server
            sock = shared_listening_socket(self.http_port)
            self.servers[0].close()  # RESTServer.start(), replaced by the same with our socket
            rest.create_application()
            self.servers[0] = rest._server.serve(sockets=[sock])
            await asyncio.gather(*self.servers)

    return FrontEndServer


if __name__ == "__main__":
    main()
