"""Generated ``Authorization`` values (REST header, gRPC metadata) against a predictor started with
``--auth_token_file`` (predictor/auth.py).

The oracle is the rule itself: a value passes exactly when it is ``Bearer`` (any case), one or more spaces and
the token (RFC 7235 section 2.1); everything else gets 401 ``{"error": "unauthorized"}`` / ``UNAUTHENTICATED``
with no detail, never a 5xx. Over the module: the same invariants as the request fuzzing (alive, bounded RSS,
at most one log line per refusal, no traceback).
"""

from __future__ import annotations

import re

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kserve.protocol.infer_type import serialize_byte_tensor

from tests.fuzz.conftest import Watch
from tests.fuzz.test_fuzz_requests import FUZZ
from tests.service.helpers import INPUT_SIZE, v2_request
from tests.tools.images import encode, gradient
from tests.tools.predictor_server import predictor_server

TOKEN = "fuzz-T0ken_with.chars~"  # noqa: S105 - a test token
VALID = re.compile(r"(?i:bearer) +" + re.escape(TOKEN))
IMAGE = encode(".jpg", gradient(32, 32))

# what an HTTP client can put in a header value (no CR, LF or NUL; h11 strips the outer whitespace)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80)
schemes = st.sampled_from(["Bearer", "bearer", "BEARER", "BeArEr", "Basic", "Bearer:", "Token", ""])
authorizations = st.one_of(
    header_text,
    st.builds(lambda scheme, gap, token, tail: f"{scheme}{gap}{token}{tail}", schemes,
              st.sampled_from(["", " ", "  ", "\t", " \t"]),
              st.sampled_from([TOKEN, TOKEN.upper(), TOKEN[:-1], TOKEN + TOKEN[-1], "", "x" * 4000]),
              st.one_of(st.just(""), header_text)),
)


@pytest.fixture(scope="module")
def guarded(tiny_weights, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("fuzz-auth") / "token"
    token_file.write_text(TOKEN + "\n")
    args = ["--input_size", str(INPUT_SIZE), "--auth_token_file", str(token_file), "--warmup=false"]
    with predictor_server(tiny_weights, extra_args=args) as running:
        yield running


@pytest.fixture(scope="module")
def guard_watch(guarded):
    good = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=60) as client:  # warm: first-request allocations are not growth
        for _ in range(3):
            assert client.post(guarded.infer_url, json=v2_request(IMAGE), headers=good).status_code == 200
    state = Watch(guarded, guarded.rss_bytes(), len(guarded.log_text().splitlines()), headers=good)
    yield state
    state.check()


@pytest.fixture(scope="module")
def guarded_stub(guarded):
    with grpc.insecure_channel(guarded.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@FUZZ
@given(authorization=authorizations)
def test_rest_authorization(guarded, guard_watch, authorization):
    authorization = authorization.strip(" \t")  # h11 sends no outer whitespace (and strips it on receipt)
    with httpx.Client(timeout=120) as http:
        response = http.post(guarded.infer_url, json=v2_request(IMAGE), headers={"Authorization": authorization.encode("latin-1")})
    guard_watch.record(response.status_code)
    expected = 200 if VALID.fullmatch(authorization) else 401
    assert response.status_code == expected, f"{authorization!r}: {response.status_code} {response.text[:300]}"
    if expected == 401:
        assert response.json() == {"error": "unauthorized"}


# gRPC metadata values are printable ASCII (grpc refuses anything else on the client side)
ascii_authorizations = authorizations.filter(lambda value: value.isascii() and value.isprintable())


@FUZZ
@given(authorization=ascii_authorizations)
def test_grpc_authorization(guard_watch, guarded_stub, authorization):
    request = pb.ModelInferRequest(
        model_name="yolov7", raw_input_contents=[serialize_byte_tensor(np.array([IMAGE], dtype=object)).item()],
        inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])])
    try:
        guarded_stub.ModelInfer(request, metadata=(("authorization", authorization),), timeout=120)
        status = grpc.StatusCode.OK
    except grpc.RpcError as error:
        status = error.code()
        assert not error.details(), error.details()  # a refusal says nothing about why
    guard_watch.record(200 if status == grpc.StatusCode.OK else 401)
    expected = grpc.StatusCode.OK if VALID.fullmatch(authorization.strip(" \t")) else grpc.StatusCode.UNAUTHENTICATED
    assert status == expected, f"{authorization!r}: {status}"
