"""``python -m predictor``: the YOLOv7 KServe predictor.

KServe's own flags (``--model_name``, ``--http_port``, ``--grpc_port``, ...) plus every
:mod:`predictor.settings` option (flag > ``YOLO_*`` environment variable > default).

With no arguments at all it starts as a platform expects (Cloud Run, Fargate, Knative, an app store): the
weights from KServe's ``/mnt/models`` or else the image's baked checkpoint, REST on ``$PORT`` (else 8080),
gRPC on 8081; the start-up log names the weights, device, ports and URLs chosen.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

DEFAULT_MODEL_NAME = "yolov7"
# gRPC framing and the other fields of a ModelInferRequest around the image bytes.
GRPC_ENVELOPE_BYTES = 64 * 1024
GIL_SWITCH_INTERVAL_S = 0.0001
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    from predictor.settings import GRPC_PORT, HTTP_PORT, PORT_ENV, PredictorSettings

    parser = argparse.ArgumentParser(
        prog="python -m predictor",
        description="YOLOv7 object detection predictor (KServe ModelServer: REST v1/v2 and gRPC v2).",
        parents=[model_server.parser],
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


def main(argv: list[str] | None = None) -> None:
    passive_openmp()
    import kserve
    from kserve import model_server
    from kserve.logging import configure_logging
    from kserve.logging import logger as kserve_logger

    from predictor.errors import filter_native_stderr
    from predictor.model import YoloV7Model
    from predictor.model_card import MODEL_CARD_ROUTE
    from predictor.rest import install
    from predictor.settings import PredictorSettings, SettingsError, default_weights, serving_ports

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
    if args.workers != 1:
        parser.error("--workers must be 1 (one model copy per process); scale with replicas instead")

    if args.configure_logging:
        configure_logging(args.log_config_file)
        ours = logging.getLogger("predictor")
        ours.handlers = list(kserve_logger.handlers)
        ours.setLevel(logging.INFO)
        ours.propagate = False

    if not settings.request_logs:
        quiet_request_logs()
    filter_native_stderr()  # one log line per rejected image, not one more from libpng/libjpeg

    # KServe's GRPCServer reads its message limits from kserve.model_server.args (parsed at import).
    grpc_receive = args.grpc_max_receive_message_length
    if grpc_receive is None:
        grpc_receive = settings.max_request_bytes + GRPC_ENVELOPE_BYTES
    model_server.args.grpc_max_receive_message_length = grpc_receive
    model_server.args.grpc_max_send_message_length = args.grpc_max_send_message_length

    log = logging.getLogger("predictor")
    log.info("starting model %r: weights %s (%s), device %s, REST port %d (%s), gRPC port %s",
             args.model_name, settings.weights, weights_source, settings.device, args.http_port, port_source,
             args.grpc_port if args.enable_grpc else "off")
    model = YoloV7Model(args.model_name, settings)
    try:
        model.load()
    except (FileNotFoundError, ValueError) as error:
        if not weights_given:
            error = f"{error} ({weights_source}: give --weights, mount a model at KServe's /mnt/models, or " \
                    "use an image built with weights baked in)"
        log.error("cannot load the model: %s", error)
        sys.exit(f"error: {error}")

    server = kserve.ModelServer(
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
            demo=settings.demo)
    if settings.auth_token_file:  # predictor/auth.py: bearer token on REST and gRPC, probes exempt
        from predictor import auth

        try:
            auth.install(model_server.app, settings.auth_token_file)
        except (OSError, ValueError) as error:
            sys.exit(f"error: --auth_token_file: {error}")
    tune_for_serving()
    base = f"http://0.0.0.0:{args.http_port}"
    log.info("serving %r on %s: %s/v2/models/%s/infer (v2), %s/v1/models/%s:predict (v1), health "
             "%s/v2/health/ready, model card %s%s%s", args.model_name, model.pipeline.detector.device, base,
             args.model_name, base, args.model_name, base, base, MODEL_CARD_ROUTE,
             f", gRPC 0.0.0.0:{args.grpc_port}" if args.enable_grpc else "")
    server.start([model])


if __name__ == "__main__":
    main()
