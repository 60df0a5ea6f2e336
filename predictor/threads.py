"""A fixed set of worker threads whose results come back to the event loop as asyncio futures.

``loop.run_in_executor(ThreadPoolExecutor, ...)`` costs the event loop, per call: a
``concurrent.futures.Future`` (with its own ``threading.Condition``), the chaining of that future to an
asyncio one, and ``ThreadPoolExecutor._adjust_thread_count``, which asks the pure-Python
``threading.Semaphore`` of idle threads on every submit — with every thread busy (the pool's state under
load) that is a ``Condition.wait(0)``: a new lock, a waiter list, two releases and acquires. Under load
that was a tenth of the event loop's time per small gRPC request (``docs/dataplane.md``). Here a call is
one asyncio future and one put on a C ``SimpleQueue``; the thread settles the future through
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["WorkerThreads"]


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled while it ran
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class WorkerThreads:
    """``threads`` daemon threads named ``{name}_{i}``, started on the first call.

    :meth:`run` is called on the event loop; the call runs in one of the threads and its result (or the
    exception it raised) settles the returned future on that loop. A future cancelled before its call
    starts skips the call.
    """

    def __init__(self, threads: int, name: str):
        if threads < 1:
            raise ValueError(f"{name}: needs at least one thread, got {threads}")
        self.threads = threads
        self.name = name
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._started: list[threading.Thread] = []
        self._closed = False

    def run(self, call: Callable[..., Any], *args: Any) -> asyncio.Future:
        if self._closed:
            raise RuntimeError(f"{self.name}: shut down")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._started:
            self._start()
        self._calls.put((loop, future, call, args))
        return future

    def _start(self) -> None:
        for index in range(self.threads):
            thread = threading.Thread(target=self._work, name=f"{self.name}_{index}", daemon=True)
            thread.start()
            self._started.append(thread)

    def _work(self) -> None:
        calls = self._calls
        while (job := calls.get()) is not None:
            loop, future, call, args = job
            if future.done():  # cancelled while it waited (a read across threads: at worst the call runs)
                continue
            try:
                result, error = call(*args), None
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody awaits it any more
                pass
            del job, future, result, error  # no reference kept while the thread waits

    def shutdown(self, wait: bool = False) -> None:
        """Stop the threads once the calls queued so far have run (or been skipped, if cancelled)."""
        self._closed = True
        for _ in self._started:
            self._calls.put(None)
        if wait:
            for thread in self._started:
                thread.join()
