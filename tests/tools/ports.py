"""Free TCP ports on 127.0.0.1 for the servers the tests start (the one place that picks them)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (the kernel picks it; it is closed again on return)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> tuple[int, int]:
    """Two distinct free ports, e.g. a predictor's HTTP and gRPC ports."""
    first, second = free_port(), free_port()
    while second == first:
        second = free_port()
    return first, second
