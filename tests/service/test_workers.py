"""``--workers 2``: two front-end processes feeding one model process through shared memory.

Same answers as one process on every protocol, metrics summed over every process, a killed front end
started again, the model process's death ending the front ends (never a server that hangs).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kserve.protocol.infer_type import serialize_byte_tensor

from tests.service.conftest import SERVER_ARGS, SERVER_ENV
from tests.service.helpers import b64, scrape, v2_request
from tests.service.test_protocols import _grpc_outputs
from tests.tools.predictor_server import predictor_server


def _children(pid: int) -> set[int]:
    """Children of every thread of ``pid`` (a front end started again comes from the watcher thread)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(p) for p in (task / "children").read_text().split()}
        except FileNotFoundError:
            continue
    return found


def _front_ends(pid: int) -> set[int]:
    """The model process's front-end children (spawned Pythons, not the resource tracker)."""
    found = set()
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            found.add(child)
    return found


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def workers_server(tiny_weights: Path):
    with predictor_server(tiny_weights, extra_args=[*SERVER_ARGS, "--workers", "2"], env=SERVER_ENV) as running:
        _wait(lambda: len(_front_ends(running.pid)) == 2, 60, "two front ends")
        yield running


def _answers(server, images: dict[str, bytes]) -> dict[str, object]:
    """The same questions on every protocol: v1 JSON, v2 JSON, gRPC raw contents."""
    bus = images["bus"]
    with httpx.Client(timeout=120) as http:
        v1 = http.post(server.predict_url, json={"instances": [{"image": {"b64": b64(bus)}}]})
        v2 = http.post(server.infer_url, json=v2_request(bus, bus, parameters={"confidence": 0.1}))
    v1.raise_for_status()
    v2.raise_for_status()
    raw = serialize_byte_tensor(np.array([bus], dtype=object)).item()
    request = pb.ModelInferRequest(
        model_name="yolov7", raw_input_contents=[raw],
        inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])],
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=120)
    grpc_out = {name: array.tolist() for name, array in _grpc_outputs(response).items()}
    return {"v1": v1.json(), "v2": v2.json()["outputs"], "grpc": grpc_out}


def test_same_answers_as_one_process(server, workers_server, images):
    one, many = _answers(server, images), _answers(workers_server, images)
    assert one["v1"]["predictions"][0]["detections"], "vacuous: no detections to compare"
    for protocol in ("v1", "v2", "grpc"):
        assert many[protocol] == one[protocol], protocol


def test_metrics_are_summed_over_every_process(workers_server, images):
    """Requests on fresh connections land on both front ends (SO_REUSEPORT); /metrics of either counts all
    of them, and the batches, which only the model process (no HTTP port) observes."""
    url = f"{workers_server.http_url}/metrics"
    before = scrape(httpx.Client(timeout=60), workers_server)
    sent = 12
    for _ in range(sent):
        with httpx.Client(timeout=120) as fresh:  # a new connection each time: spread over the front ends
            fresh.post(workers_server.infer_url, json=v2_request(images["bus"])).raise_for_status()
    with httpx.Client(timeout=60) as http:
        after = scrape(http, workers_server)
        assert "yolo_requests_total" in http.get(url).text
    requests = after['yolo_requests_total{protocol="v2"}'] - before.get('yolo_requests_total{protocol="v2"}', 0)
    images_done = after["yolo_images_total"] - before.get("yolo_images_total", 0)
    batched = after["yolo_batch_size_sum"] - before.get("yolo_batch_size_sum", 0)
    assert (requests, images_done, batched) == (sent, sent, sent)
    assert after["yolo_images_in_flight"] == 0


def test_process_metrics_cover_every_process(workers_server):
    """Prometheus' process metrics, once per process of the pod, labelled by its role."""
    front_ends = _front_ends(workers_server.pid)
    with httpx.Client(timeout=60) as http:
        values = scrape(http, workers_server)
    labels = {"model": workers_server.pid, "front-end-0": None, "front-end-1": None}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                 "process_start_time_seconds"):
        for label in labels:
            assert values.get(f'{name}{{process="{label}"}}', 0) > 0, (name, label)
    model_rss = int(Path(f"/proc/{workers_server.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert 0.7 < values['process_resident_memory_bytes{process="model"}'] / model_rss < 1.3
    front_rss = sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) for pid in front_ends) * \
        os.sysconf("SC_PAGE_SIZE")
    scraped = values['process_resident_memory_bytes{process="front-end-0"}'] + \
        values['process_resident_memory_bytes{process="front-end-1"}']
    assert 0.7 < scraped / front_rss < 1.3


def test_front_ends_do_not_load_torch(workers_server, images):
    """A front end parses, decodes and letterboxes (predictor.boxes): torch (~0.6 GB resident) stays in the
    model process. Checked after requests on every protocol, in each front end's memory map."""
    _answers(workers_server, images)
    for pid in _front_ends(workers_server.pid):
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps, pid
    assert "libtorch" in Path(f"/proc/{workers_server.pid}/maps").read_text()  # not vacuous


def test_killed_front_end_is_started_again(workers_server, images):
    first = _front_ends(workers_server.pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    replaced = _wait(lambda: (lambda now: now if len(now) == 2 and victim not in now else None)(
        _front_ends(workers_server.pid)), 90, "a new front end")
    assert len(replaced - first) == 1
    assert "started again" in workers_server.log_text() or "starting it again" in workers_server.log_text()
    _wait(lambda: _ready_everywhere(workers_server), 90, "both front ends ready")
    for _ in range(6):
        with httpx.Client(timeout=120) as fresh:
            fresh.post(workers_server.infer_url, json=v2_request(images["bus"])).raise_for_status()


def _ready_everywhere(server) -> bool:
    """Ready answered on 8 fresh connections (spread over the front ends by the kernel)."""
    for _ in range(8):
        try:
            with httpx.Client(timeout=5) as fresh:
                if fresh.get(f"{server.http_url}/v2/health/ready").status_code != 200:
                    return False
        except httpx.TransportError:
            return False
    return True


def _mapped_files(pid: int) -> set[str]:
    """The files ``pid`` maps that belong to the data plane (slots, metrics)."""
    return {line.split(None, 5)[5] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if "yolo-v7" in line and len(line.split(None, 5)) == 6}


def _run_dir(front_end: int) -> Path:
    environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{front_end}/environ").read_bytes().split(b"\0")
                   if b"=" in item)
    return Path(environ[b"PROMETHEUS_MULTIPROC_DIR"].decode()).parent


def test_model_process_death_ends_the_front_ends_and_leaves_nothing_behind(tiny_weights, images):
    """SIGKILL the model process: the front ends exit (their pipe breaks), the ports close; no hang. Nothing
    of the pod stays behind: no slot file in /dev/shm (or anywhere), no run folder in /tmp."""
    with predictor_server(tiny_weights, extra_args=[*SERVER_ARGS, "--workers", "2"], env=SERVER_ENV) as running:
        front_ends = _wait(lambda: (lambda f: f if len(f) == 2 else None)(_front_ends(running.pid)), 60,
                           "two front ends")
        with httpx.Client(timeout=120) as http:
            http.post(running.infer_url, json=v2_request(images["bus"])).raise_for_status()
        mapped = set().union(*(_mapped_files(pid) for pid in {running.pid, *front_ends}))
        assert any("slots" in name for name in mapped), mapped  # not vacuous: the slots are mapped
        run_dir = _run_dir(min(front_ends))
        assert run_dir.is_dir()
        os.kill(running.pid, signal.SIGKILL)
        running.process.wait(timeout=10)
        _wait(lambda: not any(_alive(pid) for pid in front_ends), 30, "the front ends to exit")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{running.http_url}/v2/health/ready", timeout=5)
    left = {name for name in mapped if name.startswith("/") and os.path.exists(name)}
    assert not left, f"left behind: {sorted(left)}"
    assert not run_dir.exists(), f"left behind: {run_dir}"


def test_grpc_calls_are_not_logged_unless_asked(workers_server, images):
    raw = serialize_byte_tensor(np.array([images["bus"]], dtype=object)).item()
    request = pb.ModelInferRequest(
        model_name="yolov7", raw_input_contents=[raw],
        inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="BYTES", shape=[1])],
    )
    with grpc.insecure_channel(workers_server.grpc_target) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=120)
    time.sleep(0.2)
    assert "grpc method:" not in workers_server.log_text()


def _minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


@pytest.mark.parametrize("fixture", ["server", "workers_server"])
def test_image_memory_is_reused_between_requests(fixture, request, images):
    """Every process of the server keeps image-sized blocks for the next request (predictor.malloc): with
    glibc's defaults each decoded and letterboxed image was a fresh mapping, ~1,250 page faults per bus.jpg
    request over the two front ends, and an munmap on the event loop."""
    running = request.getfixturevalue(fixture)
    pids = [running.pid, *_front_ends(running.pid)]
    with httpx.Client(timeout=120) as http:
        for _ in range(10):
            http.post(running.infer_url, json=v2_request(images["bus"])).raise_for_status()
        before = sum(_minor_faults(pid) for pid in pids)
        for _ in range(20):
            http.post(running.infer_url, json=v2_request(images["bus"])).raise_for_status()
        per_request = (sum(_minor_faults(pid) for pid in pids) - before) / 20
    assert per_request < 100, per_request
