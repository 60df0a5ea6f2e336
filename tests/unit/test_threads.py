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


def test_a_thread_keeps_nothing_of_the_last_call_while_it_waits():
    """A finished call's arguments and result are freed (a batch — GPU memory on CUDA — or a request's
    bytes must not stay alive in an idle thread until the next call)."""
    import gc
    import weakref

    class Payload:
        pass

    pool = WorkerThreads(1, "unit-refs")
    held = [Payload()]
    alive = weakref.ref(held[0])

    async def main():
        assert await pool.run(lambda item: item, held[0]) is held[0]

    try:
        asyncio.run(main())
        held.clear()
        gc.collect()
        assert alive() is None
    finally:
        pool.shutdown(wait=True)


def test_a_pool_dropped_without_shutdown_ends_its_threads():
    import gc
    import time

    pool = WorkerThreads(2, "unit-dropped")
    asyncio.run(asyncio.wait_for(_call(pool, int), 5))
    threads = [thread for thread in threading.enumerate() if thread.name.startswith("unit-dropped")]
    assert len(threads) == 2
    del pool
    gc.collect()
    deadline = time.monotonic() + 5
    while any(thread.is_alive() for thread in threads) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(thread.is_alive() for thread in threads)


async def _call(pool, call, *args):
    return await pool.run(call, *args)


def test_shutdown_can_cancel_the_calls_not_started():
    pool = WorkerThreads(1, "unit-cancel-queued")
    gate, ran = threading.Event(), []

    async def main():
        running = pool.run(gate.wait, 5)
        queued = [pool.run(ran.append, index) for index in range(3)]
        await asyncio.sleep(0.05)  # the first call has started
        pool.shutdown(cancel_queued=True)
        gate.set()
        assert await running is True
        assert all(future.cancelled() for future in queued)

    try:
        asyncio.run(main())
    finally:
        pool.shutdown(wait=True)
    assert ran == []


def test_base_exceptions_reach_the_awaiter_and_stop_iteration_does_not_hang_it():
    pool = WorkerThreads(1, "unit-base")

    def exits():
        raise SystemExit(3)

    def stops():
        raise StopIteration

    async def main():
        with pytest.raises(SystemExit):
            await pool.run(exits)
        with pytest.raises(RuntimeError, match="StopIteration"):
            await asyncio.wait_for(pool.run(stops), 5)

    try:
        asyncio.run(main())
    finally:
        pool.shutdown(wait=True)


def test_the_interpreter_waits_at_exit_for_the_calls_queued():
    """As with ThreadPoolExecutor: a call in progress when the main thread ends runs to its end (a forward
    or a decode is not cut off by the interpreter's finalisation)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import asyncio, time
        from predictor.threads import WorkerThreads
        pool = WorkerThreads(1, "exit")
        def slow():
            time.sleep(0.3)
            print("finished", flush=True)
        async def main():
            pool.run(slow)
            await asyncio.sleep(0.05)
        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "finished"
