"""predictor.errors: one table of error types (HTTP status, gRPC code), the one-line log policy."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from grpc import StatusCode
from kserve.errors import InvalidInput, ModelNotFound

from predictor import errors


@pytest.mark.parametrize(
    ("error", "http", "grpc_code"),
    [
        (errors.RequestError("bad"), 400, StatusCode.INVALID_ARGUMENT),
        (errors.PayloadTooLarge("big"), 413, StatusCode.RESOURCE_EXHAUSTED),
        (errors.UnsupportedMedia("br"), 415, StatusCode.INVALID_ARGUMENT),
        (errors.Overloaded("busy"), 503, StatusCode.UNAVAILABLE),
    ],
)
def test_each_error_carries_its_http_status_and_grpc_code(error, http, grpc_code):
    from grpc_interceptor.exceptions import GrpcException

    assert isinstance(error, GrpcException)  # KServe's interceptor answers status_code + details, no log
    assert (error.http_status, error.status_code, error.details) == (http, grpc_code, str(error))


def test_messages_are_one_bounded_line():
    error = errors.RequestError("value\nwith\r\nnewlines " + "x" * 5000)
    assert "\n" not in error.reason and len(error.reason) == errors.MAX_MESSAGE_CHARS
    assert error.reason.endswith("(truncated)")


def _record(exc: BaseException | None, msg: str = "Exception:") -> logging.LogRecord:
    info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("kserve", logging.ERROR, __file__, 1, msg, (), info)


def test_kserve_client_errors_keep_one_line_and_our_bugs_keep_their_traceback():
    keep = errors.OneLineClientErrors()
    for exc in (InvalidInput("Unrecognized request format"), ModelNotFound("nope")):
        record = _record(exc)
        assert keep.filter(record) and record.exc_info is None and record.levelno == logging.WARNING
        assert "rejected request (kserve)" in record.getMessage() and str(exc) in record.getMessage()
    already = errors.RequestError("bad")
    errors.log_rejection(already, "grpc", "id-1")
    assert not keep.filter(_record(already))  # logged once already, with its request id
    bug = _record(ZeroDivisionError("ours"))
    assert keep.filter(bug) and bug.exc_info is not None
    assert not keep.filter(logging.LogRecord("kserve", logging.INFO, __file__, 1, "grpc method: /x", (), None))
    assert errors.OneLineClientErrors(request_logs=True).filter(
        logging.LogRecord("kserve", logging.INFO, __file__, 1, "grpc method: /x", (), None))


def test_log_rejection_writes_one_line_with_the_request_id(caplog):
    caplog.set_level(logging.INFO, "predictor.requests")
    error = errors.RequestError("image 0: corrupt PNG", "decode")
    errors.log_rejection(error, "v2", errors.request_id({"x-request-id": "abc-1"}))
    errors.log_rejection(error, "v2", "again")  # an error is logged once
    errors.log_rejection(errors.Overloaded("busy"), "v2", "x")  # counted, not logged
    assert [r.getMessage() for r in caplog.records] == [
        "rejected request abc-1 (v2): 400 decode: image 0: corrupt PNG"]


def test_decoder_chatter_on_stderr_is_dropped_and_the_rest_kept():
    script = (
        "import os, sys\n"
        "from predictor.errors import filter_native_stderr\n"
        "filter_native_stderr()\n"
        "for line in [b'libpng error: IDAT: incorrect data check', b'kept 1',\n"
        "             b'Corrupt JPEG data: bad Huffman code', b'[ WARN:0@1.0] global grfmt_png.cpp:793 x',\n"
        "             b'Fatal Python error: kept 2']:\n"
        "    os.write(2, line + b'\\n')\n"
        "print('on stderr too', file=sys.stderr)\n"
        "os.abort()\n"  # dies at once: the filter still delivers what was written
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=root,
                            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode < 0
    assert result.stderr.decode().splitlines() == ["kept 1", "Fatal Python error: kept 2", "on stderr too"]
