"""Every error the predictor answers with, its HTTP status, its gRPC code, and how it is logged.

==========================  ====  ====================  =================================================
error                       HTTP  gRPC                  when
==========================  ====  ====================  =================================================
:class:`RequestError`       400   INVALID_ARGUMENT      the request (body, tensor, image, parameter) is bad
:class:`PayloadTooLarge`    413   RESOURCE_EXHAUSTED    over ``--max_request_bytes`` (compressed or not)
:class:`UnsupportedMedia`   415   INVALID_ARGUMENT      a ``Content-Encoding`` other than gzip/identity
:class:`Overloaded`         503   UNAVAILABLE           over ``--max_queued_images``; ``Retry-After: 1``
==========================  ====  ====================  =================================================

All are :class:`grpc_interceptor.exceptions.GrpcException`: KServe's gRPC interceptor answers them with
their own ``status_code`` and ``details`` (and writes no log record); the REST handler
:func:`service_error_handler` answers ``{"error": message}`` with ``http_status``. FastAPI's own
``{"detail": ...}`` answers (unknown route, wrong method, a body FastAPI validates) are rewritten to the
same ``{"error": ...}`` shape.

Log policy: **one line per rejected request**, ``rejected request <id> (<protocol>): <status> <code>:
<message>``, never a traceback (:func:`log_rejection`). KServe's own handlers write a traceback for every
client error they answer (model not found, its JSON decoding, ...): :class:`OneLineClientErrors` keeps
their line and drops the traceback. Tracebacks are written only for exceptions that are none of these,
i.e. for our own bugs. Refusals for overload are counted (``yolo_request_errors_total{code="overloaded"}``)
and not logged: an overloaded server should not spend its time writing logs. The C libraries that
decode images write their own line to the process's stderr for every corrupt image (``libpng error:
...``, ``Corrupt JPEG data: ...``, OpenCV's ``[ WARN:...]``); :func:`filter_native_stderr` drops those
lines (the rejection's own line says what was wrong) and passes everything else through.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from grpc import StatusCode
from grpc_interceptor.exceptions import GrpcException

__all__ = [
    "MAX_MESSAGE_CHARS",
    "OneLineClientErrors",
    "Overloaded",
    "PayloadTooLarge",
    "RequestError",
    "ServiceError",
    "UnsupportedMedia",
    "filter_native_stderr",
    "install_handlers",
    "log_rejection",
    "request_id",
]

log = logging.getLogger("predictor.requests")

# An error message quotes what the client sent (a parameter value, the first bytes of an image): bounded,
# so that neither the answer nor the log line grows with the request.
MAX_MESSAGE_CHARS = 1000
REQUEST_ID_HEADER = "x-request-id"
_TRUNCATED = " ... (truncated)"


def _bounded(text: str) -> str:
    text = " ".join(str(text).split())  # one line, whatever the client put in it
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - len(_TRUNCATED)] + _TRUNCATED
    return text


class ServiceError(GrpcException):
    """Base of the predictor's own errors: ``http_status``, gRPC ``status_code``, ``code`` (metric label)."""

    http_status: int = HTTPStatus.BAD_REQUEST
    status_code: StatusCode = StatusCode.INVALID_ARGUMENT
    log_rejections: bool = True

    def __init__(self, reason: str, code: str = "invalid_input"):
        self.reason = _bounded(reason)
        super().__init__(details=self.reason)
        self.code = code
        self.logged = False

    def __str__(self) -> str:
        return self.reason


class RequestError(ServiceError):
    """A client error: HTTP 400, gRPC INVALID_ARGUMENT."""


class PayloadTooLarge(RequestError):
    """The request body (or its gzip content) is over ``--max_request_bytes``: HTTP 413, RESOURCE_EXHAUSTED
    (what gRPC itself answers for a message over its receive limit)."""

    http_status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    status_code = StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, reason: str):
        super().__init__(reason, code="payload_too_large")


class UnsupportedMedia(RequestError):
    """A ``Content-Encoding`` the server does not decode: HTTP 415."""

    http_status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE

    def __init__(self, reason: str):
        super().__init__(reason, code="content_encoding")


class Overloaded(ServiceError):
    """Too many images in flight (``--max_queued_images``): retry later (HTTP 503 + ``Retry-After``,
    gRPC UNAVAILABLE). Counted, not logged."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    status_code = StatusCode.UNAVAILABLE
    log_rejections = False

    def __init__(self, reason: str):
        super().__init__(reason, code="overloaded")


# ------------------------------------------------------------------------------------------------------
# logging
# ------------------------------------------------------------------------------------------------------
def request_id(headers: Mapping[str, str] | None = None, given: Any = None) -> str:
    """The request's id: the protocol's ``id`` field, else the ``X-Request-ID`` header, else a new one."""
    if given:
        return _bounded(str(given))[:128]
    value = (headers or {}).get(REQUEST_ID_HEADER)
    if value:
        return _bounded(value)[:128]
    return uuid.uuid4().hex[:16]


def log_rejection(error: ServiceError, protocol: str, rid: str) -> None:
    """The one log line of a rejected request (none for refusals under overload)."""
    if error.logged:
        return
    error.logged = True
    if error.log_rejections:
        log.warning("rejected request %s (%s): %d %s: %s", rid, protocol, int(error.http_status), error.code,
                    error.reason)


_CLIENT_ERRORS: tuple[type[BaseException], ...] | None = None


def _client_errors() -> tuple[type[BaseException], ...]:
    global _CLIENT_ERRORS
    if _CLIENT_ERRORS is None:
        from kserve import errors as kserve_errors

        _CLIENT_ERRORS = (
            ServiceError, kserve_errors.InvalidInput, kserve_errors.ModelNotFound, kserve_errors.ModelNotReady,
            kserve_errors.ServerNotReady, kserve_errors.ServerNotLive, kserve_errors.UnsupportedProtocol,
            kserve_errors.NoModelReady,
        )
    return _CLIENT_ERRORS


class OneLineClientErrors(logging.Filter):
    """On KServe's logger: a record about a client error (KServe's or ours) keeps one line, without the
    traceback; records about anything else (our bugs) are left whole. Without request logs
    (``--request_logs`` off), KServe's per-call ``grpc method: ...`` line goes too, as uvicorn's access
    log does for REST."""

    def __init__(self, request_logs: bool = False):
        super().__init__()
        self.request_logs = request_logs

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.request_logs and record.levelno <= logging.INFO and str(record.msg).startswith("grpc method:"):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not isinstance(exc, _client_errors()):
            return True
        if isinstance(exc, ServiceError) and (exc.logged or not exc.log_rejections):
            return False
        record.msg = "rejected request (kserve): %s: %s"
        record.args = (type(exc).__name__, _bounded(str(exc)))
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# Lines the image decoders' C code writes to stderr about the image at hand (libpng, libjpeg, OpenCV).
DECODER_CHATTER = re.compile(
    rb"(libpng (warning|error): |Corrupt JPEG data: |Premature end of JPEG file|Invalid SOS parameters|"
    rb"Unsupported marker type|Bogus |Invalid JPEG file structure|\[ ?(WARN|ERROR):\d+@)"
)
_STDERR_FILTER = """
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
chatter = re.compile(sys.argv[1].encode("latin-1"))
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if not chatter.match(line):
        out.write(line)
        out.flush()
"""


def filter_native_stderr() -> None:
    """Route this process's stderr (file descriptor 2) through a child process that drops
    :data:`DECODER_CHATTER` and passes every other line on, unchanged and in order.

    A child rather than a thread: it outlives this process and drains the pipe, so that a crash report
    written to stderr as the process dies still reaches the log. It ignores SIGINT/SIGTERM and ends when
    the pipe closes, i.e. with this process.
    """
    import subprocess
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", _STDERR_FILTER, DECODER_CHATTER.pattern.decode("latin-1")],
            stdin=subprocess.PIPE, stdout=2, stderr=subprocess.DEVNULL, close_fds=True,
        )
    except OSError as error:  # serve anyway, with the decoders' lines
        log.warning("cannot filter the image decoders' stderr lines: %s", error)
        return
    os.dup2(child.stdin.fileno(), 2)
    child.stdin.close()


# ------------------------------------------------------------------------------------------------------
# REST handlers
# ------------------------------------------------------------------------------------------------------
def _protocol_of(path: str) -> str:
    return "v1" if path.startswith("/v1/") else "v2"


def error_response(error: ServiceError, *, path: str, headers: Mapping[str, str] | None = None) -> Any:
    """Log ``error`` (once) and answer it: ``{"error": message}`` with its HTTP status."""
    from fastapi.responses import JSONResponse

    rid = request_id(headers)
    log_rejection(error, _protocol_of(path), rid)
    extra = {"Retry-After": "1"} if isinstance(error, Overloaded) else {}
    return JSONResponse(status_code=int(error.http_status), content={"error": error.reason},
                        headers={REQUEST_ID_HEADER: rid, **extra})


async def service_error_handler(request: Any, exc: ServiceError) -> Any:
    return error_response(exc, path=request.url.path, headers=request.headers)


async def http_exception_handler(request: Any, exc: Any) -> Any:
    """FastAPI/Starlette ``HTTPException`` (404 route, 405 method, ...) → ``{"error": detail}``."""
    from fastapi.responses import JSONResponse

    rid = request_id(request.headers)
    if exc.status_code < 500:
        log.warning("rejected request %s (%s): %d http: %s", rid, _protocol_of(request.url.path),
                    exc.status_code, _bounded(str(exc.detail)))
    return JSONResponse(status_code=exc.status_code, content={"error": _bounded(str(exc.detail))},
                        headers={**(getattr(exc, "headers", None) or {}), REQUEST_ID_HEADER: rid})


async def validation_error_handler(request: Any, exc: Any) -> Any:
    """FastAPI's request validation (422 ``{"detail": [...]}``) → 400 ``{"error": ...}``."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', '')}" for e in exc.errors()[:5]
    )
    return error_response(RequestError(f"invalid request: {problems}", "request"), path=request.url.path,
                          headers=request.headers)


def install_handlers(app: Any, *, request_logs: bool = False) -> None:
    """Register the REST handlers above on ``app`` and the one-line filter on KServe's logger."""
    from fastapi.exceptions import RequestValidationError
    from kserve.logging import logger as kserve_logger
    from starlette.exceptions import HTTPException

    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(HTTPException, http_exception_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    for old in [f for f in kserve_logger.filters if isinstance(f, OneLineClientErrors)]:
        kserve_logger.removeFilter(old)
    kserve_logger.addFilter(OneLineClientErrors(request_logs))
