"""The `make dev` demo page in a real headless Chromium, against the real predictor on free ports.

Nothing is mocked: the predictor runs as its own process (`python -m predictor ... --demo`) with the
random-weights yolov7-tiny fixture checkpoint, the page is driven with Playwright on Debian's chromium,
and what the page shows is compared with what the server answers to the same request made directly.
Image, video file (a small clip written here with OpenCV) and webcam (Chromium's fake camera:
``--use-fake-device-for-media-stream``) all go through the page's one request path; for video and
webcam the frame the page sent is read back from the page and sent again by the test.

Screenshots land in ``YOLO_DEMO_SCREENSHOTS`` when set (else the test's tmp folder).
"""

from __future__ import annotations

import base64
import json
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
    # a synthetic camera (moving test pattern) that needs no permission prompt
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "predictor" / "demo" / "samples"
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
@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 3 s, 10 frames/s, 320x240 pan across the astronaut sample, written by the same writer as
    `yolo-v7 detect --out` (so this test also shows that the CLI's annotated videos play in a browser)."""
    from yolo_cli.outputs import open_video

    writer, path = open_video(tmp_path_factory.mktemp("clip") / "pan", 10.0, (320, 240))
    image = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    for i in range(30):
        writer.write(cv2.resize(image[40:, i * 5 : i * 5 + 360], (320, 240)))
    writer.release()
    return path


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


def wait_for_frames(page, source: str, frames: int) -> None:
    page.wait_for_function(
        "([source, n]) => document.body.dataset.source === source && Number(document.body.dataset.frames) >= n",
        arg=[source, frames], timeout=RESULT_TIMEOUT_MS,
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


def check_drawn_frame(page, url: str, tmp_path: Path, name: str) -> dict:
    """The frame on screen (read back from the page) sent again by the test: the page's table and boxes
    equal the server's answer for it, and the canvas shows that frame with those boxes drawn over it."""
    last = page.evaluate("() => window.yoloDemo.last()")
    assert last is not None and last["kind"] == "frame"
    jpeg = base64.b64decode(last["jpeg"])
    direct = infer_directly(url, jpeg, last["confidence"], last["iou"])
    count = direct["num_detections"]["data"][0]
    assert len(last["detections"]) == count
    assert [d["label"] for d in last["detections"]] == direct["detection_labels"]["data"][:count]
    assert [d["cls"] for d in last["detections"]] == direct["detection_classes"]["data"][:count]
    assert [d["score"] for d in last["detections"]] == pytest.approx(direct["detection_scores"]["data"][:count], abs=1e-5)
    boxes = np.asarray(direct["detection_boxes"]["data"], np.float32).reshape(-1, 4)[:count]
    assert np.asarray([d["box"] for d in last["detections"]], np.float32).reshape(-1, 4) == pytest.approx(boxes, abs=1e-3)
    rows = table(page)
    assert len(rows) == count and [row[1] for row in rows] == direct["detection_labels"]["data"][:count]

    frame = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    drawn = canvas_pixels(page)
    assert drawn.shape == frame.shape, "the canvas is not the frame that was sent"
    height, width = frame.shape[:2]
    diff = np.abs(drawn.astype(np.int16) - frame.astype(np.int16)).max(axis=2)
    assert np.median(diff) <= 12, "the canvas does not show the frame that was sent"
    if count:
        # every box's top-left corner lies under its stroke: those pixels were painted over
        corners = [(min(max(int(round(y1)), 0), height - 1), min(max(int(round(x1)), 0), width - 1))
                   for x1, y1, _, _ in boxes]
        painted = [diff[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].max() > 40 for y, x in corners]
        assert sum(painted) >= 0.9 * len(painted), f"boxes not drawn at {corners[:5]}..."
    page.screenshot(path=str(screenshot_path(tmp_path, name)), full_page=True)
    return {"count": count, "direct": direct}


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


def test_unsupported_files_get_clear_messages_and_the_page_recovers(page, predictor_url: str,
                                                                     yolo_fixtures: Path, tmp_path: Path) -> None:
    # a text file: refused by the page itself, before any request, with what to choose instead
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not an image\n" * 20)
    before = request_seq(page)
    page.set_input_files("#file", str(bogus))
    page.wait_for_function("() => document.body.dataset.state === 'error'", timeout=RESULT_TIMEOUT_MS)
    message = page.text_content("#error")
    assert "notes.txt (text/plain) is not an image or a video" in message
    assert "JPEG, PNG, BMP or WebP" in message and "HTTP" not in message
    assert request_seq(page) == before, "the page sent a file it knew the server cannot read"

    # a .jpg that is not one: the page sends it and shows the server's own reason, not raw bytes
    fake = tmp_path / "broken.jpg"
    fake.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 10)
    page.set_input_files("#file", str(fake))
    wait_for_state(page, "error", before)
    message = page.text_content("#error")
    assert page.is_visible("#error")
    assert message.startswith("The server refused broken.jpg (HTTP 400): ") and "{" not in message
    assert table(page) == [] and page.text_content("#count") == "0"
    assert page.get_attribute("#download-json", "aria-disabled") == "true"
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


def test_examples_gallery_by_keyboard_with_filter_and_downloads(page, predictor_url: str, tmp_path: Path) -> None:
    set_slider(page, "#confidence", 0.15)
    page.wait_for_timeout(400)  # let the slider's (empty-page) debounce pass
    names = page.eval_on_selector_all("button.sample", "bs => bs.map(b => b.dataset.sample)")
    assert names == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]
    for name in names:  # every example is served, and its licence is recorded beside it
        image = httpx.get(f"{predictor_url}/demo/samples/{name}")
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert image.content == (SAMPLES / name).read_bytes()
        assert name in (SAMPLES / "README.md").read_text()

    # keyboard only: focus the second example, Shift+Tab back to the first, Enter
    page.focus("button.sample[data-sample='chelsea.jpg']")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("() => document.activeElement.dataset.sample") == "astronaut.jpg"
    before = request_seq(page)
    page.keyboard.press("Enter")
    wait_for_state(page, "done", before)
    direct = infer_directly(predictor_url, (SAMPLES / "astronaut.jpg").read_bytes(), 0.15, 0.45)
    count = direct["num_detections"]["data"][0]
    labels = direct["detection_labels"]["data"][:count]
    assert count > 1 and [row[1] for row in table(page)] == labels

    # per-class filter: untick the most frequent class; its rows and boxes go, the rest stay
    frequent = max(set(labels), key=labels.count)
    classes = direct["detection_classes"]["data"][:count]
    cls = classes[labels.index(frequent)]
    page.uncheck(f"#filter-items input[value='{cls}']")
    kept = [label for label in labels if label != frequent]
    assert [row[1] for row in table(page)] == kept
    assert page.text_content("#count") == f"{len(kept)} of {count}"

    # downloads: the JSON holds what is shown (and the full v2 answer), the PNG is the canvas
    with page.expect_download() as info:
        page.focus("#download-json")
        page.keyboard.press("Enter")
    saved = json.loads(Path(info.value.path()).read_text())
    assert info.value.suggested_filename == "astronaut-detections.json"
    assert saved["source"] == "astronaut.jpg" and saved["hidden_classes"] == [cls]
    assert [d["label"] for d in saved["detections"]] == kept
    assert saved["response"]["outputs"] and (saved["width"], saved["height"]) == (512, 512)
    with page.expect_download() as info:
        page.click("#download-image")
    assert info.value.suggested_filename == "astronaut-detections.png"
    png = cv2.cvtColor(cv2.imread(info.value.path()), cv2.COLOR_BGR2RGB)
    assert np.array_equal(png, canvas_pixels(page))
    page.check(f"#filter-items input[value='{cls}']")
    assert len(table(page)) == count
    page.screenshot(path=str(screenshot_path(tmp_path, "demo-gallery.png")), full_page=True)
    assert page.console_errors == []


def test_video_file_frames_are_drawn_with_the_servers_boxes(page, predictor_url: str, clip: Path,
                                                            tmp_path: Path) -> None:
    set_slider(page, "#confidence", 0.15)
    page.set_input_files("#file", str(clip))  # a video in the image tab switches to the video tab
    wait_for_frames(page, "video", 3)
    assert page.get_attribute("button.mode[data-mode='video']", "aria-pressed") == "true"
    assert page.is_visible("#rate") and float(page.text_content("#fps")) > 0
    assert float(page.text_content("#latency")) > 0
    page.screenshot(path=str(screenshot_path(tmp_path, "demo-video-playing.png")), full_page=True)
    # the clip plays to its end (3 s); the last frame stays on screen with its boxes
    page.wait_for_function("() => document.body.dataset.state === 'done'", timeout=RESULT_TIMEOUT_MS)
    assert "video ended after" in page.text_content("#status")
    frames = int(page.text_content("#frames"))
    assert frames >= 3
    check_drawn_frame(page, predictor_url, tmp_path, "demo-video.png")
    print(f"video: {frames} frames, {page.text_content('#fps')} frames/s, {page.text_content('#latency')} ms")
    assert page.console_errors == []


def test_webcam_frames_are_drawn_with_the_servers_boxes(page, predictor_url: str, tmp_path: Path) -> None:
    set_slider(page, "#confidence", 0.5)
    page.click("button.mode[data-mode='webcam']")
    assert page.is_hidden("#dropzone") and page.is_visible("#webcam-start")
    page.click("#webcam-start")
    wait_for_frames(page, "webcam", 3)
    page.click("#webcam-stop")
    page.wait_for_function("() => document.body.dataset.state === 'done'", timeout=RESULT_TIMEOUT_MS)
    assert "webcam stopped" in page.text_content("#status")
    assert page.evaluate("() => document.getElementById('video').srcObject.getTracks()"
                         ".every(t => t.readyState === 'ended')"), "the camera was left on"
    result = check_drawn_frame(page, predictor_url, tmp_path, "demo-webcam.png")
    print(f"webcam: {result['count']} detections on the last frame, {page.text_content('#fps')} frames/s")
    assert page.console_errors == []


def test_small_screen_keeps_everything_reachable(page, tmp_path: Path) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    before = request_seq(page)
    page.click("button.sample[data-sample='coffee.jpg']")
    wait_for_state(page, "done", before)
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), "sideways scrolling"
    for selector in ("button.mode[data-mode='webcam']", "#confidence", "#download-image", "#detections",
                     "a#model-card"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390 + 1, selector
    assert page.get_attribute("a#model-card", "href") == "model-card"
    page.screenshot(path=str(screenshot_path(tmp_path, "demo-small-screen.png")), full_page=True)
