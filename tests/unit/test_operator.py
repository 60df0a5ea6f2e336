"""Pure parts of the operator outside the builders: status conditions, configuration, command line."""

from __future__ import annotations

import kopf
from yolo_operator import handlers
from yolo_operator.__main__ import parse_args
from yolo_operator.config import OperatorConfig


def test_condition_keeps_its_transition_time_while_the_status_holds():
    first = handlers.condition("Ready", "False", "Pending", "", [])
    assert "message" not in first  # empty messages are left out (the API server turns "" into null)
    earlier = {**first, "lastTransitionTime": "2020-01-01T00:00:00Z"}
    same = handlers.condition("Ready", "False", "StillPending", "waiting", [earlier])
    assert same["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert same["message"] == "waiting"
    flipped = handlers.condition("Ready", "True", "Up", "", [earlier])
    assert flipped["lastTransitionTime"] != "2020-01-01T00:00:00Z"


def test_ready_mirrors_the_inference_services_ready_condition():
    assert handlers.ready_condition(None, [])["reason"] == "InferenceServiceMissing"
    assert handlers.ready_condition({"status": {}}, [])["status"] == "Unknown"
    isvc = {"status": {"conditions": [
        {"type": "PredictorReady", "status": "True"},
        {"type": "Ready", "status": "False", "reason": "RevisionMissing", "message": "no revision"},
    ]}}
    ready = handlers.ready_condition(isvc, [])
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "RevisionMissing", "no revision")
    ok = handlers.ready_condition({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, [])
    assert (ok["status"], ok["reason"]) == ("True", "InferenceServiceReady")


def test_config_from_env_defaults_and_overrides():
    assert OperatorConfig.from_env({}) == OperatorConfig()
    config = OperatorConfig.from_env({"YOLO_OPERATOR_NAMESPACES": "a, b", "YOLO_OPERATOR_RESYNC_SECONDS": "30",
                                      "YOLO_OPERATOR_BAKED_VARIANTS": "", "YOLO_OPERATOR_WATCH_TIMEOUT_SECONDS": "15"})
    assert config.namespaces == ("a", "b")
    assert config.resync_seconds == 30.0
    assert config.watch_timeout_seconds == 15.0
    assert config.baked_variants == ()


def test_command_line_namespaces_and_liveness():
    _, config = parse_args([], OperatorConfig(namespaces=("from-env",)))
    assert config.namespaces == ("from-env",)
    assert config.liveness == "http://0.0.0.0:8080/healthz"
    _, config = parse_args(["-n", "x", "--namespace=y", "--liveness=http://127.0.0.1:9/healthz"], OperatorConfig())
    assert config.namespaces == ("x", "y")
    assert config.liveness == "http://127.0.0.1:9/healthz"
    _, config = parse_args(["--all-namespaces"], OperatorConfig(namespaces=("from-env",)))
    assert config.namespaces == ()


def test_register_attaches_every_handler_without_touching_the_default_registry():
    registry = handlers.register(kopf.OperatorRegistry(), OperatorConfig())
    ids = {handler.id for handler in registry._changing.get_all_handlers()}
    assert {"create", "update", "resume"} <= ids
    assert {h.id for h in registry._spawning.get_all_handlers()} == {"resync"}
    assert {h.id for h in registry._watching.get_all_handlers()} == {"owned"}


def test_main_starts_kopf_again_after_a_failure(monkeypatch, caplog):
    """kopf stops for good when one watch fails (e.g. a 404 from a restarting API server): main() runs it again."""
    from yolo_operator import __main__ as entry

    calls, pauses = [], []

    def fake_run(**kwargs):
        calls.append(kwargs)
        if len(calls) < 3:
            raise RuntimeError("404 page not found")

    monkeypatch.setattr(entry.kopf, "run", fake_run)
    monkeypatch.setattr(entry.time, "sleep", pauses.append)
    with caplog.at_level("WARNING", logger="yolo_operator"):
        assert entry.main(["-n", "ns", "--liveness="]) == 0
    assert len(calls) == 3
    assert pauses == [2.0, 4.0]  # growing pause between attempts
    assert all(call["namespaces"] == ("ns",) for call in calls)
    assert calls[0]["memo"] is not calls[1]["memo"]  # fresh in-memory state for each run
    assert "starting it again in 2 s (failure 1 in a row)" in caplog.text
