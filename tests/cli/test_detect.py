"""``yolo-v7 detect`` as a subprocess against a real predictor (REST and gRPC) and in-process (--local)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from yolo_cli.outputs import video_format

from tests.tools.ports import free_port

from .conftest import REPO_ROOT, cli_command, make_video, ok, read_jsonl, read_video, run_cli, scrape_batches

CONF = "0.3"


def drawing_mask(shape: tuple[int, int], boxes: list[list[float]]) -> np.ndarray:
    """Where the CLI may draw: each box with a margin, its label tag above it (or inside its top) and to
    the right (label text can be wider than the box)."""
    height, width = shape
    mask = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in boxes:
        left, top = max(0, int(x1) - 6), max(0, int(y1) - 40)
        right, bottom = min(width, int(max(x2, x1 + 260)) + 6), min(height, int(y2) + 6)
        mask[top:bottom, left:right] = True
    return mask


def edge_pixels(shape: tuple[int, int], boxes: list[list[float]]) -> np.ndarray:
    """The left and right edges of the boxes that are at least 8 px tall (where a rectangle is drawn)."""
    height, width = shape
    mask = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in boxes:
        if y2 - y1 < 8 or x2 - x1 < 4:
            continue
        rows = slice(int(round(y1)) + 2, int(round(y2)) - 1)
        for x in (int(round(x1)), int(round(x2))):
            mask[rows, min(max(x, 0), width - 1)] = True
    return mask


def test_images_rest_equal_local(cli_server, fixture_images: Path, tiny_weights: Path, tmp_path: Path):
    rest = ok(run_cli("detect", fixture_images, "--url", cli_server.http_url, "--conf", CONF, "--concurrency", "1",
                      "--jsonl", tmp_path / "rest.jsonl", "-q"))
    assert rest.stderr == ""  # --quiet: no progress bar, no summary
    ok(run_cli("detect", fixture_images, "--local", "--weights", tiny_weights, "--device", "cpu", "--conf", CONF,
               "--jsonl", tmp_path / "local.jsonl", "-q"))
    served, local = read_jsonl(tmp_path / "rest.jsonl"), read_jsonl(tmp_path / "local.jsonl")
    files = sorted(fixture_images.glob("*.jpg"))
    assert [Path(item["file"]).name for item in served] == [path.name for path in files]
    assert [item["file"] for item in local] == [item["file"] for item in served]
    total = 0
    for item, reference, path in zip(served, local, files, strict=True):
        height, width = cv2.imread(str(path)).shape[:2]
        assert (item["height"], item["width"]) == (height, width) == (reference["height"], reference["width"])
        assert item["frame"] is None
        n = len(item["scores"])
        assert len(item["boxes"]) == len(item["classes"]) == len(item["labels"]) == n
        assert all(score > float(CONF) for score in item["scores"])
        assert item["scores"] == sorted(item["scores"], reverse=True)
        assert item["classes"] == reference["classes"], path.name
        np.testing.assert_allclose(item["scores"], reference["scores"], atol=2e-4, err_msg=path.name)
        np.testing.assert_allclose(np.reshape(item["boxes"], (-1, 4)), np.reshape(reference["boxes"], (-1, 4)),
                                   atol=0.05, err_msg=path.name)
        total += n
    assert total > 20  # the random checkpoint finds plenty at this threshold: the comparison is not vacuous


def test_grpc_equals_rest(cli_server, fixture_images: Path, tmp_path: Path):
    ok(run_cli("detect", fixture_images, "--url", cli_server.http_url, "--conf", CONF, "--classes", "person,car,3",
               "--jsonl", tmp_path / "rest.jsonl", "-q"))
    ok(run_cli("detect", fixture_images, "--grpc", cli_server.grpc_target, "--conf", CONF, "--classes", "0,car,3",
               "--jsonl", tmp_path / "grpc.jsonl", "-q"))
    rest, grpc = read_jsonl(tmp_path / "rest.jsonl"), read_jsonl(tmp_path / "grpc.jsonl")
    assert [item["file"] for item in grpc] == [item["file"] for item in rest]
    kept = set()
    for a, b in zip(rest, grpc, strict=True):
        assert a["classes"] == b["classes"] and a["labels"] == b["labels"]
        np.testing.assert_allclose(a["scores"], b["scores"], atol=2e-4)
        kept.update(a["classes"])
    assert kept and kept <= {0, 2, 3}  # the class filter (names and ids) reached the server


def test_annotated_image_is_drawn_only_around_detections(cli_server, fixture_images: Path, tmp_path: Path):
    # PNG in, PNG out: lossless, so pixels away from every detection must be untouched
    source = tmp_path / "in" / "zidane.png"
    source.parent.mkdir()
    original = cv2.resize(cv2.imread(str(fixture_images / "zidane.jpg")), (640, 360), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(source), original)
    ok(run_cli("detect", source, "--url", cli_server.http_url, "--conf", "0.2",
               "--out", tmp_path / "out", "--jsonl", tmp_path / "d.jsonl", "-q"))
    [item] = read_jsonl(tmp_path / "d.jsonl")
    assert len(item["boxes"]) >= 1
    annotated = cv2.imread(str(tmp_path / "out" / "zidane.png"))
    assert annotated.shape == original.shape
    changed = np.any(annotated != original, axis=2)
    allowed = drawing_mask(original.shape[:2], item["boxes"])
    assert not changed[~allowed].any(), "pixels changed away from every detection"
    edges = edge_pixels(original.shape[:2], item["boxes"])
    if edges.any():
        assert changed[edges].mean() > 0.9, "box edges are not drawn"
    assert changed.any()


def test_video_through_rest(cli_server, fixture_images: Path, tmp_path: Path):
    video = tmp_path / "clip.mp4"
    make_video(video, fixture_images / "bus.jpg", frames=12, fps=15.0, size=(320, 240))
    source_frames, fps, size = read_video(video)
    assert len(source_frames) == 12
    forwards_before, images_before = scrape_batches(cli_server.http_url)
    result = ok(run_cli("detect", video, "--url", cli_server.http_url, "--conf", "0.1", "--concurrency", "4",
                        "--out", tmp_path / "out", "--jsonl", tmp_path / "d.jsonl"))
    assert "12 frames" in result.stderr and "frames/s" in result.stderr
    forwards_after, images_after = scrape_batches(cli_server.http_url)
    # 12 frames reached the model in fewer forwards: concurrent requests were batched server-side
    assert images_after - images_before == 12
    assert forwards_after - forwards_before < 12

    records = read_jsonl(tmp_path / "d.jsonl")
    assert [item["frame"] for item in records] == list(range(12))
    assert all(item["file"] == str(video) for item in records)
    assert [item["time"] for item in records] == [round(index / 15.0, 3) for index in range(12)]
    assert all((item["width"], item["height"]) == size for item in records)

    # a format browsers play (docs/cli.md): H.264 MP4 where OpenCV has the encoder, else VP8 WebM
    suffix, fourcc, _ = video_format()
    assert (suffix, fourcc) in (("mp4", "avc1"), ("webm", "VP80"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"clip.{suffix}"]
    capture = cv2.VideoCapture(str(tmp_path / "out" / f"clip.{suffix}"))
    codec = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("latin-1").lower()
    capture.release()
    assert codec in ("avc1", "h264", "vp80", "vp08"), codec
    annotated, out_fps, out_size = read_video(tmp_path / "out" / f"clip.{suffix}")
    assert len(annotated) == 12 and out_size == size and out_fps == pytest.approx(fps, abs=1e-3)
    drawn = 0
    for item, before, after in zip(records, source_frames, annotated, strict=True):
        difference = np.abs(after.astype(np.int16) - before.astype(np.int16)).max(axis=2)
        away = ~drawing_mask(before.shape[:2], item["boxes"])
        assert away.mean() > 0.05
        # the encoder is lossy: far from any box the frame only carries compression noise
        assert difference[away].mean() < 8, f"frame {item['frame']}: changed away from the detections"
        edges = edge_pixels(before.shape[:2], item["boxes"])
        if edges.any():
            assert difference[edges].mean() > 30, f"frame {item['frame']}: boxes not drawn"
            drawn += 1
    assert drawn >= 6, "too few frames with drawable detections for the check to mean anything"


def test_concurrency_keeps_input_order(cli_server, fixture_images: Path, tmp_path: Path):
    video = tmp_path / "clip.mp4"
    make_video(video, fixture_images / "bus.jpg", frames=10, size=(240, 320), shift=9)
    inputs = [video, fixture_images / "zidane.jpg", fixture_images / "horses.jpg"]
    ok(run_cli("detect", *inputs, "--url", cli_server.http_url, "--concurrency", "1", "--conf", CONF,
               "--jsonl", tmp_path / "serial.jsonl", "-q"))
    ok(run_cli("detect", *inputs, "--url", cli_server.http_url, "--concurrency", "6", "--batch", "2", "--conf", CONF,
               "--jsonl", tmp_path / "concurrent.jsonl", "-q"))
    serial, concurrent = read_jsonl(tmp_path / "serial.jsonl"), read_jsonl(tmp_path / "concurrent.jsonl")
    assert [(item["file"], item["frame"]) for item in serial] == [(str(video), i) for i in range(10)] + [
        (str(inputs[1]), None), (str(inputs[2]), None)]
    assert [(item["file"], item["frame"]) for item in concurrent] == [(item["file"], item["frame"]) for item in serial]
    for a, b in zip(serial, concurrent, strict=True):
        assert a["classes"] == b["classes"]
        np.testing.assert_allclose(a["scores"], b["scores"], atol=2e-4)


def test_predictor_down(fixture_images: Path):
    port = free_port()
    result = run_cli("detect", fixture_images / "bus.jpg", "--url", f"http://127.0.0.1:{port}", "-q")
    assert result.returncode == 3
    assert f"cannot reach the predictor at http://127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("detect", fixture_images / "bus.jpg", "--grpc", f"127.0.0.1:{port}", "--timeout", "3", "-q")
    assert result.returncode == 3
    assert f"cannot reach the predictor at 127.0.0.1:{port}" in result.stderr


def test_unreadable_inputs_are_skipped_and_named(cli_server, fixture_images: Path, tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(fixture_images / "zidane.jpg", folder / "a.jpg")
    (folder / "b.jpg").write_bytes(b"this is not a JPEG")
    shutil.copy(fixture_images / "horses.jpg", folder / "c.jpg")
    (folder / "d.mp4").write_bytes(b"not a video either")
    missing = tmp_path / "nowhere.png"
    result = run_cli("detect", folder, missing, "--url", cli_server.http_url, "--jsonl", tmp_path / "d.jsonl")
    assert result.returncode == 1, result.stderr
    assert "b.jpg" in result.stderr and "d.mp4" in result.stderr and str(missing) in result.stderr
    assert "Traceback" not in result.stderr
    assert [Path(item["file"]).name for item in read_jsonl(tmp_path / "d.jsonl")] == ["a.jpg", "c.jpg"]


def test_server_errors_are_shown(cli_server, fixture_images: Path):
    image = fixture_images / "zidane.jpg"
    results = []
    result = run_cli("detect", image, "--url", cli_server.http_url, "--max-det", "20000", "-q")
    results.append(result)
    assert result.returncode == 4
    assert "HTTP 400" in result.stderr and "max_detections" in result.stderr
    result = run_cli("detect", image, "--grpc", cli_server.grpc_target, "--max-det", "20000", "-q")
    results.append(result)
    assert result.returncode == 4
    assert "INVALID_ARGUMENT" in result.stderr and "max_detections" in result.stderr
    result = run_cli("detect", image, "--url", cli_server.http_url, "--model", "nope", "-q")
    results.append(result)
    assert result.returncode == 4 and "nope" in result.stderr
    result = run_cli("detect", image, "--url", cli_server.http_url, "--classes", "unicorn", "-q")
    results.append(result)
    assert result.returncode == 2 and "unknown class name 'unicorn'" in result.stderr
    for each in results:
        assert "Traceback" not in each.stderr, each.args


@pytest.mark.parametrize(
    "args, message",
    [
        (["detect"], "the following arguments are required"),
        (["detect", "x.jpg", "--local"], "--local needs --weights"),
        (["detect", "x.jpg", "--conf", "1.5"], "between 0 and 1"),
        (["detect", "x.jpg", "--weights", "w.pt"], "--weights is for --local"),
    ],
)
def test_usage_errors(args: list[str], message: str):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr


def _interrupt_when(process: subprocess.Popen, jsonl: Path, lines: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the CLI ended (exit {process.returncode}) before it could be interrupted: "
                        f"{process.stderr.read()}")
        if jsonl.exists() and jsonl.read_text().count("\n") >= lines:
            process.send_signal(signal.SIGINT)
            return
        time.sleep(0.05)
    process.kill()
    pytest.fail("the CLI made no progress")


def test_sigint_leaves_playable_video_and_complete_jsonl(cli_server, fixture_images: Path, tmp_path: Path):
    video = tmp_path / "long.mp4"
    make_video(video, fixture_images / "zidane.jpg", frames=150, fps=25.0, size=(160, 120), shift=2)
    jsonl = tmp_path / "out" / "d.jsonl"
    process = subprocess.Popen(
        cli_command("detect", video, "--url", cli_server.http_url, "--out", tmp_path / "out", "--jsonl", jsonl,
                    "--concurrency", "2"),
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _interrupt_when(process, jsonl, 5)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    records = read_jsonl(jsonl)
    assert 5 <= len(records) < 150
    assert [item["frame"] for item in records] == list(range(len(records)))
    frames, fps, size = read_video(tmp_path / "out" / f"long.{video_format()[0]}")
    assert len(frames) == len(records) and size == (160, 120) and fps == pytest.approx(25.0, abs=1e-3)


def test_sigint_writes_coco_for_completed_images(cli_server, fixture_images: Path, tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    small = cv2.resize(cv2.imread(str(fixture_images / "bus.jpg")), (192, 256), interpolation=cv2.INTER_AREA)
    for index in range(1, 121):
        cv2.imwrite(str(folder / f"{index:012d}.png"), np.roll(small, index, axis=1))
    jsonl, coco = tmp_path / "d.jsonl", tmp_path / "coco.json"
    process = subprocess.Popen(
        cli_command("detect", folder, "--url", cli_server.http_url, "--conf", "0.1", "--jsonl", jsonl,
                    "--coco", coco, "--concurrency", "2", "-q"),
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    _interrupt_when(process, jsonl, 5)
    process.communicate(timeout=120)
    assert process.returncode == 130
    records = read_jsonl(jsonl)
    results = json.loads(coco.read_text())
    assert 5 <= len(records) < 120
    completed = {int(Path(item["file"]).stem) for item in records}
    assert {item["image_id"] for item in results} == {
        int(Path(item["file"]).stem) for item in records if item["scores"]}
    assert completed == set(range(1, len(records) + 1))
    assert len(results) == sum(len(item["scores"]) for item in records)
    assert not list(tmp_path.glob("*.partial"))


def test_coco_output_maps_ids(fixture_images: Path, tiny_weights: Path, tmp_path: Path):
    from yolo_cli.coco_categories import COCO80_TO_91

    files = sorted(fixture_images.glob("*.jpg"))[:3]
    ids = {path.name: 1000 + index for index, path in enumerate(files)}
    (tmp_path / "images.json").write_text(json.dumps(
        {"images": [{"id": ids[path.name], "file_name": path.name} for path in files]}))
    ok(run_cli("detect", *files, "--local", "--weights", tiny_weights, "--device", "cpu", "--conf", CONF,
               "--coco", tmp_path / "coco.json", "--annotations", tmp_path / "images.json",
               "--jsonl", tmp_path / "d.jsonl", "-q"))
    records = read_jsonl(tmp_path / "d.jsonl")
    results = json.loads((tmp_path / "coco.json").read_text())
    expected = []
    for item in records:
        for box, score, cls in zip(item["boxes"], item["scores"], item["classes"], strict=True):
            expected.append((ids[Path(item["file"]).name], COCO80_TO_91[cls], box, score))
    assert len(results) == len(expected) > 0
    for result, (image_id, category_id, box, score) in zip(results, expected, strict=True):
        assert result["image_id"] == image_id and result["category_id"] == category_id
        x, y, w, h = result["bbox"]
        np.testing.assert_allclose([x, y, x + w, y + h], box, atol=0.006)
        assert result["score"] == pytest.approx(score, abs=1e-5)
    # no image ids → a clear error before any work
    result = run_cli("detect", files[0], "--local", "--weights", tiny_weights, "--coco", tmp_path / "x.json")
    assert result.returncode == 2 and "--coco needs an image id" in result.stderr


def test_console_script_is_installed():
    script = Path(os.environ.get("VIRTUAL_ENV", Path(cli_command()[0]).parent.parent)) / "bin" / "yolo-v7"
    found = shutil.which("yolo-v7") or (str(script) if script.exists() else None)
    if found is None:
        pytest.skip("the yolo-v7 console script is not installed in this environment")
    result = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("yolo-v7 ")


def test_ctrl_c_does_not_wait_for_a_request_in_flight(fixture_images: Path, tmp_path: Path):
    """A predictor that accepts the request and never answers: Ctrl-C ends the CLI with 130 without
    waiting for that request (which could take the whole --timeout, 300 s here)."""
    import http.server
    import threading

    arrived = threading.Event()
    release = threading.Event()

    class Stuck(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # model metadata: enough for the client
            body = json.dumps({"name": "yolov7", "parameters": {"class_names": ["person"]}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            arrived.set()
            release.wait(300)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stuck)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        process = subprocess.Popen(
            cli_command("detect", fixture_images / "zidane.jpg", "--url", f"http://127.0.0.1:{server.server_port}",
                        "--timeout", "300", "--jsonl", tmp_path / "d.jsonl"),
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert arrived.wait(120), "the request never reached the stub predictor"
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)  # far below the 300 s the request could still take
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("Ctrl-C waited for the request in flight")
        stderr = process.stderr.read()
        assert process.returncode == 130, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr
        assert (tmp_path / "d.jsonl").read_text() == ""
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_second_ctrl_c_aborts_at_once():
    """After the first Ctrl-C the process may still be busy (closing outputs, or the interpreter waiting
    for a worker thread at exit): the second one ends it there and then, with 130 and no traceback."""
    script = (
        "import os, signal, threading\n"
        "from yolo_cli.pipeline import StopFlag\n"
        "with StopFlag() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert stop.stopped\n"
        "print('first', flush=True)\n"
        "threading.Event().wait(300)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                   [str(REPO_ROOT / "cli"), os.environ.get("PYTHONPATH", "")])})
    assert process.stdout.readline().strip() == "first"
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("a second Ctrl-C did not abort")
    stderr = process.stderr.read()
    assert process.returncode == 130, stderr
    assert "Ctrl-C again to abort" in stderr and "aborted" in stderr and "Traceback" not in stderr


def test_video_format_mp4v_on_request(cli_server, fixture_images: Path, tmp_path: Path):
    video = tmp_path / "clip.mp4"
    make_video(video, fixture_images / "bus.jpg", frames=3, fps=10.0, size=(160, 120))
    ok(run_cli("detect", video, "--url", cli_server.http_url, "--out", tmp_path / "out", "--video-format", "mp4v", "-q"))
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    codec = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("latin-1").lower()
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert codec in ("mp4v", "fmp4") and count == 3  # FFmpeg reports MPEG-4 part 2 as FMP4
