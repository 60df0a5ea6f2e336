"""The front end's link to the model process (predictor.frontend.ModelLink), with this test as the model
process: pixels and JPEG bytes go through the shared slots, not the pipe; errors come back typed."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from predictor import wire
from predictor.dataplane import NUDGE
from predictor.errors import RequestError
from predictor.frontend import ModelLink
from predictor.metrics import service_metrics
from predictor.ops import letterbox_geometry
from predictor.pipeline import PreparedImage
from predictor.settings import DetectParams
from predictor.slots import SlotFile

SIZE = 32


@pytest.fixture()
def link(tmp_path):
    ours, theirs = multiprocessing.Pipe(duplex=True)
    model_side = SlotFile.create("test-slots", 4, SIZE, str(tmp_path))
    front_side = pickle.loads(pickle.dumps(model_side))  # as a front end gets it: a descriptor, mapped again
    spec = SimpleNamespace(index=0, conn=theirs, slots=front_side, run_dir=str(tmp_path), slot_count=4,
                           input_size=SIZE, summary={"gpu_decode": True})
    front = ModelLink(spec, wire.Limits(8, 10_000, 1 << 20), service_metrics(CollectorRegistry()))
    yield front, ours, model_side
    ours.close()
    theirs.close()


async def test_pixels_and_jpeg_bytes_travel_through_the_slots(link):
    front, model, slots = link
    front.watch_model()
    pixels = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    geometry = letterbox_geometry((20, 30), SIZE)
    jpeg = b"\xff\xd8 not really a jpeg, only bytes \xff\xd9"
    prepared = [PreparedImage(params=DetectParams(), letterboxed=pixels.copy(), geometry=geometry),
                PreparedImage(params=DetectParams(confidence=0.5), jpeg=jpeg)]
    task = asyncio.ensure_future(front.detect(prepared))
    key, entries = await asyncio.get_running_loop().run_in_executor(None, model.recv)
    (slot_a, geometry_a, params_a, jpeg_a), (slot_b, geometry_b, params_b, jpeg_b) = entries
    assert (geometry_a, params_a, jpeg_a) == (geometry, DetectParams(), 0)
    np.testing.assert_array_equal(slots.slot(slot_a), pixels)  # the pixels are in the shared slot
    assert (geometry_b, params_b.confidence, jpeg_b) == (None, 0.5, len(jpeg))
    assert slots.slot(slot_b).reshape(-1)[:jpeg_b].tobytes() == jpeg
    decoded = letterbox_geometry((40, 60), SIZE)
    model.send((key, ["a", "b"], [{"forward": 0.001}, {"forward": 0.001}], [geometry, decoded]))
    assert await asyncio.wait_for(task, 10) == ["a", "b"]
    assert prepared[1].geometry == decoded and prepared[0].timings["forward"] == 0.001
    assert await _freed(front)  # the slots come back with the answer


async def _freed(front) -> bool:
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(front.pool._free) == 4:
            return True
    return False


async def test_a_request_error_from_the_model_process_stays_a_request_error(link):
    front, model, _ = link
    front.watch_model()
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    geometry = letterbox_geometry((SIZE, SIZE), SIZE)
    task = asyncio.ensure_future(front.detect([PreparedImage(params=DetectParams(), letterboxed=pixels,
                                                             geometry=geometry)]))
    key, _ = await asyncio.get_running_loop().run_in_executor(None, model.recv)
    model.send((key, ("RequestError", "image 0: cannot decode", "decode"), None, None))
    with pytest.raises(RequestError, match="cannot decode") as caught:
        await asyncio.wait_for(task, 10)
    assert caught.value.code == "decode"


async def test_a_request_whose_images_fail_tells_the_model_process_after_the_count_drops(link):
    """The model process's batcher waits for the images the front ends count as on their way; when they
    fail to decode no request follows, so the front end sends NUDGE (after dropping its count) and a batch
    waiting for them runs at once instead of waiting out its delay. A request that succeeds sends nothing."""
    front, model, slots = link
    sent = []

    class Conn:  # the front end's end of the pipe, noting the shared count at each send
        def send(self, message):
            sent.append((message, int(slots.preparing[0])))

    front._conn = Conn()
    with pytest.raises(RequestError):
        await front.prepare([b"not an image", b"\x89PNG nor this"], DetectParams())
    assert sent == [(NUDGE, 0)]
    import cv2

    png = cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))[1].tobytes()
    (prepared,) = await front.prepare([png], DetectParams())
    assert prepared.letterboxed.shape == (SIZE, SIZE, 3) and int(slots.preparing[0]) == 0
    assert sent == [(NUDGE, 0)]  # only a failure sends


async def test_the_model_process_runs_a_waiting_batch_when_a_front_end_nudges():
    from predictor.batching import DynamicBatcher
    from predictor.dataplane import _Host

    on_their_way = {"count": 3}
    batcher = DynamicBatcher(lambda items: [("done", item) for item in items], max_batch_size=8,
                             max_delay_s=3600, incoming=lambda: on_their_way["count"])
    host = _Host.__new__(_Host)  # only what _submit reads
    host.model, host.tasks = SimpleNamespace(pipeline=SimpleNamespace(batcher=batcher)), set()
    try:
        waiting = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # the batch waits for the three on their way
        on_their_way["count"] = 0  # they failed in a front end
        host._submit(None, None, NUDGE)
        assert await asyncio.wait_for(waiting, 10) == [("done", "a")]
        assert not host.tasks  # no request was made of the nudge
    finally:
        await batcher.close()


async def test_slots_come_back_when_the_request_cannot_reach_the_model_process(link):
    """Slots are freed by the model process's answer; a request whose message never left (a broken pipe)
    gets no answer, so it gives its slots back itself — else every later request would queue behind it."""
    front, _, _ = link
    front.watch_model()

    class BrokenPipe:
        def send(self, message):
            raise BrokenPipeError("the model process is gone")

    front._conn = BrokenPipe()
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    geometry = letterbox_geometry((SIZE, SIZE), SIZE)
    with pytest.raises(BrokenPipeError):
        await front.detect([PreparedImage(params=DetectParams(), letterboxed=pixels, geometry=geometry)])
    assert len(front.pool._free) == 4 and not front._waiting
