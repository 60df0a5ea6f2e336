"""Optional bearer-token check for REST and gRPC callers (``--auth_token_file``; off when empty).

The in-pod option beside a service mesh or gateway doing authentication: the token is read once at start-up
from a file (the operator mounts the Secret that ``spec.access.tokenSecret`` names; Cloud Run and the like
mount secrets as files too). Callers send ``Authorization: Bearer <token>`` (REST header, gRPC metadata key
``authorization``). Comparison is constant-time (``hmac.compare_digest``). A missing or wrong token gets
HTTP 401 / gRPC ``UNAUTHENTICATED`` with no detail (nothing about which part was wrong).

Exempt, so that the kubelet's probes and Prometheus keep working (a NetworkPolicy limits who reaches them):
the health and readiness routes (REST ``/``, ``/v2/health/live``, ``/v2/health/ready``, ``GET /v1/models/<m>``,
``GET /v2/models/<m>[/versions/<v>]/ready``; gRPC ``ServerLive``, ``ServerReady``, ``ModelReady``) and
``/metrics``.

Hooks: ``BearerTokenMiddleware`` (ASGI, added by ``predictor.server.install``) and ``install_grpc`` (adds a
server interceptor to the gRPC server KServe starts; KServe offers no parameter for one).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["BearerTokenMiddleware", "TokenCheck", "install", "install_grpc", "load_token"]

EXEMPT_REST = re.compile(r"^/(metrics|v2/health/(live|ready)|v1/models/[^/:]+|v2/models/[^/]+(/versions/[^/]+)?/ready)?$")
EXEMPT_GRPC = frozenset({"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady",
                         "/inference.GRPCInferenceService/ModelReady"})
_UNAUTHORIZED_BODY = b'{"error": "unauthorized"}'


def load_token(path: str) -> bytes:
    """The token in ``path`` without surrounding whitespace (a Secret created from a file often ends in a newline).
    Raises ``ValueError`` when the file is empty: an empty token would let everyone in."""
    token = Path(path).read_bytes().strip()
    if not token:
        raise ValueError(f"the auth token file {path} is empty")
    return token


class TokenCheck:
    """Compares an ``Authorization`` value with ``Bearer <token>``: the scheme in any case and followed by one or
    more spaces (RFC 7235 section 2.1: ``credentials = auth-scheme [ 1*SP ... ]``, the scheme case-insensitive),
    the token in constant time."""

    def __init__(self, token: bytes) -> None:
        self._token = token

    def allows(self, authorization: bytes | str | None) -> bool:
        if authorization is None:
            return False
        given = authorization.encode("latin-1", "replace") if isinstance(authorization, str) else authorization
        scheme, _, credentials = given.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.lstrip(b" "), self._token)


class BearerTokenMiddleware:
    """ASGI middleware: 401 for an HTTP request without the right bearer token, unless its route is exempt."""

    def __init__(self, app: Any, check: TokenCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._exempt(scope):
            await self.app(scope, receive, send)
            return
        authorization = next((value for key, value in scope.get("headers", ()) if key == b"authorization"), None)
        if self.check.allows(authorization):
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": _UNAUTHORIZED_BODY})

    @staticmethod
    def _exempt(scope: dict) -> bool:
        return scope.get("method") in ("GET", "HEAD") and bool(EXEMPT_REST.match(scope.get("path", "")))


def install(app: Any, token_file: str) -> None:
    """The one hook (``python -m predictor``, after ``predictor.server.install``): the token check on the REST app
    (outermost middleware: before any body is read) and on the gRPC server. Raises ``OSError``/``ValueError`` for
    a missing or empty token file."""
    check = TokenCheck(load_token(token_file))
    app.add_middleware(BearerTokenMiddleware, check=check)
    install_grpc(check)


def _grpc_interceptor(check: TokenCheck) -> Any:
    import grpc
    from grpc import aio

    async def refuse(_: Any, context: aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "")

    class BearerTokenInterceptor(aio.ServerInterceptor):
        async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                    details: grpc.HandlerCallDetails) -> Any:
            if details.method in EXEMPT_GRPC:
                return await continuation(details)
            metadata: Iterable[tuple[str, Any]] = details.invocation_metadata or ()
            if check.allows(next((value for key, value in metadata if key == "authorization"), None)):
                return await continuation(details)
            handler = await continuation(details)
            if handler is None:  # an unknown method: let gRPC answer UNIMPLEMENTED
                return None
            if handler.request_streaming or handler.response_streaming:
                return grpc.stream_stream_rpc_method_handler(refuse)  # type: ignore[arg-type]
            return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=handler.request_deserializer)

    return BearerTokenInterceptor()


def install_grpc(check: TokenCheck) -> None:
    """Put the token check first on the gRPC server that ``kserve.ModelServer.start`` creates
    (:func:`predictor.kserve_grpc.kserve_aio`; KServe offers no parameter for an interceptor). Called once,
    before ``ModelServer.start``; a second call adds nothing."""
    from predictor.kserve_grpc import kserve_aio

    aio = kserve_aio()
    if not aio.first:
        aio.first.append(_grpc_interceptor(check))
