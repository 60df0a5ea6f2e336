"""Pure parts of the ``yolo-v7`` CLI: input expansion, the COCO category table, records, parameters, and
the pycocotools wrapper on hand-made sets whose AP is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from yolo_cli import sources
from yolo_cli.clients import Params, Result, class_names_from_metadata, resolve_class
from yolo_cli.coco_categories import COCO80_TO_91, COCO91_TO_80, COCO_NAMES
from yolo_cli.errors import CliError, UnreadableInput
from yolo_cli.evaluate import coco_metrics, format_table
from yolo_cli.outputs import ImageIds, category_mapper, coco_results, record


def test_expand_folders_globs_files_cameras(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("b.png", "a.jpg", "c.mp4", "notes.txt", "d.AVI"):
        (tmp_path / name).write_bytes(b"x")
    warnings: list[str] = []
    found, failures = sources.expand([str(tmp_path)], warnings.append)
    assert [(s.kind, Path(s.name).name) for s in found] == [
        ("image", "a.jpg"), ("image", "b.png"), ("video", "c.mp4"), ("video", "d.AVI")]
    assert failures == 0 and warnings == []
    found, failures = sources.expand([str(tmp_path / "*.png"), str(tmp_path / "missing.jpg"),
                                      str(tmp_path / "*.gif")], warnings.append)
    assert [Path(s.name).name for s in found] == ["b.png"]
    assert failures == 2 and len(warnings) == 2 and "missing.jpg" in warnings[0]
    monkeypatch.chdir(tmp_path)
    found, _ = sources.expand(["0", "2"], warnings.append)
    assert [(s.kind, s.camera) for s in found] == [("camera", 0), ("camera", 2)]
    (tmp_path / "0").write_bytes(b"x")  # an existing file named like an index is a file
    found, _ = sources.expand(["0"], warnings.append)
    assert found[0].kind == "image"


def test_video_frames_in_order_with_rate_and_last_flag(tmp_path: Path):
    import cv2

    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12.5, (64, 48))
    for index in range(5):
        writer.write(np.full((48, 64, 3), 40 * index, np.uint8))
    writer.release()
    found, _ = sources.expand([str(path), str(path)], print)
    assert sources.count_frames(found) == 10 and sources.count_frames(found, max_frames=3) == 6
    frames = list(sources.iter_frames(found, print))
    assert [(f.index, f.frame, f.last) for f in frames] == [
        (i, i % 5, i % 5 == 4) for i in range(10)]
    assert all(f.fps == 12.5 and f.image.shape == (48, 64, 3) for f in frames)
    assert abs(int(frames[3].image.mean()) - 120) <= 4  # BGR pixels of frame 3, in order
    frames = list(sources.iter_frames(found[:1], print, max_frames=2))
    assert [(f.frame, f.last) for f in frames] == [(0, False), (1, True)]
    (tmp_path / "bad.mp4").write_bytes(b"junk")
    [bad] = sources.iter_frames(sources.expand([str(tmp_path / "bad.mp4")], print)[0], print)
    assert "bad.mp4" in bad.extra["error"]


def test_unreadable_image_is_named(tmp_path: Path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    frame = sources.Frame(0, sources.Source("image", str(tmp_path / "broken.jpg"), path=tmp_path / "broken.jpg"))
    with pytest.raises(UnreadableInput, match="broken.jpg"):
        sources.load_image(frame, need_bytes=True)


def test_coco_table():
    assert len(COCO80_TO_91) == 80 and list(COCO80_TO_91) == sorted(set(COCO80_TO_91))
    assert COCO80_TO_91[0] == 1 and COCO80_TO_91[-1] == 90 and COCO80_TO_91[COCO_NAMES.index("tv")] == 72
    assert set(range(1, 91)) - set(COCO80_TO_91) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert all(COCO91_TO_80[cid] == index for index, cid in enumerate(COCO80_TO_91))


def test_coco_names_match_the_official_checkpoint(yolo_fixtures: Path):
    names = np.load(yolo_fixtures / "golden" / "yolov7-tiny.npz")["names"].tolist()
    assert tuple(names) == COCO_NAMES


def _result() -> Result:
    return Result(boxes=np.array([[10.0, 20.0, 110.5, 220.25]], np.float32), scores=np.array([0.75], np.float32),
                  classes=np.array([2]), labels=["car"], height=480, width=640)


def test_record_and_coco_results():
    frame = sources.Frame(3, sources.Source("video", "v.mp4", path=Path("v.mp4")), frame=5, fps=25.0)
    item = record(frame, _result())
    assert item == {"file": "v.mp4", "frame": 5, "time": 0.2, "width": 640, "height": 480,
                    "boxes": [[10.0, 20.0, 110.5, 220.25]], "scores": [0.75], "classes": [2], "labels": ["car"]}
    [entry] = coco_results(7, _result(), category_mapper("coco80", None, None))
    assert entry == {"image_id": 7, "category_id": 3, "bbox": [10.0, 20.0, 100.5, 200.25], "score": 0.75}


def test_category_maps():
    annotations = {"categories": [{"id": 5, "name": "Car"}, {"id": 9, "name": "person"}]}
    by_name = category_mapper("names", ["person", "bicycle", "car"], annotations)
    assert (by_name(0), by_name(2), by_name(1)) == (9, 5, -1)
    assert category_mapper("identity", None, None)(4) == 4
    with pytest.raises(CliError, match="80-class"):
        category_mapper("coco80", ["a", "b"], None)


def test_image_ids(tmp_path: Path):
    ids = ImageIds({"images": [{"id": 42, "file_name": "val/x.jpg"}]})
    assert ids.lookup(sources.Source("image", "any/x.jpg", path=Path("any/x.jpg"))) == 42
    assert ids.lookup(sources.Source("image", "000000397133.jpg", path=Path("000000397133.jpg"))) == 397133
    assert ids.lookup(sources.Source("image", "y.jpg", path=Path("y.jpg"))) is None


def test_params_and_names():
    assert Params(confidence=0.3, iou=0.5, max_detections=10, classes=(0, "car"), agnostic=True).as_request_parameters() == {
        "confidence": 0.3, "iou": 0.5, "max_detections": 10, "classes": "0,car", "agnostic": True}
    assert Params().as_request_parameters() == {}
    names = ["person", "bicycle", "car"]
    assert resolve_class("Car", names) == 2 and resolve_class("1", names) == 1
    with pytest.raises(CliError, match="unknown class name 'cat'"):
        resolve_class("cat", names)
    with pytest.raises(CliError, match="out of range"):
        resolve_class(7, names)
    assert class_names_from_metadata({"parameters": {"class_names": names}}) == names
    assert class_names_from_metadata({"parameters": {"names": '{"0": "a", "1": "b"}'}}) == ["a", "b"]
    assert class_names_from_metadata({"name": "yolov7"}) is None


def _truth(boxes: list[list[float]]) -> dict:
    return {
        "images": [{"id": 1, "width": 640, "height": 480}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": box, "area": box[2] * box[3],
                         "iscrowd": 0} for i, box in enumerate(boxes)],
        "categories": [{"id": 1, "name": "person"}],
    }


def test_coco_metrics_known_values():
    truth = _truth([[100, 100, 100, 100]])  # a 100 x 100 box: "large" (area >= 96²)
    exact = coco_metrics(truth, [{"image_id": 1, "category_id": 1, "bbox": [100, 100, 100, 100], "score": 0.9}], [1])
    assert exact == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AP_small": None, "AP_medium": None,
                                   "AP_large": 1.0}, abs=1e-12)
    # shifted by d = w (1 - q) / (1 + q): IoU q = 0.62 → matches at 0.50, 0.55, 0.60 only
    d = 100 * (1 - 0.62) / (1 + 0.62)
    shifted = coco_metrics(truth, [{"image_id": 1, "category_id": 1, "bbox": [100 + d, 100, 100, 100],
                                    "score": 0.9}], [1])
    assert shifted["AP50"] == pytest.approx(1.0) and shifted["AP75"] == 0.0
    assert shifted["AP"] == pytest.approx(0.3)
    # a false positive ranked above the only true positive halves the precision at every recall
    fp_first = coco_metrics(truth, [
        {"image_id": 1, "category_id": 1, "bbox": [400, 300, 50, 50], "score": 0.95},
        {"image_id": 1, "category_id": 1, "bbox": [100, 100, 100, 100], "score": 0.9}], [1])
    assert fp_first["AP"] == pytest.approx(0.5)
    assert coco_metrics(truth, [], [1])["AP"] == 0.0
    table = format_table(exact, "header")
    assert "AP_medium     n/a" in table and "AP50       1.0000" in table
