"""The fuzz tier: generated hostile requests against the real predictor (REST v1, REST v2, gRPC) and crafted
checkpoints against the loader.

Every case is judged the same way: a 4xx / ``INVALID_ARGUMENT`` (or a normal answer) naming the problem,
never a 5xx; and, over the whole run, the server's RSS growth bounded, at most one log line per rejected
request and no traceback, the server still answering, no sentinel file.

Size: ``YOLO_FUZZ_EXAMPLES`` examples per generated test (default 25: the tier fits in ``make test``);
``make fuzz`` runs 1000.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import httpx
import pytest

from tests.service.conftest import images, server, tiny_weights  # noqa: F401 - the service tests' server
from tests.service.helpers import b64, v2_request
from tests.tools.images import encode, gradient

FUZZ_EXAMPLES = int(os.environ.get("YOLO_FUZZ_EXAMPLES", "25"))
RSS_GROWTH_LIMIT = 200 * 1024 * 1024


@dataclass
class Watch:
    """What the fuzz run did to the server: requests sent, refused, and the server's state at the start."""

    server: object
    rss_start: int
    log_start: int
    headers: dict[str, str] = field(default_factory=dict)  # what a good request carries (a bearer token)
    sent: int = 0
    refused: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def record(self, status: int) -> None:
        self.sent += 1
        self.refused += status != 200
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def check(self) -> None:
        """The run's invariants: alive, answering, bounded memory and logs, no traceback."""
        import httpx

        from tests.service.helpers import v2_request

        assert self.server.alive(), self.server.log_tail()
        lines = self.server.log_text().splitlines()[self.log_start :]
        assert not [line for line in lines if "Traceback" in line], "\n".join(lines[-40:])
        # Python's one-time warnings (a library's deprecation, two lines each) are not per request
        warnings = [i for i, line in enumerate(lines) if "Warning: " in line]
        assert len(warnings) <= 5, "\n".join(lines[i] for i in warnings)
        lines = [line for i, line in enumerate(lines) if i not in warnings and i - 1 not in warnings]
        assert len(lines) <= self.refused, f"{len(lines)} log lines for {self.refused} refused requests"
        growth = self.server.rss_bytes() - self.rss_start
        assert growth < RSS_GROWTH_LIMIT, f"server RSS grew by {growth / 2**20:.0f} MiB over {self.sent} cases"
        with httpx.Client(timeout=60) as client:
            ok = client.post(self.server.infer_url, json=v2_request(encode(".jpg", gradient(64, 64))),
                             headers=self.headers)
        assert ok.status_code == 200, ok.text


@pytest.fixture(scope="session")
def watch(server):  # noqa: F811 - the imported fixture
    """One watch over the whole fuzz session; its invariants are checked when the session's tests end."""
    good = encode(".jpg", gradient(64, 64))
    with httpx.Client(timeout=60) as client:  # warm: first-request allocations are not growth
        for _ in range(3):
            client.post(server.infer_url, json=v2_request(good))
            client.post(server.predict_url, json={"instances": [b64(good)]})
    state = Watch(server, server.rss_bytes(), len(server.log_text().splitlines()))
    yield state
    print(f"\nfuzz: {state.sent} requests, statuses {dict(sorted(state.statuses.items()))}, "
          f"{len(server.log_text().splitlines()) - state.log_start} log lines, "
          f"RSS growth {(server.rss_bytes() - state.rss_start) / 2**20:.1f} MiB")
    state.check()
