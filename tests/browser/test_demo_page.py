"""The `make dev` demo page in a real headless Chromium, against the real predictor on free ports.

Nothing is mocked: the predictor runs as its own process (`python -m predictor ... --demo`) with the
random-weights yolov7-tiny fixture checkpoint, the page is driven with Playwright on Debian's chromium,
and what the page shows is compared with what the server answers to the same request made directly.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.tools.predictor_server import predictor_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = "yolov7"
CHROMIUM = os.environ.get("YOLO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
RESULT_TIMEOUT_MS = 60_000


# ----- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium_path() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (run `make browser-deps`, or set YOLO_CHROMIUM)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    return CHROMIUM


@pytest.fixture(scope="module")
def predictor_url(yolo_fixtures: Path) -> Iterator[str]:
    checkpoint = yolo_fixtures / "yolov7-tiny-random.pt"
    # `--demo true`: the option takes a value (predictor.settings parses booleans from text)
    with predictor_server(checkpoint, model_name=MODEL, extra_args=["--demo", "true"]) as server:
        yield server.http_url


@pytest.fixture(scope="module")
def browser_context(chromium_path: str, predictor_url: str):
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="yolo-demo-chromium-")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=chromium_path,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context, predictor_url: str):
    page = browser_context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda error: console_errors.append(f"uncaught: {error}"))
    page.goto(predictor_url + "/")
    page.wait_for_selector("body[data-model]", timeout=RESULT_TIMEOUT_MS)  # model metadata loaded
    page.console_errors = console_errors
    yield page
    page.close()


@pytest.fixture(scope="module")
def coco_names(yolo_fixtures: Path) -> list[str]:
    return [str(name) for name in np.load(yolo_fixtures / "golden" / "yolov7-tiny.npz")["names"]]


# ----- helpers ----------------------------------------------------------------------------------------
def infer_directly(url: str, image: bytes, confidence: float, iou: float) -> dict[str, dict]:
    """The request the page makes, made with httpx; returns the outputs by name."""
    payload = {
        "inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                    "data": [base64.b64encode(image).decode()]}],
        "parameters": {"confidence": confidence, "iou": iou},
    }
    response = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=payload, timeout=60)
    response.raise_for_status()
    return {output["name"]: output for output in response.json()["outputs"]}


def set_slider(page, selector: str, value: float) -> None:
    page.fill(selector, f"{value:.2f}")  # fires "input" like a user drag


def wait_for_state(page, state: str, after: int) -> None:
    """Wait until a request newer than ``after`` finished in ``state`` ("done" or "error")."""
    page.wait_for_function(
        "([state, after]) => document.body.dataset.state === state && Number(document.body.dataset.seq) > after",
        arg=[state, after], timeout=RESULT_TIMEOUT_MS,
    )


def request_seq(page) -> int:
    return int(page.evaluate("Number(document.body.dataset.seq || 0)"))


def table(page) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#detections tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.textContent.trim()))"
    )


def canvas_pixels(page) -> np.ndarray:
    """The canvas as an RGB array, read back through toDataURL (PNG)."""
    data_url = page.eval_on_selector("#canvas", "c => c.toDataURL('image/png')")
    png = base64.b64decode(data_url.split(",", 1)[1])
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.shape[2] == 4
    assert (image[..., 3] == 255).all(), "the canvas has undrawn (transparent) pixels"
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)


def screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("YOLO_DEMO_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


# ----- the server side of the page --------------------------------------------------------------------
def test_page_and_assets_are_served_without_hiding_liveness(predictor_url: str) -> None:
    page = httpx.get(predictor_url + "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f"YOLOv7 · {MODEL}" in page.text and "demo/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN

    live = httpx.get(predictor_url + "/", headers={"Accept": "application/json"})  # probes, curl
    assert live.status_code == 200 and live.headers["content-type"].startswith("application/json")

    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        asset = httpx.get(f"{predictor_url}/demo/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert "https://" not in asset.text
    assert httpx.get(f"{predictor_url}/demo/__init__.py").status_code == 404
    assert httpx.get(f"{predictor_url}/demo/").status_code == 200
    redirect = httpx.get(f"{predictor_url}/demo")
    assert redirect.status_code == 307 and redirect.headers["location"] == "demo/"


# ----- the page in Chromium ---------------------------------------------------------------------------
def test_upload_draws_detections_that_match_the_server(page, predictor_url: str, yolo_fixtures: Path,
                                                       coco_names: list[str], tmp_path: Path) -> None:
    bus = yolo_fixtures / "images" / "bus.jpg"
    height, width = cv2.imread(str(bus)).shape[:2]
    status = page.text_content("#status")
    assert MODEL in status and "yolov7-tiny" in status

    # lower the confidence so the random-weights model certainly yields boxes, then upload
    set_slider(page, "#confidence", 0.15)
    assert page.text_content("#confidence-value") == "0.15"
    before = request_seq(page)
    page.set_input_files("#file", str(bus))
    wait_for_state(page, "done", before)

    # the canvas holds the whole image at its own size, and the image was drawn into it
    assert page.eval_on_selector("#canvas", "c => [c.width, c.height]") == [width, height]
    drawn = canvas_pixels(page).astype(np.int16)
    original = cv2.cvtColor(cv2.imread(str(bus)), cv2.COLOR_BGR2RGB).astype(np.int16)
    assert np.median(np.abs(drawn - original)) <= 8, "the canvas does not show bus.jpg"

    # the table shows exactly what the server returns for the same request
    direct = infer_directly(predictor_url, bus.read_bytes(), 0.15, 0.45)
    count = direct["num_detections"]["data"][0]
    rows = table(page)
    assert count > 0 and len(rows) == count
    assert page.text_content("#count") == str(count)
    labels = [row[1] for row in rows]
    assert labels == direct["detection_labels"]["data"][:count]
    assert set(labels) <= set(coco_names)
    assert [int(row[2]) for row in rows] == direct["detection_classes"]["data"][:count]
    scores = [float(row[3]) for row in rows]
    assert scores == pytest.approx(direct["detection_scores"]["data"][:count], abs=6e-4)
    assert all(score >= 0.15 for score in scores) and scores == sorted(scores, reverse=True)
    first_box = [float(v) for v in rows[0][4:8]]
    assert first_box == pytest.approx(direct["detection_boxes"]["data"][:4], abs=0.06)
    # boxes are drawn over the image: along the widest box's top edge the pixels changed
    boxes = np.asarray(direct["detection_boxes"]["data"], np.float32).reshape(-1, 4)[:count]
    x1, y1, x2, _ = np.round(boxes[np.argmax(boxes[:, 2] - boxes[:, 0])]).astype(int)
    assert x2 - x1 >= 4, f"every box is degenerate: {boxes.tolist()}"
    y = min(max(y1, 0), height - 1)
    edge = np.abs(drawn[y, x1 + 1 : x2 - 1] - original[y, x1 + 1 : x2 - 1]).mean()
    assert edge > 20, f"no box drawn along y={y}, x={x1}..{x2} (mean change {edge:.1f})"

    # the raw JSON is the v2 response; the status line shows the time taken
    raw = page.text_content("#json")
    assert '"num_detections"' in raw and '"detection_boxes"' in raw
    assert " ms" in page.text_content("#status") and f"{count} detections" in page.text_content("#status")
    assert page.is_hidden("#error")

    # raising the confidence re-runs the request by itself; the page follows the server again
    before = request_seq(page)
    set_slider(page, "#confidence", 0.6)
    wait_for_state(page, "done", before)
    direct = infer_directly(predictor_url, bus.read_bytes(), 0.6, 0.45)
    assert len(table(page)) == direct["num_detections"]["data"][0] < count

    shot = screenshot_path(tmp_path, "demo-bus.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    assert page.console_errors == []


def test_non_image_shows_the_server_error_and_the_page_recovers(page, predictor_url: str,
                                                                yolo_fixtures: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not an image\n" * 20)
    before = request_seq(page)
    page.set_input_files("#file", str(bogus))
    wait_for_state(page, "error", before)
    message = page.text_content("#error")
    assert page.is_visible("#error")
    assert "HTTP 400" in message and "notes.txt" in message and "not a JPEG, PNG, BMP or WebP image" in message
    assert table(page) == [] and page.text_content("#count") == "0"
    page.screenshot(path=str(screenshot_path(tmp_path, "demo-error.png")), full_page=True)

    # the next upload works as if nothing happened; this time by drag and drop
    zidane = yolo_fixtures / "images" / "zidane.jpg"
    height, width = cv2.imread(str(zidane)).shape[:2]
    before = request_seq(page)
    transfer = page.evaluate_handle(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
            return transfer;
        }""",
        [base64.b64encode(zidane.read_bytes()).decode(), zidane.name],
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    wait_for_state(page, "done", before)
    assert page.is_hidden("#error")
    assert page.eval_on_selector("#canvas", "c => [c.width, c.height]") == [width, height]
    confidence = float(page.input_value("#confidence"))
    direct = infer_directly(predictor_url, zidane.read_bytes(), confidence, float(page.input_value("#iou")))
    assert len(table(page)) == direct["num_detections"]["data"][0]
    assert [e for e in page.console_errors if "400" not in e] == []  # the refused request logs a 400
