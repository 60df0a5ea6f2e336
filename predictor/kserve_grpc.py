"""The interceptors of the gRPC server that KServe starts.

``kserve.protocol.grpc.server.GRPCServer.start`` builds its ``grpc.aio.server`` with a fixed interceptor tuple
(KServe's ``LoggingInterceptor`` and its error → status code mapping) and offers no parameter for others.
:func:`kserve_aio` wraps the ``aio`` module that KServe's server module uses, once, so that ``aio.server(...)``
gets the interceptors in ``first`` in front (the bearer-token check, :mod:`predictor.auth`) and loses the
placeholders — interceptors marked ``placeholder = True`` that stand in for one of KServe's and must cost
no call (with request logs off, :mod:`predictor.__main__`). Everything else is grpc.aio's own.
"""

from __future__ import annotations

from typing import Any

__all__ = ["kserve_aio"]


class _KServeAio:
    def __init__(self, aio: Any) -> None:
        self._aio = aio
        self.first: list[Any] = []

    def server(self, *args: Any, interceptors: Any = None, **kwargs: Any) -> Any:
        kept = [*self.first, *(i for i in interceptors or () if not getattr(i, "placeholder", False))]
        return self._aio.server(*args, interceptors=kept or None, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._aio, name)


def kserve_aio() -> _KServeAio:
    """KServe's gRPC server module's ``aio``, wrapped (once): call before ``ModelServer.start``."""
    from kserve.protocol.grpc import server as kserve_grpc

    if not isinstance(kserve_grpc.aio, _KServeAio):
        kserve_grpc.aio = _KServeAio(kserve_grpc.aio)
    return kserve_grpc.aio
