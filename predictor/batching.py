"""Dynamic batching: coalesce the items (images) of concurrent requests into one call, split results back.

A request submits its items with :meth:`DynamicBatcher.submit` and awaits their results. One collector
task on the event loop takes the oldest waiting item, waits until ``max_batch_size`` items are queued
or ``max_delay_s`` has passed since that item arrived, and hands the batch to the processing stages.
Results go back to each item's own future, in order, so requests never see each other's results; an
exception raised by a stage fails that batch's items, and an exception *returned* in an item's place
fails that item alone.

Processing is one function or a pipeline of stages (e.g. load → forward → postprocess), each stage in
ONE dedicated worker thread of its own (so the event loop stays responsive, and two batches are never in
the same stage at once). Batch ``k + 1`` is formed as soon as batch ``k`` has *entered its last stage*
(with a single stage: when ``k`` is done): ``k + 1`` is then loaded and run while ``k`` is postprocessed,
and at most two batches are in flight — new items keep queueing for the batch after, so batches stay
large under load. (Forming ``k + 1`` already when ``k`` entered its forward was measured too, on an
H200: the batches then formed as fast as loading went, stayed small, and queued in front of the slowest
stage instead — 434 against 469 images/s at concurrency 64.)

:meth:`DynamicBatcher.run_alone` is the idle shortcut for batches of one item: prepare the item and run
it in the worker thread in one call, when nothing is queued or running.

The batcher knows nothing about images or models: ``stage(value) -> value`` does the work; the first
stage gets ``list[T]``, the last returns one result per item.

:class:`Admission` bounds the work in flight in front of it: a request takes slots (one per item) before
its items are prepared, and gives them back when it ends, however it ends; a request that does not fit
is refused at once rather than queued, so the queue and the memory it holds stay bounded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from predictor.threads import WorkerThreads

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["Admission", "DynamicBatcher"]


@dataclass(eq=False)
class _Pending(Generic[T]):
    item: T
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class Admission:
    """A counter of items admitted at once, at most ``limit``: :meth:`try_acquire` takes slots when they
    all fit (never some of them, never waiting), :meth:`release` gives them back.

    Args:
        limit: the most items admitted at once (>= 1).
        on_change: called with the new count after every change (e.g. to set a gauge).
    """

    def __init__(self, limit: int, *, on_change: Callable[[int], None] | None = None):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._on_change = on_change
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self, count: int) -> bool:
        """Take ``count`` slots if they all fit under the limit; False (and nothing taken) otherwise."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        with self._lock:
            if self._in_flight + count > self.limit:
                return False
            self._in_flight += count
            in_flight = self._in_flight
        if self._on_change is not None:
            self._on_change(in_flight)
        return True

    def release(self, count: int) -> None:
        """Give back ``count`` slots taken by :meth:`try_acquire`."""
        with self._lock:
            if count < 0 or count > self._in_flight:
                raise ValueError(f"cannot release {count} slots: {self._in_flight} are taken")
            self._in_flight -= count
            in_flight = self._in_flight
        if self._on_change is not None:
            self._on_change(in_flight)


class DynamicBatcher(Generic[T, R]):
    """Coalesce concurrently submitted items into batches of at most ``max_batch_size``.

    Args:
        process: called in the worker thread with a batch; must return one result per item, in order.
            Or a sequence of stages: the first gets the batch, each next one the previous one's return
            value, the last returns the results; each stage runs in a worker thread of its own.
        max_batch_size: the largest batch formed.
        max_delay_s: how long the oldest waiting item may wait for company (0 = never wait; batches
            still form from items that queued while the previous batch ran).
        on_batch: called (in the first stage's thread, before it) with the batch size and the oldest
            item's queueing delay in seconds — e.g. to feed metrics.
        incoming: optional; how many items are on their way (e.g. requests still being decoded). When it
            says none, a partial batch runs at once instead of waiting out ``max_delay_s`` for company
            that cannot come — so a lone request pays no batching delay.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R]] | Sequence[Callable[[Any], Any]],
        *,
        max_batch_size: int,
        max_delay_s: float,
        on_batch: Callable[[int, float], None] | None = None,
        incoming: Callable[[], int] | None = None,
        name: str = "batcher",
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        stages = tuple(process) if isinstance(process, Sequence) else (process,)
        if not stages or not all(callable(stage) for stage in stages):
            raise ValueError("process must be a callable or a non-empty sequence of callables")
        self._stages = stages
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._on_batch = on_batch
        self._incoming = incoming
        self._name = name
        self._pending: deque[_Pending[T]] = deque()
        self._wakeup: asyncio.Event | None = None
        # how many queued items the collector waits for (1: any; max_batch_size: a full batch, or the last
        # of the items on their way); None while it waits for nothing that submit() brings
        self._wake_at: int | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executors: list[WorkerThreads] = []
        self._batches_running: set[asyncio.Task] = set()
        self._next_batch_allowed: asyncio.Event | None = None
        self._alone = False  # a request is being run alone (run_alone)
        self.batches = 0  # batches run so far
        self.items = 0  # items processed so far
        self.largest_batch = 0

    # ----- public -------------------------------------------------------------------------------------
    async def submit(self, items: Sequence[T]) -> list[R]:
        """Queue ``items`` and wait for their results (in order)."""
        if not items:
            return []
        self._ensure_started()
        assert self._loop is not None and self._wakeup is not None
        futures = [self._loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            self._pending.append(_Pending(item, future))
        self.nudge()
        try:
            if len(futures) == 1:  # (no gather for one: its own future and callbacks per request)
                return [await futures[0]]
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:  # a cancelled or failed request withdraws its other items
                future.cancel()
            raise

    def nudge(self) -> None:
        """Wake the collector if it waits for what is queued now: its first item, a full batch, or nothing
        more on its way — one wake per batch, not per item. :meth:`submit` calls it; so does a caller whose
        ``incoming`` items dropped with nothing submitted (an image that failed to decode), so that a
        filling batch runs at once instead of waiting out its delay."""
        if self._wake_at is not None and self._wakeup is not None and (
            len(self._pending) >= self._wake_at or (self._incoming is not None and self._incoming() <= 0)
        ):
            self._wakeup.set()

    async def run_alone(self, prepare: Callable[[], T]) -> tuple[T, R | Exception] | None:
        """``prepare()`` (e.g. decode one image) and then the batch of its one item, back to back in the
        worker thread, when the batcher forms batches of one item in one stage and is idle (nothing
        queued, running or being run alone): the request skips two round trips through the event loop
        (worker → loop → collector → worker). None, and nothing run, otherwise: the caller prepares and
        submits as usual. Requests that come meanwhile queue behind it in the worker thread, as behind a
        batch.

        Returns the prepared item and its result; an exception raised by the stage is returned as the
        result (the item fails, as in a batch), one raised by ``prepare`` propagates.
        """
        if len(self._stages) != 1 or self.max_batch_size != 1 or self._alone or self._pending:
            return None
        self._ensure_started()
        if self._batches_running:
            return None
        assert self._loop is not None
        self._alone = True
        try:
            return await self._executors[0].run(self._prepare_and_run, prepare)
        finally:
            self._alone = False

    def _prepare_and_run(self, prepare: Callable[[], T]) -> tuple[T, R | Exception]:
        item = prepare()
        try:
            (result,) = self._first_stage(self._stages[0], [item], 1, 0.0)
        except Exception as error:  # noqa: BLE001 - the item's failure, as a batch's would be
            return item, error
        return item, result

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        """Stop the collector and the batches in flight; items still queued fail with ``RuntimeError``."""
        tasks = [task for task in (self._task, *self._batches_running) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        self._task = None
        self._batches_running.clear()
        while self._pending:
            pending = self._pending.popleft()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError(f"{self._name} closed"))
        for executor in self._executors:
            executor.shutdown(wait=True)
        self._executors = []

    # ----- internals ----------------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._next_batch_allowed = asyncio.Event()
        self._next_batch_allowed.set()
        if not self._executors:
            self._executors = [WorkerThreads(1, f"{self._name}-{index}" if index else self._name)
                               for index in range(len(self._stages))]
        self._task = loop.create_task(self._collect(), name=f"{self._name}-collector")

    def _release_wake_at(self, wakeup: asyncio.Event) -> None:
        """The collector of ``wakeup`` no longer waits; a collector of an earlier event loop, finalised
        late, leaves the current one's state alone."""
        if self._wakeup is wakeup:
            self._wake_at = None

    def _drop_cancelled_head(self) -> None:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()

    async def _collect(self) -> None:
        assert self._wakeup is not None and self._loop is not None and self._next_batch_allowed is not None
        wakeup = self._wakeup
        while True:
            self._drop_cancelled_head()
            while not self._pending:
                wakeup.clear()
                self._wake_at = 1
                try:
                    await wakeup.wait()
                finally:
                    self._release_wake_at(wakeup)
                self._drop_cancelled_head()
            await self._next_batch_allowed.wait()  # the previous batch has moved on
            deadline = self._pending[0].enqueued + self.max_delay_s
            while len(self._pending) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._incoming is not None and self._incoming() <= 0):
                    break
                wakeup.clear()
                self._wake_at = self.max_batch_size
                timer = self._loop.call_later(remaining, wakeup.set)  # no task per wait (as wait_for makes)
                try:
                    await wakeup.wait()
                finally:
                    timer.cancel()
                    self._release_wake_at(wakeup)
            batch: list[_Pending[T]] = []
            while self._pending and len(batch) < self.max_batch_size:
                pending = self._pending.popleft()
                if not pending.future.done():
                    batch.append(pending)
            if not batch:
                continue
            waited = time.monotonic() - batch[0].enqueued
            self._next_batch_allowed.clear()
            task = self._loop.create_task(self._run_batch(batch, waited), name=f"{self._name}-batch")
            self._batches_running.add(task)
            task.add_done_callback(self._batches_running.discard)

    async def _run_batch(self, batch: list[_Pending[T]], waited: float) -> None:
        """Carry one batch through the stages and settle its items' futures."""
        assert self._loop is not None and self._next_batch_allowed is not None
        loop, allow_next = self._loop, self._next_batch_allowed
        try:
            value: Any = [pending.item for pending in batch]
            for index, stage in enumerate(self._stages):
                if index == 0:
                    call = (self._first_stage, stage, value, len(batch), waited)
                elif index == len(self._stages) - 1:  # the next batch may form as this one enters its last stage
                    call = (self._signal_then_run, stage, value, lambda: loop.call_soon_threadsafe(allow_next.set))
                else:
                    call = (stage, value)
                value = await self._executors[index].run(*call)
            if len(value) != len(batch):
                raise RuntimeError(f"{self._name}: process returned {len(value)} results for {len(batch)} items")
        except asyncio.CancelledError:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(RuntimeError(f"{self._name} closed"))
            raise
        except Exception as error:  # noqa: BLE001 - forwarded to the requests of this batch
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        finally:
            allow_next.set()
        self._batches_running.discard(asyncio.current_task())  # done: a request answered now sees it idle
        for pending, result in zip(batch, value, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):  # this item's own failure
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    def _first_stage(self, stage: Callable[[Any], Any], items: list[T], size: int, waited: float) -> Any:
        self.batches += 1
        self.items += size
        self.largest_batch = max(self.largest_batch, size)
        if self._on_batch is not None:
            self._on_batch(size, waited)
        return stage(items)

    @staticmethod
    def _signal_then_run(stage: Callable[[Any], Any], value: Any, signal: Callable[[], Any]) -> Any:
        signal()
        return stage(value)
