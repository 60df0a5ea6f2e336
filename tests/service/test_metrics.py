"""KServe's Prometheus ``/metrics`` also carries the predictor's own metrics: batch sizes, per-stage
latencies, request and error counters."""

from __future__ import annotations

import time

import httpx

from tests.service.helpers import b64, scrape, v2_request
from tests.tools.predictor_server import predictor_server

STAGES = ("decode", "preprocess", "forward", "postprocess")


def test_metrics_after_requests(http, server, images):
    before = scrape(http, server)
    assert http.post(server.infer_url, json=v2_request(images["bus"], images["zidane"])).status_code == 200
    assert http.post(server.predict_url, json={"instances": [b64(images["horses"])]}).status_code == 200
    bad = http.post(server.infer_url, json=v2_request(b"not an image"))
    assert bad.status_code == 400
    after = scrape(http, server)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    for stage in STAGES:
        assert delta(f'yolo_stage_seconds_count{{stage="{stage}"}}') >= 1, stage
        assert after[f'yolo_stage_seconds_sum{{stage="{stage}"}}'] > 0, stage
    assert delta('yolo_stage_seconds_count{stage="decode"}') == 3  # per image
    assert delta("yolo_batch_size_sum") == 3
    assert delta("yolo_batch_size_count") >= 1
    assert delta('yolo_requests_total{protocol="v2"}') == 2
    assert delta('yolo_requests_total{protocol="v1"}') == 1
    assert delta("yolo_images_total") == 3
    assert delta('yolo_request_errors_total{code="decode",protocol="v2"}') == 1
    # KServe's own histograms are still there
    assert delta('request_predict_seconds_count{model_name="yolov7"}') >= 2
    assert 'request_preprocess_seconds_count{model_name="yolov7"}' in after


def test_oversize_bodies_are_counted(http, server):
    before = scrape(http, server)
    response = http.post(server.infer_url, content=b"x" * 3_100_000, headers={"content-type": "application/json"})
    assert response.status_code == 413
    after = scrape(http, server)
    key = 'yolo_request_errors_total{code="payload_too_large",protocol="v2"}'
    assert after.get(key, 0) - before.get(key, 0) == 1


def test_server_timing_header(http, server, images):
    response = http.post(server.infer_url, json=v2_request(images["bus"], images["zidane"]))
    assert response.status_code == 200
    timing = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    assert set(timing) == set(STAGES)
    assert all(float(value) > 0 for value in timing.values()), timing
    v1 = http.post(server.predict_url, json={"instances": [b64(images["bus"])]})
    assert "forward;dur=" in v1.headers["server-timing"]


def _request_lines(log: str) -> list[str]:
    """Access-log lines of v2 infer requests (not the startup line that names the URL)."""
    return [line for line in log.splitlines() if "POST /v2/models/" in line and "/infer" in line]


def test_request_logs_are_off_by_default_and_on_when_asked(http, server, images, tiny_weights):
    http.post(server.infer_url, json=v2_request(images["bus"])).raise_for_status()
    time.sleep(0.2)  # the log is flushed by the server process
    assert "ready" in server.log_text() and _request_lines(server.log_text()) == []

    with predictor_server(tiny_weights, extra_args=["--input_size", "64", "--request_logs"]) as logging_server, \
            httpx.Client(timeout=60) as client:
        for _ in range(2):
            client.post(logging_server.infer_url, json=v2_request(images["bus"])).raise_for_status()
        deadline = time.monotonic() + 10
        while len(_request_lines(logging_server.log_text())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = _request_lines(logging_server.log_text())
    assert len(lines) >= 2 and any("200" in line for line in lines), logging_server.log_tail()
