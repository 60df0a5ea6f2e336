"""predictor.threads.WorkerThreads: calls run in the named threads and settle asyncio futures."""

from __future__ import annotations

import asyncio
import threading

import pytest

from predictor.threads import WorkerThreads


def test_calls_run_in_the_named_threads_and_settle_their_futures():
    pool = WorkerThreads(2, "unit-pool")

    def fail():
        raise ValueError("broken image")

    async def main():
        names = await asyncio.gather(*(pool.run(lambda: threading.current_thread().name) for _ in range(20)))
        total = await pool.run(sum, [1, 2, 3])
        with pytest.raises(ValueError, match="broken image"):
            await pool.run(fail)
        return set(names), total

    try:
        names, total = asyncio.run(main())
        assert names <= {"unit-pool_0", "unit-pool_1"} and names and total == 6
    finally:
        pool.shutdown(wait=True)
    assert not any(thread.name.startswith("unit-pool") for thread in threading.enumerate())

    async def after_shutdown():
        return await pool.run(int)

    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(after_shutdown())


def test_a_call_cancelled_before_it_starts_is_skipped():
    pool = WorkerThreads(1, "unit-cancel")
    gate, ran = threading.Event(), []

    async def main():
        blocker = pool.run(gate.wait, 5)
        skipped = pool.run(ran.append, "skipped")
        skipped.cancel()
        gate.set()
        assert await blocker is True
        await pool.run(ran.append, "kept")  # runs after the cancelled one was passed over

    try:
        asyncio.run(main())
    finally:
        pool.shutdown(wait=True)
    assert ran == ["kept"]


def test_a_call_that_ends_after_its_loop_closed_leaves_the_thread_serving():
    pool = WorkerThreads(1, "unit-closed")
    gate = threading.Event()

    async def leave_one_running():
        pool.run(gate.wait, 5)  # its loop closes before it ends

    async def next_call():
        return await asyncio.wait_for(pool.run(lambda: "still serving"), 5)

    try:
        asyncio.run(leave_one_running())
        gate.set()
        assert asyncio.run(next_call()) == "still serving"
    finally:
        pool.shutdown(wait=True)


def test_at_least_one_thread():
    with pytest.raises(ValueError, match="at least one thread"):
        WorkerThreads(0, "none")
