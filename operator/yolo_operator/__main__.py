"""``yolo-v7-operator`` / ``python -m yolo_operator``: run the operator.

Namespaces: ``--namespace`` (repeatable) or ``YOLO_OPERATOR_NAMESPACES`` (comma list); neither, or
``--all-namespaces``, watches the whole cluster. Liveness: ``--liveness`` (default
``http://0.0.0.0:8080/healthz``, env ``YOLO_OPERATOR_LIVENESS``). Other settings: see ``config.OperatorConfig``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence

import kopf

from . import handlers
from .config import OperatorConfig


def parse_args(argv: Sequence[str] | None, config: OperatorConfig) -> tuple[argparse.Namespace, OperatorConfig]:
    parser = argparse.ArgumentParser(
        prog="yolo-v7-operator",
        description="Run the yolo-v7 operator: YoloDetector resources -> KServe InferenceServices.")
    parser.add_argument("-n", "--namespace", action="append", default=[],
                        help="watch this namespace (repeatable; default: $YOLO_OPERATOR_NAMESPACES or all)")
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="watch the whole cluster")
    parser.add_argument("--liveness", default=config.liveness, help="kopf liveness endpoint URL ('' disables)")
    parser.add_argument("--resync-seconds", type=float, default=config.resync_seconds,
                        help="re-check every detector this often, besides watching (default %(default)s)")
    parser.add_argument("--peering", default="",
                        help="kopf peering object for several replicas (default: standalone, one replica)")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    namespaces = () if args.all_namespaces else (tuple(args.namespace) or config.namespaces)
    config = dataclasses.replace(config, namespaces=namespaces, liveness=args.liveness,
                                 resync_seconds=args.resync_seconds)
    return args, config


STUCK_STOP_SECONDS = 30.0  # after a root task of kopf failed, kopf.run returns within seconds unless it hangs


class StuckStopWatch(logging.Handler):
    """Restarts the operator's process when kopf hangs on its way out after a failure.

    When one of kopf's root tasks fails (kopf logs "<task> has failed", e.g. a watch answered 404 while a
    restarted API server was still publishing the CRDs), ``kopf.run`` normally returns within seconds and
    :func:`main` starts it again. Seen in CI: a watcher then waiting for re-authentication kept kopf from ever
    returning, its liveness endpoint gone. If ``kopf.run`` has not returned ``seconds`` after such a failure,
    ``restart`` runs (default: re-execute this process with its own command line, same PID: state lives in the
    cluster). ``disarm()`` when ``kopf.run`` returned. Attached to the ``kopf`` logger by :func:`main`.
    """

    def __init__(self, seconds: float = STUCK_STOP_SECONDS, restart: Callable[[], None] | None = None) -> None:
        super().__init__(logging.ERROR)
        self.seconds = seconds
        self.restart = restart or _reexec
        self._timer: threading.Timer | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if (self._timer is None and record.name.startswith("kopf._core.reactor")
                and "has failed" in record.getMessage()):
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        logging.getLogger("yolo_operator").error(
            "kopf has not stopped %.0f s after a failure: restarting the operator process", self.seconds)
        self.restart()


def _reexec() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execv(sys.executable, sys.orig_argv)  # sockets are not inherited: the liveness port is free again


def main(argv: Sequence[str] | None = None) -> int:
    args, config = parse_args(argv, OperatorConfig.from_env())
    kopf.configure(verbose=args.verbose, debug=args.debug)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    registry = handlers.register(kopf.OperatorRegistry(), config)
    watch = StuckStopWatch()
    logging.getLogger("kopf").addHandler(watch)
    try:
        return _run_until_stopped(args, config, registry, watch)
    finally:  # main() may run in-process (tests): leave no armed handler on the kopf logger behind
        watch.disarm()
        logging.getLogger("kopf").removeHandler(watch)


def _run_until_stopped(args: argparse.Namespace, config: OperatorConfig, registry: kopf.OperatorRegistry,
                       watch: StuckStopWatch) -> int:
    logger = logging.getLogger("yolo_operator")
    failures = 0
    while True:
        started = time.monotonic()
        watch.disarm()
        try:
            kopf.run(
                registry=registry,
                memo=kopf.Memo(config=config),
                standalone=not args.peering,
                peering_name=args.peering or None,
                clusterwide=not config.namespaces,
                namespaces=config.namespaces,
                liveness_endpoint=config.liveness or None,
            )
            return 0  # stopped by a signal
        except Exception as error:  # noqa: BLE001 - e.g. a watch answered 404 while the API server was restarting
            watch.disarm()
            # kopf stops entirely when one watch fails for good. Start it again in-process (state lives in
            # the cluster, so nothing is lost) with a growing pause, instead of exiting into a restart loop.
            failures = 1 if time.monotonic() - started > 300 else failures + 1
            pause = min(60.0, 2.0 ** failures)
            logger.warning("the operator stopped (%s: %s); starting it again in %.0f s (failure %d in a row)",
                           type(error).__name__, error, pause, failures)
            time.sleep(pause)


if __name__ == "__main__":
    raise SystemExit(main())
