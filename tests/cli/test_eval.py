"""``yolo-v7 eval``: AP on a set the test annotates itself, with effects known in advance.

Ground truth = the model's own detections above T = 0.5 (NMS IoU 0.65, like the evaluation), so:

* At the official settings (conf 0.001, IoU 0.65, 300 per image) the detections above T are exactly
  the ground-truth boxes (greedy NMS keeps a box iff no higher-scored kept box overlaps it, so the
  boxes above T do not depend on the boxes below T), each matching its own box at IoU 1. Every extra
  detection scores below T, i.e. below every true positive of every image, so in each class's ranking
  all true positives come first: precision is 1 up to recall 1 and AP is *exactly* 1 — the extras
  cannot lower it (COCOeval keeps 100 detections per image and class; every image here has ≤ 100
  ground-truth boxes, the top-ranked ones). The tolerance is therefore float rounding only.
* Dropping the k highest-scored of the n boxes of class c turns their detections into false positives
  ranked above all m = n − k true positives: interpolated precision is m / n at every recall, so
  AP_c = m / n at every IoU threshold and the mean becomes (K − 1 + m/n) / K over the K classes with
  ground truth. Dropping the k *lowest*-scored instead leaves AP at 1: those false positives rank
  after full recall.
* Shifting every box of class c sideways by d = w·(1 − q)/(1 + q) gives IoU q = 0.62 with its
  detection: a match at the IoU thresholds 0.50, 0.55, 0.60 but not at 0.65 … 0.95, so with only the
  detections above T: AP_c = 3/10, AP50 = 1, AP75 = (K − 1)/K, AP = (K − 1 + 0.3)/K. With the low-score
  extras too, AP50 is still exactly 1 and AP/AP75 can only rise a little above those values.
* Relabelling class c's boxes to a class u that has no detection above T: c has no ground truth left
  (excluded from the mean), u has n boxes and no detection above T (AP_u = 0): AP = (K − 1)/K.

Boxes of zero width or height never match anything in pycocotools (IoU 0 with themselves), so images
holding such a detection above T are left out of the set.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from .conftest import ok, run_cli

T = 0.5
Q = 0.62


def pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    ix = np.clip(np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]), 0, None)
    iy = np.clip(np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]), 0, None)
    inter = ix * iy
    area = (x2 - x1) * (y2 - y1)
    union = area[:, None] + area[None] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    np.fill_diagonal(iou, 0.0)
    return iou


def build_ground_truth(detections: list[dict], images: list[dict]) -> dict:
    """COCO instances from detections (image ids and category ids already COCO's)."""
    from yolo_cli.coco_categories import COCO_CATEGORIES

    degenerate = {d["image_id"] for d in detections if d["bbox"][2] <= 0 or d["bbox"][3] <= 0}
    kept_images = [image for image in images if image["id"] not in degenerate]
    kept = {image["id"] for image in kept_images}
    members = []
    for index, d in enumerate(sorted(detections, key=lambda d: (d["image_id"], -d["score"]))):
        if d["image_id"] in kept:
            x, y, w, h = d["bbox"]
            members.append({"id": index + 1, "image_id": d["image_id"], "category_id": d["category_id"],
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0, "score": d["score"]})
    categories = [{"id": cid, "name": name, "supercategory": ""} for cid, name in COCO_CATEGORIES]
    return {"images": kept_images, "annotations": members, "categories": categories}


def image_records(files: list[Path]) -> list[dict]:
    """COCO ``images`` entries (ids from 1, real sizes) for ``files``."""
    records = []
    for index, path in enumerate(files, start=1):
        height, width = cv2.imread(str(path)).shape[:2]
        records.append({"id": index, "file_name": path.name, "width": width, "height": height})
    return records


def metrics_of(path: Path) -> dict:
    return json.loads(path.read_text())["metrics"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, fixture_images: Path, tiny_weights: Path) -> dict:
    """Ground truth from the model at T, then one evaluation at the official settings (--local)."""
    work = tmp_path_factory.mktemp("eval")
    files = sorted(fixture_images.glob("*.jpg"))
    images = image_records(files)
    (work / "images.json").write_text(json.dumps({"images": images}))
    ok(run_cli("detect", *files, "--local", "--weights", tiny_weights, "--device", "cpu", "--conf", str(T),
               "--iou", "0.65", "--max-det", "300", "--coco", work / "gt_detections.json",
               "--annotations", work / "images.json", "-q"))
    truth = build_ground_truth(json.loads((work / "gt_detections.json").read_text()), images)
    (work / "instances.json").write_text(json.dumps(truth))
    result = ok(run_cli("eval", "--images", fixture_images, "--annotations", work / "instances.json", "--local",
                        "--weights", tiny_weights, "--device", "cpu", "--json", work / "metrics.json",
                        "--save-detections", work / "detections.json"))
    detections = json.loads((work / "detections.json").read_text())
    above = [d for d in detections if d["score"] > T]
    (work / "above.json").write_text(json.dumps(above))
    return {"work": work, "truth": truth, "table": result.stdout, "report": json.loads((work / "metrics.json").read_text()),
            "detections": detections, "above": above}


def classes_with_truth(truth: dict) -> dict[int, list[dict]]:
    by_class: dict[int, list[dict]] = {}
    for annotation in truth["annotations"]:
        by_class.setdefault(annotation["category_id"], []).append(annotation)
    return by_class


def evaluate(work: Path, truth: dict, detections: str, name: str) -> dict:
    (work / f"{name}.json").write_text(json.dumps(truth))
    ok(run_cli("eval", "--annotations", work / f"{name}.json", "--detections", work / detections,
               "--json", work / f"{name}-metrics.json", "-q"))
    return metrics_of(work / f"{name}-metrics.json")


def test_own_detections_score_ap_one(evaluated: dict):
    report, truth = evaluated["report"], evaluated["truth"]
    assert report["settings"] == {"conf": 0.001, "iou": 0.65, "max_det": 300}
    assert report["complete"] and report["images"] == len(truth["images"]) >= 4
    assert report["annotations"] == len(truth["annotations"]) >= 40
    # many low-score extras beyond the ground truth ...
    assert report["detections"] > 5 * len(truth["annotations"])
    # ... and yet AP is exactly 1 (float rounding only), as reasoned in the module docstring
    metrics = report["metrics"]
    for key in ("AP", "AP50", "AP75"):
        assert metrics[key] == pytest.approx(1.0, abs=1e-9), key
    for key in ("AP_small", "AP_medium", "AP_large"):
        assert metrics[key] is None or metrics[key] == pytest.approx(1.0, abs=1e-9), key
    # the detections above T are the ground truth itself (determinism of the two runs)
    assert len(evaluated["above"]) == len(truth["annotations"])
    table = evaluated["table"]
    assert "AP50" in table and "AP_small" in table and "1.0000" in table


def _separated_class(truth: dict, *, grow: float = 0.0, minimum: int = 4) -> tuple[int, list[dict]]:
    """A class with ≥ minimum boxes whose boxes (widened by grow·w each side) never touch each other."""
    by_image: dict[tuple[int, int], list[dict]] = {}
    for annotation in truth["annotations"]:
        by_image.setdefault((annotation["category_id"], annotation["image_id"]), []).append(annotation)
    candidates = []
    for category, members in classes_with_truth(truth).items():
        if len(members) < minimum:
            continue
        separated = True
        for (cat, _), group in by_image.items():
            if cat != category or len(group) < 2:
                continue
            boxes = np.array([[a["bbox"][0] - grow * a["bbox"][2], a["bbox"][1],
                               a["bbox"][0] + a["bbox"][2] * (1 + grow), a["bbox"][1] + a["bbox"][3]]
                              for a in group])
            limit = 0.0 if grow else 0.5
            if (pairwise_iou(boxes) > limit).any():
                separated = False
        if separated:
            candidates.append((len(members), category, members))
    assert candidates, "no class suits this perturbation"
    _, category, members = max(candidates, key=lambda item: (item[0], -item[1]))
    return category, members


def test_dropping_top_scored_boxes_lowers_ap_by_the_predicted_amount(evaluated: dict):
    truth, work = evaluated["truth"], evaluated["work"]
    k_classes = len(classes_with_truth(truth))
    # same-class boxes overlap < 0.5, so a dropped box's detection cannot take another box's place
    category, members = _separated_class(truth)
    n = len(members)
    k = n // 2
    ranked = sorted(members, key=lambda a: -a["score"])
    for name, dropped in (("drop-top", ranked[:k]), ("drop-bottom", ranked[n - k:])):
        ids = {a["id"] for a in dropped}
        perturbed = {**truth, "annotations": [a for a in truth["annotations"] if a["id"] not in ids]}
        metrics = evaluate(work, perturbed, "detections.json", name)  # all official detections
        expected = (k_classes - 1 + (n - k) / n) / k_classes if name == "drop-top" else 1.0
        for key in ("AP", "AP50", "AP75"):
            assert metrics[key] == pytest.approx(expected, abs=1e-6), (name, key, n, k, k_classes)
    assert (k_classes - 1 + (n - k) / n) / k_classes < 1.0


def test_shifted_boxes_count_at_ap50_not_ap75(evaluated: dict):
    truth, work = evaluated["truth"], evaluated["work"]
    k_classes = len(classes_with_truth(truth))
    factor = (1 - Q) / (1 + Q)  # IoU of a box with itself shifted by factor·w is exactly Q
    category, members = _separated_class(truth, grow=factor, minimum=2)
    ids = {a["id"] for a in members}
    shifted = []
    for a in truth["annotations"]:
        if a["id"] in ids:
            x, y, w, h = a["bbox"]
            a = {**a, "bbox": [x + factor * w, y, w, h]}
        shifted.append(a)
    perturbed = {**truth, "annotations": shifted}
    exact = evaluate(work, perturbed, "above.json", "shift-above")
    assert exact["AP50"] == pytest.approx(1.0, abs=1e-9)
    assert exact["AP75"] == pytest.approx((k_classes - 1) / k_classes, abs=1e-6)
    assert exact["AP"] == pytest.approx((k_classes - 1 + 0.3) / k_classes, abs=1e-6)
    official = evaluate(work, perturbed, "detections.json", "shift-all")
    assert official["AP50"] == pytest.approx(1.0, abs=1e-9)
    assert exact["AP75"] - 1e-9 <= official["AP75"] < 1.0
    assert exact["AP"] - 1e-9 <= official["AP"] < 1.0


def test_relabelled_boxes_score_zero_for_their_class(evaluated: dict):
    truth, work = evaluated["truth"], evaluated["work"]
    by_class = classes_with_truth(truth)
    k_classes = len(by_class)
    category, members = max(by_class.items(), key=lambda item: (len(item[1]), -item[0]))
    from yolo_cli.coco_categories import COCO80_TO_91

    unused = next(cid for cid in COCO80_TO_91 if cid not in by_class)
    relabelled = [{**a, "category_id": unused} if a["category_id"] == category else a for a in truth["annotations"]]
    metrics = evaluate(work, {**truth, "annotations": relabelled}, "above.json", "relabel")
    for key in ("AP", "AP50", "AP75"):
        assert metrics[key] == pytest.approx((k_classes - 1) / k_classes, abs=1e-6), key


def test_eval_json_to_stdout(evaluated: dict):
    work = evaluated["work"]
    result = ok(run_cli("eval", "--annotations", work / "instances.json",
                        "--detections", work / "detections.json", "--json", "-"))
    report = json.loads(result.stdout)
    assert report["metrics"]["AP"] == pytest.approx(1.0, abs=1e-9)
    assert "metric" not in result.stdout.split("}")[-1]  # JSON only, no table


def test_eval_through_the_service(cli_server, fixture_images: Path, tmp_path: Path):
    """The same construction through the predictor (REST; one request at a time so both runs see the
    same batch shapes and hence bit-identical boxes)."""
    files = sorted(fixture_images.glob("*.jpg"))
    images = image_records(files)
    (tmp_path / "images.json").write_text(json.dumps({"images": images}))
    ok(run_cli("detect", *files, "--url", cli_server.http_url, "--concurrency", "1", "--conf", str(T),
               "--iou", "0.65", "--max-det", "300", "--coco", tmp_path / "gt.json",
               "--annotations", tmp_path / "images.json", "-q"))
    truth = build_ground_truth(json.loads((tmp_path / "gt.json").read_text()), images)
    (tmp_path / "instances.json").write_text(json.dumps(truth))
    ok(run_cli("eval", "--images", fixture_images, "--annotations", tmp_path / "instances.json",
               "--url", cli_server.http_url, "--concurrency", "1", "--json", tmp_path / "m.json", "-q"))
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["annotations"] >= 40 and report["detections"] > report["annotations"]
    for key in ("AP", "AP50", "AP75"):
        assert report["metrics"][key] == pytest.approx(1.0, abs=1e-6), key


def test_eval_errors(tmp_path: Path):
    fixture_images = tmp_path
    (tmp_path / "bad.json").write_text("[1, 2]")
    result = run_cli("eval", "--annotations", tmp_path / "bad.json", "--detections", tmp_path / "bad.json")
    assert result.returncode == 2 and "not a COCO instances file" in result.stderr
    (tmp_path / "none.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "absent.jpg"}],
                                                    "annotations": [], "categories": []}))
    result = run_cli("eval", "--images", fixture_images, "--annotations", tmp_path / "none.json",
                     "--url", "http://127.0.0.1:9")
    assert result.returncode == 2 and "absent.jpg" in result.stderr
    result = run_cli("eval", "--annotations", tmp_path / "none.json", "--url", "http://127.0.0.1:9")
    assert result.returncode == 2 and "needs --images" in result.stderr


def _renumbered(truth: dict, new_id) -> dict:
    """The same set with every category renumbered by ``new_id(class index)``."""
    from yolo_cli.coco_categories import COCO80_TO_91

    index_of = {cid: index for index, cid in enumerate(COCO80_TO_91)}
    categories = [{**c, "id": new_id(index_of[c["id"]])} for c in truth["categories"]]
    annotations = [{**a, "category_id": new_id(index_of[a["category_id"]])} for a in truth["annotations"]]
    return {**truth, "categories": categories, "annotations": annotations}


def test_eval_detects_the_category_scheme_and_refuses_a_contradicting_map(evaluated: dict, fixture_images: Path,
                                                                          tiny_weights: Path):
    """Ids 1..80 with COCO names: the old default (the COCO 80 → 91 table) scored AP ≈ 0.1 here without a
    word; now the categories are matched by name (AP exactly 1, as for COCO's own ids), an explicit map
    that contradicts the names is refused, and a nameless 1..80 set is refused rather than guessed."""
    work = evaluated["work"]
    local = ["--images", fixture_images, "--local", "--weights", tiny_weights, "--device", "cpu"]
    one_to_80 = _renumbered(evaluated["truth"], lambda index: index + 1)
    (work / "one-to-80.json").write_text(json.dumps(one_to_80))
    result = ok(run_cli("eval", "--annotations", work / "one-to-80.json", *local, "--json", work / "one-to-80-m.json"))
    assert "categories: ids 1..80, matched to the model's classes by name (80 of 80)" in result.stderr
    for key in ("AP", "AP50", "AP75"):
        assert metrics_of(work / "one-to-80-m.json")[key] == pytest.approx(1.0, abs=1e-6), key

    refused = run_cli("eval", "--annotations", work / "one-to-80.json", *local, "--category-map", "coco80")
    assert refused.returncode == 2
    assert "--category-map coco80 does not fit ids 1..80" in refused.stderr and "use --category-map names" in refused.stderr

    nameless = {**one_to_80, "categories": [{"id": c["id"]} for c in one_to_80["categories"]]}
    (work / "nameless.json").write_text(json.dumps(nameless))
    refused = run_cli("eval", "--annotations", work / "nameless.json", *local)
    assert refused.returncode == 2 and "cannot tell how the model's classes map" in refused.stderr
    # 0..79 without names is the model's own numbering: accepted, and scored right
    zero_based = _renumbered(evaluated["truth"], lambda index: index)
    zero_based["categories"] = [{"id": c["id"]} for c in zero_based["categories"]]
    (work / "zero-based.json").write_text(json.dumps(zero_based))
    result = ok(run_cli("eval", "--annotations", work / "zero-based.json", *local, "--json", work / "zero-m.json"))
    assert "taken as the model's own class ids (identity)" in result.stderr
    assert metrics_of(work / "zero-m.json")["AP"] == pytest.approx(1.0, abs=1e-6)

    # results written with COCO's ids, scored against the 1..80 set: said loudly
    result = ok(run_cli("eval", "--annotations", work / "one-to-80.json", "--detections", work / "above.json"))
    assert "detections have category ids the annotations do not have" in result.stderr
