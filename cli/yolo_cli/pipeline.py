"""Run frames through a client with several requests in flight, handing results back in input order.

Frames are grouped into batches of ``batch`` (images per request / per forward); up to ``concurrency``
batches run at once on a thread pool (HTTP, gRPC and OpenCV release the GIL), so the predictor's
dynamic batcher sees concurrent requests. ``on_result`` is called in the main thread, strictly in input
order, so writers need no locking and an interrupted run leaves a complete prefix of the output.

Ctrl-C (SIGINT) sets a flag instead of raising inside a writer: the loop stops taking new frames,
drops what is in flight and returns ``interrupted=True`` so the caller can close its files cleanly. A
second Ctrl-C raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from itertools import islice

from .clients import Params, Result
from .errors import EXIT_INTERRUPTED, UnreadableInput
from .sources import Frame, load_image


@dataclass
class Outcome:
    frames: int = 0  # frames with a result
    skipped: int = 0  # frames that could not be read
    detections: int = 0
    interrupted: bool = False


class StopFlag:
    """Turns the first SIGINT into a flag; the second ends the process at once (exit 130).

    Raising KeyboardInterrupt on the second one is not enough: the interpreter would still wait at exit
    for the worker threads' requests in flight (up to ``--timeout`` each). Output already flushed stays
    (every JSON Lines record, every finished image); a video being written may lack its index."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous = None

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ANN001
        self.event.set()
        signal.signal(signal.SIGINT, self._abort)
        print("\ninterrupted: finishing the output written so far (Ctrl-C again to abort)", file=sys.stderr)

    @staticmethod
    def _abort(signum, frame) -> None:  # noqa: ANN001
        print("\naborted", file=sys.stderr)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    def __exit__(self, *exc) -> None:
        # once interrupted, a second Ctrl-C aborts until the process ends: it may still be waiting for the
        # worker threads' requests in flight when the interpreter shuts down
        if self._previous is not None and not self.event.is_set():
            signal.signal(signal.SIGINT, self._previous)

    @property
    def stopped(self) -> bool:
        return self.event.is_set()


def _batches(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    iterator = iter(frames)
    while chunk := list(islice(iterator, size)):
        yield chunk


Item = tuple[Frame, Result | None, str | None]


def _work(client, frames: list[Frame], params: Params) -> list[Item]:  # noqa: ANN001
    """Load (and encode) each frame, then one request for the readable ones."""
    ready: list[Frame] = []
    errors: dict[int, str] = {}
    for frame in frames:
        try:
            load_image(frame, need_bytes=client.needs_bytes)
            ready.append(frame)
        except UnreadableInput as error:
            errors[frame.index] = str(error)
    results = iter(client.detect(ready, params) if ready else [])
    out: list[Item] = []
    for frame in frames:
        if frame.index in errors:
            out.append((frame, None, errors[frame.index]))
        else:
            out.append((frame, next(results), None))
    return out


def run(
    frames: Iterable[Frame],
    client,  # noqa: ANN001 - LocalClient | RestClient | GrpcClient
    params: Params,
    on_result: Callable[[Frame, Result], None],
    on_skip: Callable[[Frame, str], None],
    *,
    batch: int = 1,
    concurrency: int = 1,
    stop: StopFlag | None = None,
    progress=None,  # noqa: ANN001 - a tqdm bar or None
) -> Outcome:
    outcome = Outcome()
    workers = max(1, min(concurrency, getattr(client, "max_workers", concurrency)))
    window = workers * 2  # batches submitted ahead, so a worker never waits for the writer
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="yolo-request")
    pending: deque[Future] = deque()

    def drain_one() -> bool:
        """Hand the oldest batch's results out; False if interrupted while waiting."""
        future = pending[0]
        while True:
            if stop is not None and stop.stopped:
                return False
            try:
                items = future.result(timeout=0.1)
                break
            except FutureTimeout:
                continue
        pending.popleft()
        for frame, result, error in items:
            if result is None:
                outcome.skipped += 1
                on_skip(frame, error or "unreadable")
            else:
                outcome.frames += 1
                outcome.detections += len(result)
                on_result(frame, result)
            frame.image = frame.data = None  # free the pixels early
            if progress is not None:
                progress.update(1)
        return True

    try:
        for chunk in _batches(frames, batch):
            if stop is not None and stop.stopped:
                outcome.interrupted = True
                break
            pending.append(pool.submit(_work, client, chunk, params))
            while len(pending) >= window:
                if not drain_one():
                    outcome.interrupted = True
                    break
            if outcome.interrupted:
                break
        while pending and not outcome.interrupted:
            if not drain_one():
                outcome.interrupted = True
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
    return outcome
