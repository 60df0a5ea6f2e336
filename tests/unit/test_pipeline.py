"""DetectionPipeline without a server: the pool side (decode + letterbox), each batch stage, the GPU-decode
path's logic (run on the CPU device), and whole requests through the batcher — with a small stand-in
network, so every expected answer is the Detector's own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from test_engine import TinyHead  # same folder
from test_letterbox_parity import official_scale_coords

from predictor.engine import Detector
from predictor.errors import RequestError
from predictor.images import decode_image
from predictor.metrics import service_metrics
from predictor.pipeline import DetectionPipeline, PreparedImage
from predictor.settings import DetectParams
from predictor.wire import Limits
from tests.tools.nms import per_image_nms

LIMITS = Limits(max_images=16, max_pixels=4_000_000, max_bytes=8 << 20)
PARAMS = DetectParams(confidence=0.05, iou=0.5)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(TinyHead(), names=[f"c{i}" for i in range(5)], device="cpu")


def _pipeline(detector: Detector, **kwargs) -> DetectionPipeline:
    return DetectionPipeline(detector, limits=LIMITS, max_batch_size=kwargs.pop("max_batch_size", 8),
                             max_batch_delay_s=kwargs.pop("max_batch_delay_s", 0.05),
                             metrics=service_metrics(CollectorRegistry()), decode_threads=2, **kwargs)


def _picture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((16, 16, 1), np.uint8))[:h, :w])


def _encode(rgb: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return data.tobytes()


def _same(a, b) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3, rtol=1e-5)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_array_equal(a.classes, b.classes)


# ----------------------------------------------------------------------------------- pool side
def test_prepare_decodes_and_letterboxes_with_the_detector(detector: Detector):
    pipeline = _pipeline(detector)
    rgb = _picture(200, 330, 1)
    try:
        for source in (_encode(rgb), rgb):
            item = pipeline._prepare_one(source, PARAMS, "image 0")
            expected, geometry = detector.letterbox(rgb)
            np.testing.assert_array_equal(item.letterboxed, expected)
            assert item.geometry == geometry and item.size == (200, 330) and item.jpeg is None
            assert item.params is PARAMS and "preprocess" in item.timings
            assert ("decode" in item.timings) == isinstance(source, bytes)
    finally:
        asyncio.run(pipeline.close())


def test_prepare_refuses_before_decoding(detector: Detector):
    pipeline = _pipeline(detector)
    try:
        with pytest.raises(RequestError, match="image 3: 3000x2000 = 6000000 pixels is over the limit"):
            pipeline._prepare_one(np.zeros((2000, 3000, 3), np.uint8), PARAMS, "image 3")
        with pytest.raises(RequestError, match="image 1: not a JPEG, PNG, BMP or WebP image"):
            pipeline._prepare_one(b"GIF89a....", PARAMS, "image 1")
    finally:
        asyncio.run(pipeline.close())


def test_gpu_decode_keeps_plain_jpegs_for_the_load_stage(detector: Detector):
    pipeline = _pipeline(detector)
    pipeline.gpu_decode = True
    rgb = _picture(120, 90, 2)
    try:
        jpeg = pipeline._prepare_one(_encode(rgb, ".jpg"), PARAMS, "image 0")
        assert jpeg.jpeg is not None and jpeg.letterboxed is None and jpeg.geometry is None
        png = pipeline._prepare_one(_encode(rgb), PARAMS, "image 1")  # nvJPEG decodes JPEGs only
        assert png.jpeg is None and png.geometry == detector.letterbox(rgb)[1]
    finally:
        asyncio.run(pipeline.close())


# ----------------------------------------------------------------------------------- batch stages
def test_stages_one_batch_with_two_sets_of_thresholds(detector: Detector):
    """load → forward → postprocess on one batch whose items asked for different thresholds: each gets
    what the Detector answers for it alone; the load stage's input is the Detector's own stack."""
    pipeline = _pipeline(detector)
    pictures = [_picture(240, 400, 3), _picture(333, 111, 4), _picture(100, 100, 5)]
    params = [PARAMS, DetectParams(confidence=0.3, iou=0.3, max_detections=2), PARAMS]
    try:
        items = [pipeline._prepare_one(p, q, f"image {i}") for i, (p, q) in enumerate(zip(pictures, params,
                                                                                            strict=True))]
        batch = pipeline._load_batch(items)
        assert batch.kept == [0, 1, 2]
        assert torch.equal(batch.inputs, detector.preprocess(pictures)[0])
        batch = pipeline._forward_batch(batch)
        assert batch.inputs is None and batch.raw.shape[0] == 3 and batch.batch_id == 1
        results = pipeline._postprocess_batch(batch)
        for picture, q, result in zip(pictures, params, results, strict=True):
            _same(result, detector.detect([picture], q)[0])
        assert len(results[1]) <= 2
        assert all(item.timings["batch"] == 1 and item.timings["forward"] > 0 for item in items)
        assert pipeline._run_stages_in_turn(items)[0].scores.shape == results[0].scores.shape
    finally:
        asyncio.run(pipeline.close())


def test_gpu_decode_path_logic_on_the_cpu(detector: Detector):
    """The load stage of the GPU-decode path, run on the CPU device: JPEGs decoded as a batch and
    letterboxed by ``Detector.letterbox_tensors``, the PNG letterboxed in the pool; the input rows follow
    the items."""
    pipeline = _pipeline(detector)
    pipeline.gpu_decode = True
    pictures = [_picture(240, 400, 6), _picture(200, 200, 7), _picture(90, 300, 8)]
    sources = [_encode(pictures[0], ".jpg"), _encode(pictures[1]), _encode(pictures[2], ".jpg")]
    try:
        items = [pipeline._prepare_one(s, PARAMS, f"image {i}") for i, s in enumerate(sources)]
        assert [item.jpeg is not None for item in items] == [True, False, True]
        batch = pipeline._load_batch(items)
        assert batch.kept == [0, 1, 2] and all(item.jpeg is None for item in items)
        decoded = [torch.from_numpy(cv2.imdecode(np.frombuffer(sources[i], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
                                    .copy()).permute(2, 0, 1) for i in (0, 2)]
        expected, geometries = detector.letterbox_tensors(decoded)
        assert [items[0].geometry, items[2].geometry] == geometries
        assert [g.original_shape for g in geometries] == [(240, 400), (90, 300)]
        assert items[1].geometry == detector.letterbox(pictures[1])[1]
        assert (batch.inputs[[0, 2]] - expected).abs().max() <= 2 / 255  # decoders differ by a grey level
        assert torch.equal(batch.inputs[1], detector.stack([items[1].letterboxed])[0])
        results = pipeline._postprocess_batch(pipeline._forward_batch(batch))
        assert all(len(result) > 0 for result in results)
    finally:
        asyncio.run(pipeline.close())


def test_gpu_decode_failure_falls_back_to_the_one_cpu_decoder(detector: Detector, monkeypatch):
    """When the batch decoder refuses the batch, each JPEG goes through the pool's own decode +
    letterbox (the same function), so its pixels and geometry equal the CPU path's exactly; a JPEG that
    cannot be decoded at all fails alone."""
    import torchvision.io

    def refuse(*args, **kwargs):
        raise RuntimeError("nvJPEG: no")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", refuse)
    pipeline = _pipeline(detector)
    pipeline.gpu_decode = True
    data = _encode(_picture(150, 260, 9), ".jpg")
    no_scan = data[: data.find(b"\xff\xda")] + b"\xff\xd9"  # headers valid, no image data
    try:
        items = [pipeline._prepare_one(source, PARAMS, f"image {i}") for i, source in enumerate((data, no_scan))]
        batch = pipeline._load_batch(items)
        cpu = pipeline._letterbox_source(data, "image 0", {})
        assert batch.kept == [0] and items[0].geometry == cpu[1]
        np.testing.assert_array_equal(items[0].letterboxed, cpu[0])
        assert torch.equal(batch.inputs, detector.stack([cpu[0]]))
        assert "decode" in items[0].timings and "preprocess" in items[0].timings
        assert isinstance(batch.results[1], RequestError) and "image 1" in str(batch.results[1])
        results = pipeline._postprocess_batch(pipeline._forward_batch(batch))
        assert len(results[0]) > 0 and results[1] is batch.results[1]
    finally:
        asyncio.run(pipeline.close())


# ----------------------------------------------------------------------------------- whole requests
def test_concurrent_requests_batch_together_and_get_their_own_answers(detector: Detector):
    pipeline = _pipeline(detector, max_batch_delay_s=0.2)
    pictures = [_picture(100 + 40 * i, 300 - 30 * i, 10 + i) for i in range(6)]
    params = [DetectParams(confidence=0.05 + 0.05 * i) for i in range(6)]

    async def run():
        async def one(picture, q):
            prepared = await pipeline.prepare([_encode(picture)], q)
            return await pipeline.detect(prepared), prepared

        try:
            return await asyncio.gather(*(one(p, q) for p, q in zip(pictures, params, strict=True)))
        finally:
            await pipeline.close()

    answers = asyncio.run(run())
    assert pipeline.batcher.largest_batch > 1
    for picture, q, ([result], prepared) in zip(pictures, params, answers, strict=True):
        _same(result, detector.detect([picture], q)[0])
        assert prepared[0].size == picture.shape[:2]
        timing = DetectionPipeline.server_timing(prepared)
        assert [part.split(";")[0] for part in timing.split(", ")] == ["decode", "preprocess", "forward",
                                                                       "postprocess"]


def test_served_boxes_on_a_non_square_image_equal_the_official_evaluation(yolo_fixtures: Path):
    """451×300 through the pipeline at 640: boxes = the official evaluation's mapping with the pad the
    letterbox applied (107), not the recomputed one (107.14)."""
    from test_letterbox_parity import non_square_image

    detector = Detector(TinyHead(), names=[f"c{i}" for i in range(5)], device="cpu", input_size=640)
    image = non_square_image(yolo_fixtures)
    pipeline = _pipeline(detector)

    async def run():
        try:
            return await pipeline.detect(await pipeline.prepare([_encode(image)], PARAMS))
        finally:
            await pipeline.close()

    [served] = asyncio.run(run())
    decoded = decode_image(_encode(image), LIMITS.max_pixels)
    letterboxed, geometry = detector.letterbox(decoded)
    assert geometry.pad == (0.0, 107.0)
    raw = detector.forward(torch.from_numpy(letterboxed).permute(2, 0, 1)[None].float() / 255)
    (nms,) = per_image_nms(raw, PARAMS.confidence, PARAMS.iou)
    expected = official_scale_coords(nms, (*geometry.ratio, *geometry.pad), image.shape[:2])
    assert len(served) == len(expected) > 0
    torch.testing.assert_close(torch.from_numpy(served.boxes), expected, atol=1e-4, rtol=0)


def test_prepared_image_size_needs_a_geometry():
    item = PreparedImage(params=PARAMS, jpeg=bytearray(b"\xff\xd8"))
    with pytest.raises(AssertionError):
        _ = item.size


def test_one_image_at_a_time_runs_alone_with_the_same_answers_and_errors(detector: Detector):
    """Batches of one (the CPU's usual plan), idle model: a one-image request is decoded and run in the
    forward thread at once — the same answers and stage timings; a bad image is still refused in prepare;
    concurrent requests still go through the batcher and get their own answers."""
    pipeline = _pipeline(detector, max_batch_size=1, max_batch_delay_s=0.0)
    pictures = [_picture(120 + 30 * i, 260 - 20 * i, 30 + i) for i in range(4)]

    async def run():
        try:
            alone = []
            for picture in pictures[:2]:  # one at a time: each runs alone
                prepared = await pipeline.prepare([_encode(picture)], PARAMS)
                assert prepared[0].result is not None and pipeline.batcher.queued == 0
                alone.append((await pipeline.detect(prepared), prepared))
            with pytest.raises(RequestError, match="image 0"):
                await pipeline.prepare([b"\xff\xd8 not a jpeg"], PARAMS)

            async def one(picture):
                prepared = await pipeline.prepare([_encode(picture)], PARAMS)
                return await pipeline.detect(prepared), prepared

            together = await asyncio.gather(*(one(p) for p in pictures))
            return alone, together
        finally:
            await pipeline.close()

    alone, together = asyncio.run(run())
    for picture, ([result], prepared) in zip(pictures[:2], alone, strict=True):
        _same(result, detector.detect([picture], PARAMS)[0])
        timing = DetectionPipeline.server_timing(prepared)
        assert all(float(part.split("dur=")[1]) > 0 for part in timing.split(", ")), timing
    for picture, ([result], _) in zip(pictures, together, strict=True):
        _same(result, detector.detect([picture], PARAMS)[0])
    assert sum(prepared[0].result is None for _, prepared in together) >= 1  # some went through the batcher
    assert pipeline.batcher.items == 6
