"""A fixed set of worker threads whose results come back to the event loop as asyncio futures.

``loop.run_in_executor(ThreadPoolExecutor, ...)`` costs the event loop, per call: a
``concurrent.futures.Future`` (with its own ``threading.Condition``), the chaining of that future to an
asyncio one, and ``ThreadPoolExecutor._adjust_thread_count``, which asks the pure-Python
``threading.Semaphore`` of idle threads on every submit — with every thread busy (the pool's state under
load) that is a ``Condition.wait(0)``: a new lock, a waiter list, two releases and acquires. Under load
that was a fifth of the event loop's Python time per small gRPC request (``docs/dataplane.md``). Here a
call is one asyncio future and one put on a C ``SimpleQueue``; the thread settles the future through
``call_soon_threadsafe``.

As with ``ThreadPoolExecutor``: the threads are joined at interpreter exit after the calls queued so far
(a forward or a decode is never cut off mid-call by the interpreter's finalisation), and they end once the
pool is shut down or garbage-collected.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["WorkerThreads"]

_STOP = None
_live_queues: weakref.WeakSet = weakref.WeakSet()  # of every pool with threads: stopped at interpreter exit
_exit_hooked = False


class _Calls(queue.SimpleQueue):  # (a subclass: SimpleQueue itself takes no weak references)
    threads = 0


def _stop(calls: _Calls) -> None:
    for _ in range(calls.threads):
        calls.put(_STOP)
    calls.threads = 0


def _stop_all_at_exit() -> None:
    for calls in list(_live_queues):
        _stop(calls)


def _track(calls: _Calls) -> None:
    global _exit_hooked
    if not _exit_hooked:  # run _stop_all_at_exit when threading._shutdown starts, before it joins the
        threading._register_atexit(_stop_all_at_exit)  # threads (as concurrent.futures does)
        _exit_hooked = True
    _live_queues.add(calls)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled while it ran
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _run_one(job: tuple) -> None:
    """One call; its arguments and result die with this frame (the thread keeps nothing while it waits)."""
    loop, future, call, args = job
    if future.done():  # cancelled while it waited (a read across threads: at worst the call still runs)
        return
    try:
        result, error = call(*args), None
    except StopIteration as exc:  # an asyncio future refuses it (TypeError): its awaiter would hang
        result, error = None, RuntimeError(f"StopIteration raised in a worker thread: {exc!r}")
    except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
        result, error = None, exc
    try:
        loop.call_soon_threadsafe(_settle, future, result, error)
    except RuntimeError:  # the loop is closed: nobody awaits it any more
        pass


def _serve(calls: _Calls) -> None:
    while (job := calls.get()) is not _STOP:
        _run_one(job)
        del job


class WorkerThreads:
    """``threads`` threads named ``{name}_{i}``, started on the first call.

    :meth:`run` is called on the event loop; the call runs in one of the threads and its result (or the
    exception it raised) settles the returned future on that loop. A future cancelled before its call
    starts skips the call.
    """

    def __init__(self, threads: int, name: str):
        if threads < 1:
            raise ValueError(f"{name}: needs at least one thread, got {threads}")
        self.threads = threads
        self.name = name
        self._calls = _Calls()
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
        calls = self._calls
        calls.threads = self.threads
        _track(calls)
        weakref.finalize(self, _stop, calls)  # threads hold the queue only, never the pool
        for index in range(self.threads):
            thread = threading.Thread(target=_serve, args=(calls,), name=f"{self.name}_{index}")
            thread.start()
            self._started.append(thread)

    def shutdown(self, wait: bool = False, cancel_queued: bool = False) -> None:
        """Stop the threads once the calls queued so far have run — or, with ``cancel_queued``, cancel the
        futures of the calls that have not started (call on the event loop the calls were made on)."""
        self._closed = True
        if cancel_queued:
            try:
                while True:
                    job = self._calls.get_nowait()
                    if job is _STOP:  # (not ours to take: only _stop puts these)
                        self._calls.put(job)
                        break
                    job[1].cancel()
            except queue.Empty:
                pass
        _stop(self._calls)
        if wait:
            for thread in self._started:
                thread.join()
