"""predictor.batching.DynamicBatcher: coalescing, ordering, isolation, errors, cancellation; Admission
(the ``--max_queued_images`` counter) alone and as the service uses it."""

from __future__ import annotations

import asyncio
import base64
import threading

import pytest

from predictor.batching import Admission, DynamicBatcher


class Recorder:
    """A process function that records every batch it gets (and which thread ran it)."""

    def __init__(self, fail_on: object | None = None):
        self.batches: list[list[object]] = []
        self.entered: list[list[object]] = []  # batches the worker has started (before ``release``)
        self.threads: set[str] = set()
        self.fail_on = fail_on
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list[object]) -> list[object]:
        self.entered.append(list(items))
        self.release.wait(5)
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot process {self.fail_on!r}")
        return [("done", item) for item in items]


def _held(max_batch_size: int) -> tuple[Recorder, DynamicBatcher]:
    """A batcher with no delay whose worker holds each batch until ``recorder.release`` is set."""
    recorder = Recorder()
    recorder.release.clear()
    return recorder, DynamicBatcher(recorder, max_batch_size=max_batch_size, max_delay_s=0.0)


async def test_concurrent_requests_coalesce_and_get_their_own_results():
    recorder = Recorder()
    batcher = DynamicBatcher(recorder, max_batch_size=8, max_delay_s=0.2)
    try:
        requests = [[f"r{r}-i{i}" for i in range(r % 3 + 1)] for r in range(6)]  # 1..3 items each, 12 total
        results = await asyncio.gather(*(batcher.submit(items) for items in requests))
    finally:
        await batcher.close()
    for items, result in zip(requests, results, strict=True):
        assert result == [("done", item) for item in items]
    assert sum(len(batch) for batch in recorder.batches) == 12
    assert max(len(batch) for batch in recorder.batches) == 8  # full batch formed
    assert all(len(batch) <= 8 for batch in recorder.batches)
    assert batcher.batches == len(recorder.batches) and batcher.largest_batch == 8
    assert len(recorder.threads) == 1  # one worker thread


async def test_zero_delay_still_batches_what_queued_during_a_forward():
    recorder, batcher = _held(4)  # the first batch stays in the worker
    try:
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(lambda: recorder.entered)  # "a" is in the worker
        rest = [asyncio.ensure_future(batcher.submit([name])) for name in "bcde"]
        await _until(lambda: batcher.queued == 4)
        recorder.release.set()
        await asyncio.gather(first, *rest)
    finally:
        await batcher.close()
    assert recorder.batches[0] == ["a"]
    assert recorder.batches[1] == ["b", "c", "d", "e"]


async def test_large_request_is_split_across_batches_in_order():
    recorder = Recorder()
    batcher = DynamicBatcher(recorder, max_batch_size=3, max_delay_s=0.01)
    try:
        result = await batcher.submit(list(range(10)))
    finally:
        await batcher.close()
    assert result == [("done", i) for i in range(10)]
    assert [len(batch) for batch in recorder.batches] == [3, 3, 3, 1]


async def test_a_failing_batch_fails_only_its_requests():
    recorder = Recorder(fail_on="bad")
    batcher = DynamicBatcher(recorder, max_batch_size=1, max_delay_s=0.0)
    try:
        outcomes = await asyncio.gather(batcher.submit(["bad"]), batcher.submit(["good"]), return_exceptions=True)
        assert isinstance(outcomes[0], ValueError) and "cannot process 'bad'" in str(outcomes[0])
        assert outcomes[1] == [("done", "good")]
        assert await batcher.submit(["after"]) == [("done", "after")]  # still serving
    finally:
        await batcher.close()


async def test_cancelled_request_is_dropped_before_processing():
    recorder, batcher = _held(4)
    try:
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await _until(lambda: recorder.entered)  # "first" is in the worker
        doomed = asyncio.ensure_future(batcher.submit(["doomed"]))
        kept = asyncio.ensure_future(batcher.submit(["kept"]))
        await _until(lambda: batcher.queued == 2)
        doomed.cancel()
        recorder.release.set()
        assert await kept == [("done", "kept")]
        await first
    finally:
        await batcher.close()
    assert ["doomed"] not in recorder.batches and all("doomed" not in batch for batch in recorder.batches)


async def test_on_batch_hook_and_bad_results():
    sizes: list[int] = []
    batcher = DynamicBatcher(lambda items: items[:-1], max_batch_size=4, max_delay_s=0.05,
                             on_batch=lambda size, waited: sizes.append(size))
    try:
        with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
            await batcher.submit(["x", "y"])
    finally:
        await batcher.close()
    assert sizes == [2]


def test_invalid_configuration():
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(list, max_batch_size=0, max_delay_s=0)
    with pytest.raises(ValueError, match="max_delay_s"):
        DynamicBatcher(list, max_batch_size=1, max_delay_s=-1)


async def test_an_exception_returned_for_one_item_fails_only_that_item():
    def process(items: list[str]) -> list[object]:
        return [ValueError(f"bad {item}") if item.startswith("bad") else item.upper() for item in items]

    batcher = DynamicBatcher(process, max_batch_size=8, max_delay_s=0.05)
    try:
        outcomes = await asyncio.gather(batcher.submit(["ok1"]), batcher.submit(["bad2"]), batcher.submit(["ok3"]),
                                        return_exceptions=True)
    finally:
        await batcher.close()
    assert outcomes[0] == ["OK1"] and outcomes[2] == ["OK3"]
    assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "bad bad2"
    assert batcher.largest_batch == 3  # they shared one batch


async def test_no_wait_when_nothing_else_is_on_its_way():
    """With an ``incoming`` hint of 0 a lone item runs at once instead of waiting out a long delay."""
    recorder = Recorder()
    on_the_way = {"count": 0}
    batcher = DynamicBatcher(recorder, max_batch_size=8, max_delay_s=3600, incoming=lambda: on_the_way["count"])
    try:
        assert await asyncio.wait_for(batcher.submit(["alone"]), timeout=30) == [("done", "alone")]
        # while something is on its way, the collector waits for it and batches it with the first item
        on_the_way["count"] = 1
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.05)
        assert not first.done()
        on_the_way["count"] = 0
        second = await asyncio.wait_for(batcher.submit(["b"]), timeout=30)
        assert await first == [("done", "a")] and second == [("done", "b")]
    finally:
        await batcher.close()
    assert recorder.batches == [["alone"], ["a", "b"]]


async def test_the_collector_wakes_once_per_batch_not_once_per_item():
    """While a batch fills, an item that neither fills it nor is the last on its way queues without
    waking the collector (a wake was one event-loop step per request at concurrency 64); the batch
    still runs as soon as it is full, or as soon as nothing more is on its way, never after the delay."""
    recorder = Recorder()
    on_the_way = {"count": 0}
    batcher = DynamicBatcher(recorder, max_batch_size=4, max_delay_s=3600, incoming=lambda: on_the_way["count"])
    wakes = 0
    try:
        await batcher.submit(["warm"])  # starts the collector
        real_set = batcher._wakeup.set

        def counting_set() -> None:
            nonlocal wakes
            wakes += 1
            real_set()

        batcher._wakeup.set = counting_set
        for batch, sizes in (("full", 4), ("last-on-its-way", 3)):
            on_the_way["count"] = sizes
            requests = []
            for index in range(sizes):
                on_the_way["count"] -= 1
                requests.append(asyncio.ensure_future(batcher.submit([f"{batch}-{index}"])))
                await asyncio.sleep(0.01)  # the collector runs in between
            done = await asyncio.wait_for(asyncio.gather(*requests), timeout=30)
            assert [result for (result,) in done] == [("done", f"{batch}-{index}") for index in range(sizes)]
    finally:
        await batcher.close()
    assert recorder.batches == [["warm"], [f"full-{i}" for i in range(4)], [f"last-on-its-way-{i}" for i in range(3)]]
    assert wakes == 4  # per batch: its first item (the collector was idle) and the one that completes it


async def test_an_image_that_fails_on_its_way_does_not_hold_the_batch_for_its_delay():
    """A batch waiting for an image still being decoded runs as soon as that image fails (nudge), even
    when another item was submitted in the same event-loop pass while the failing one still counted."""
    recorder = Recorder()
    decoding = {"count": 2}
    batcher = DynamicBatcher(recorder, max_batch_size=8, max_delay_s=3600, incoming=lambda: decoding["count"])
    try:
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.01)  # the collector waits for the two on their way
        decoding["count"] -= 1
        second = asyncio.ensure_future(batcher.submit(["b"]))  # submitted while the other still counts

        def fails() -> None:
            decoding["count"] -= 1
            batcher.nudge()  # what the pipeline does when a decode ends without a submit

        asyncio.get_running_loop().call_soon(fails)
        done = await asyncio.wait_for(asyncio.gather(first, second), timeout=30)
    finally:
        await batcher.close()
    assert done == [[("done", "a")], [("done", "b")]] and recorder.batches == [["a", "b"]]


def test_a_collector_left_on_a_closed_loop_does_not_silence_the_next_one():
    """A loop closed without cancelling its tasks leaves its collector to be finalised later (by the
    garbage collector); that must not clear the state the current loop's collector waits with."""
    import gc

    batcher = DynamicBatcher(lambda items: [("done", item) for item in items], max_batch_size=4, max_delay_s=0.05)
    first = asyncio.new_event_loop()
    assert first.run_until_complete(batcher.submit(["a"])) == [("done", "a")]
    first.close()  # its collector is still pending

    async def on_the_next_loop() -> list:
        answers = [await batcher.submit(["b"])]
        await asyncio.sleep(0.01)  # the new collector idles
        gc.collect()  # the old one is finalised now
        answers.append(await asyncio.wait_for(batcher.submit(["c"]), timeout=10))
        await batcher.close()
        return answers

    second = asyncio.new_event_loop()
    try:
        assert second.run_until_complete(on_the_next_loop()) == [[("done", "b")], [("done", "c")]]
    finally:
        second.close()


async def test_stages_overlap_batches_and_keep_results_apart():
    """With load → forward → post stages, batch k+1 is formed, loaded and run while batch k is in its
    post stage, and batch k+2 waits until k+1 reaches post; each stage runs in a thread of its own."""
    log: list[tuple[str, tuple[str, ...]]] = []
    threads: dict[str, set[str]] = {"load": set(), "forward": set(), "post": set()}
    post_gate = threading.Event()

    def stage(name, gate=None):
        def run(value):
            threads[name].add(threading.current_thread().name)
            items = tuple(value if name == "load" else value["items"])
            log.append((f"{name} start", items))
            if gate is not None:
                gate.wait(5)
            log.append((f"{name} end", items))
            if name == "post":
                return [("done", item) for item in items]
            return {"items": items}
        return run

    batcher = DynamicBatcher([stage("load"), stage("forward"), stage("post", post_gate)],
                             max_batch_size=2, max_delay_s=0.0, name="pipe")
    try:
        first = asyncio.ensure_future(batcher.submit(["a", "b"]))
        await _until(lambda: ("post start", ("a", "b")) in log)
        second = asyncio.ensure_future(batcher.submit(["c", "d"]))
        await _until(lambda: ("forward end", ("c", "d")) in log)  # loaded and run while a, b are in post
        third = asyncio.ensure_future(batcher.submit(["e"]))
        await asyncio.sleep(0.05)
        assert ("load start", ("e",)) not in log  # not formed while c, d have not reached post
        post_gate.set()
        results = await asyncio.gather(first, second, third)
    finally:
        await batcher.close()
    assert results == [[("done", "a"), ("done", "b")], [("done", "c"), ("done", "d")], [("done", "e")]]
    assert log.index(("forward end", ("c", "d"))) < log.index(("post end", ("a", "b")))
    assert all(len(names) == 1 for names in threads.values())
    assert len(set().union(*threads.values())) == 3
    assert batcher.batches == 3 and batcher.items == 5


async def test_a_failing_middle_stage_fails_its_batch_only():
    def forward(items):
        if "bad" in items:
            raise ValueError("forward failed")
        return items

    batcher = DynamicBatcher([list, forward, lambda items: [item.upper() for item in items]],
                             max_batch_size=1, max_delay_s=0.0)
    try:
        outcomes = await asyncio.gather(batcher.submit(["bad"]), batcher.submit(["good"]), return_exceptions=True)
        assert isinstance(outcomes[0], ValueError) and outcomes[1] == ["GOOD"]
        assert await batcher.submit(["after"]) == ["AFTER"]
    finally:
        await batcher.close()
    with pytest.raises(ValueError, match="non-empty sequence of callables"):
        DynamicBatcher([], max_batch_size=1, max_delay_s=0)


# ----- Admission --------------------------------------------------------------------------------------
def test_admission_acquire_and_release():
    seen: list[int] = []
    admission = Admission(3, on_change=seen.append)
    assert admission.try_acquire(2)
    assert not admission.try_acquire(2)  # all or nothing: 2 + 2 > 3, nothing taken
    assert admission.in_flight == 2
    assert admission.try_acquire(1)
    assert not admission.try_acquire(1)
    admission.release(2)
    assert admission.try_acquire(2)
    admission.release(3)
    assert admission.in_flight == 0
    assert seen == [2, 3, 1, 3, 0]
    with pytest.raises(ValueError, match="cannot release 1"):
        admission.release(1)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        Admission(0)


class _FakePipeline:
    """Stands in for DetectionPipeline: ``prepare`` parks until ``go`` is set, then succeeds or fails."""

    def __init__(self):
        from predictor.wire import Limits

        self.limits = Limits(16, 1_000_000, 1 << 20)
        self.go = asyncio.Event()
        self.fail = False
        self.entered = 0

    async def prepare(self, sources, params):
        self.entered += 1
        await self.go.wait()
        if self.fail:
            from predictor.errors import RequestError

            raise RequestError("image 0: corrupt", "decode")
        return [object() for _ in sources]

    async def detect(self, prepared):
        return [None for _ in prepared]


def _model(limit: int):
    from prometheus_client import CollectorRegistry

    from predictor.metrics import service_metrics
    from predictor.model import YoloV7Model
    from predictor.settings import DetectParams, PredictorSettings

    model = YoloV7Model("m", PredictorSettings(max_queued_images=limit))
    model.metrics = service_metrics(CollectorRegistry())
    model.admission = Admission(limit, on_change=model.metrics.in_flight.set)
    model.pipeline = _FakePipeline()
    model.defaults = DetectParams(confidence=0.25, iou=0.45, max_detections=300, classes=None)
    model.names = ["thing"]

    async def postprocess(job, headers=None, response_headers=None):
        return {"images": len(job.prepared)}

    model.postprocess = postprocess  # no real detections to encode
    model.ready = True
    return model


def _v1(count: int) -> dict:
    return {"instances": [base64.b64encode(b"img").decode()] * count}


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_service_admission_refuses_releases_on_success_failure_and_cancel():
    from predictor.errors import Overloaded, RequestError

    model = _model(3)
    pipeline = model.pipeline
    gauge = model.metrics.in_flight

    first = asyncio.ensure_future(model(_v1(2), headers={}))
    await _until(lambda: pipeline.entered == 1)
    assert model.admission.in_flight == 2 and gauge._value.get() == 2
    with pytest.raises(Overloaded, match=r"server busy: 2 images in flight.*limit of 3 \(--max_queued_images\)"):
        await model(_v1(2), headers={})
    assert model.admission.in_flight == 2  # the refused request took nothing
    assert model.metrics.errors.labels("v1", "overloaded")._value.get() == 1
    with pytest.raises(RequestError, match="at most 3 are admitted at once"):  # can never fit: 400, not 503
        await model(_v1(4), headers={})

    first.cancel()  # the client went away while its images were being prepared
    with pytest.raises(asyncio.CancelledError):
        await first
    assert model.admission.in_flight == 0 and gauge._value.get() == 0

    pipeline.fail = True  # a request failing after admission gives its slots back too
    failing = asyncio.ensure_future(model(_v1(3), headers={}))
    await _until(lambda: model.admission.in_flight == 3)
    pipeline.go.set()
    with pytest.raises(RequestError, match="corrupt"):
        await failing
    assert model.admission.in_flight == 0

    pipeline.fail = False
    response, _ = await model(_v1(3), headers={})
    assert response == {"images": 3}
    assert model.admission.in_flight == 0 and gauge._value.get() == 0


def test_warmup_batch_sizes_per_acceleration():
    from predictor.model import warmup_batch_sizes

    assert warmup_batch_sizes("eager", "cpu", 32) == [1]
    assert warmup_batch_sizes("cudagraph", "cuda", 8) == list(range(1, 9))
    assert warmup_batch_sizes("cudagraph", "cuda", 64) == [*range(1, 17), 32, 64]
    assert warmup_batch_sizes("cudagraph", "cuda", 24) == [*range(1, 17), 24]
    assert warmup_batch_sizes("compile", "cuda", 32) == [1, 2, 4, 8, 16, 32]
    assert warmup_batch_sizes("compile", "cuda", 24) == [1, 2, 4, 8, 16, 24]
    assert warmup_batch_sizes("compile", "cuda", 1) == [1]


# ----- run_alone: one item, prepared and run back to back in the worker thread when the batcher is idle ----
async def test_an_idle_batcher_runs_one_item_alone_in_its_worker_thread():
    recorder = Recorder()
    batcher = DynamicBatcher(recorder, max_batch_size=1, max_delay_s=0.0)
    try:
        await batcher.submit(["warm"])  # the worker thread exists
        prepared_in: list[str] = []

        def prepare() -> str:
            prepared_in.append(threading.current_thread().name)
            return "x"

        item, result = await batcher.run_alone(prepare)
    finally:
        await batcher.close()
    assert (item, result) == ("x", ("done", "x"))
    assert prepared_in == list(recorder.threads) == ["batcher_0"]  # prepared where the batches run
    assert batcher.batches == 2 and batcher.items == 2  # counted as a batch


async def test_run_alone_declines_unless_batches_are_of_one_idle_single_stage():
    for batcher in (DynamicBatcher(Recorder(), max_batch_size=2, max_delay_s=0.0),  # batches can form
                    DynamicBatcher([lambda b: b, lambda b: b], max_batch_size=1, max_delay_s=0.0)):  # stages
        try:
            assert await batcher.run_alone(lambda: pytest.fail("must not prepare")) is None
        finally:
            await batcher.close()
    recorder, batcher = _held(1)
    try:
        busy = asyncio.ensure_future(batcher.submit(["a"]))
        await _until(lambda: recorder.entered)  # a batch is running
        assert await batcher.run_alone(lambda: pytest.fail("must not prepare")) is None
        recorder.release.set()
        await busy
    finally:
        await batcher.close()


async def test_requests_during_a_run_alone_queue_behind_it_and_are_answered():
    recorder, batcher = _held(1)
    try:
        alone = asyncio.ensure_future(batcher.run_alone(lambda: "first"))
        await _until(lambda: recorder.entered)
        assert await batcher.run_alone(lambda: pytest.fail("must not prepare")) is None  # one at a time
        later = asyncio.ensure_future(batcher.submit(["second"]))
        await asyncio.sleep(0.05)
        assert recorder.entered == [["first"]]  # queued behind, not beside
        recorder.release.set()
        assert await alone == ("first", ("done", "first"))
        assert await later == [("done", "second")]
    finally:
        await batcher.close()
    assert recorder.batches == [["first"], ["second"]]


async def test_run_alone_returns_the_stages_error_and_raises_prepares():
    batcher = DynamicBatcher(Recorder(fail_on="bad"), max_batch_size=1, max_delay_s=0.0)
    try:
        item, result = await batcher.run_alone(lambda: "bad")
        assert item == "bad" and isinstance(result, ValueError) and "cannot process 'bad'" in str(result)

        def broken() -> str:
            raise KeyError("undecodable")

        with pytest.raises(KeyError, match="undecodable"):
            await batcher.run_alone(broken)
        assert await batcher.submit(["ok"]) == [("done", "ok")]  # still serving
    finally:
        await batcher.close()
