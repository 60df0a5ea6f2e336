"""The CPU batching rule (predictor.batch_plan): measured per-image cost decides, explicit flags win.

Fake engines on a fake clock: a forward of ``n`` images advances the clock by the engine's cost for ``n``,
so the rule sees exact figures and the test is deterministic.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import pytest

from predictor import batch_plan
from predictor.batch_plan import MIN_GAIN, PROBE_BATCH, decide, measure_per_image, plan_batching
from predictor.settings import PredictorSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class _Device:
    type: str = "cpu"


class FakeEngine:
    """A detector whose forward of ``n`` images costs ``cost(n)`` seconds on ``clock``."""

    def __init__(self, cost, clock: FakeClock, device: str = "cpu"):
        self.cost, self.clock = cost, clock
        self.device = _Device(device)
        self.calls: list[int] = []
        self.input_size, self.engine, self.precision = 64, "onnxruntime", "fp32"
        self.variant, self.num_classes = "yolov7-tiny", 80
        self.trimmed = 0

        class Runtime:
            version = "fake"

            def trim(runtime) -> None:  # noqa: N805 - the fake engine's runtime
                self.trimmed += 1

        self.runtime = Runtime()

    def stack(self, letterboxed):
        return np.stack(letterboxed)

    def forward(self, batch):
        self.calls.append(len(batch))
        self.clock.now += self.cost(len(batch))
        return batch


FLAT = lambda n: 0.050 * n  # noqa: E731 - 50 ms per image whatever the batch
SUBLINEAR = lambda n: 0.050 + 0.010 * (n - 1)  # noqa: E731 - a batch of 4 costs 80 ms: 20 ms per image


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(batch_plan.time, "perf_counter", fake)
    return fake


def test_measure_interleaves_sizes_after_warming_each_and_reports_ms_per_image():
    clock = FakeClock()
    engine = FakeEngine(SUBLINEAR, clock)
    per_image, rounds = measure_per_image(engine.forward, lambda n: np.zeros((n, 3)), clock=clock)
    assert per_image == {1: pytest.approx(50.0), PROBE_BATCH: pytest.approx(80.0 / PROBE_BATCH)}
    assert engine.calls == [1, PROBE_BATCH] + [1, PROBE_BATCH] * rounds  # estimate + warm-up, then ABAB
    assert rounds == batch_plan.MAX_ROUNDS  # 0.25 s of estimate and warm-up + 0.25 s per round: 3 fit


def test_measure_runs_fewer_rounds_for_a_slower_model_but_at_least_one():
    clock = FakeClock()
    engine = FakeEngine(lambda n: 0.12 * n, clock)  # 0.6 s for the estimate and warm-up, 0.6 s a round
    _, rounds = measure_per_image(engine.forward, lambda n: np.zeros((n, 3)), clock=clock)
    assert rounds == 1 and engine.calls == [1, PROBE_BATCH, 1, PROBE_BATCH]


def test_a_model_too_slow_to_probe_serves_one_at_a_time_after_one_forward(clock):
    engine = FakeEngine(lambda n: 0.5 * n, clock)  # 0.5 s per image: the probe alone would take 4.5 s
    plan = plan_batching(engine, PredictorSettings())
    assert engine.calls == [1]
    assert (plan.max_batch_size, plan.max_batch_delay_ms, plan.per_image_ms) == (1, 0.0, {1: 500.0})
    assert plan.source.startswith("too slow to probe") and "b1 500.0 ms/image" in plan.log_line()


def test_flat_per_image_cost_serves_one_image_at_a_time_without_delay(clock):
    engine = FakeEngine(FLAT, clock)
    plan = plan_batching(engine, PredictorSettings())
    assert (plan.max_batch_size, plan.max_batch_delay_ms, plan.source) == (1, 0.0, "measured")
    assert plan.gain == pytest.approx(1.0) and plan.per_image_ms == {1: 50.0, PROBE_BATCH: 50.0}
    assert "does not pay" in plan.log_line() and "b4 50.0 ms/image" in plan.log_line()
    assert engine.trimmed == 1  # the probe batch's memory is given back: no batch that large will come


def test_strongly_sublinear_cost_keeps_the_configured_batching(clock):
    engine = FakeEngine(SUBLINEAR, clock)
    plan = plan_batching(engine, PredictorSettings())
    defaults = PredictorSettings()
    assert (plan.max_batch_size, plan.max_batch_delay_ms) == (defaults.max_batch_size, defaults.max_batch_delay_ms)
    assert plan.gain == pytest.approx(2.5) and "batching pays" in plan.log_line()
    assert engine.trimmed == 0


def test_the_margin_is_a_clear_gain_not_any_gain():
    per_image = {1: 50.0, PROBE_BATCH: 50.0 / (MIN_GAIN - 0.05)}  # batches 15 % cheaper: not enough
    assert decide(per_image, max_batch_size=8, max_batch_delay_ms=5.0).max_batch_size == 1
    per_image = {1: 50.0, PROBE_BATCH: 50.0 / MIN_GAIN}
    assert decide(per_image, max_batch_size=8, max_batch_delay_ms=5.0).max_batch_size == 8


@pytest.mark.parametrize("argv", [["--max_batch_size", "8"], ["--max_batch_delay_ms", "5"]])
def test_an_explicit_flag_wins_even_at_the_default_value(clock, argv):
    parser = PredictorSettings.add_arguments(argparse.ArgumentParser())
    settings = PredictorSettings.from_sources(parser.parse_args(argv), environ={})
    engine = FakeEngine(FLAT, clock)
    plan = plan_batching(engine, settings)
    assert (plan.max_batch_size, plan.max_batch_delay_ms, plan.source) == (8, 5.0, "flags")
    assert engine.calls == []  # nothing measured


def test_an_environment_variable_is_explicit_too(clock):
    settings = PredictorSettings.from_sources(None, environ={"YOLO_MAX_BATCH_SIZE": "4"})
    assert settings.is_explicit("max_batch_size") and not settings.is_explicit("max_batch_delay_ms")
    assert plan_batching(FakeEngine(FLAT, clock), settings).max_batch_size == 4


def test_the_gpu_keeps_its_batching_unmeasured(clock):
    engine = FakeEngine(FLAT, clock, device="cuda")
    assert plan_batching(engine, PredictorSettings()).source == "flags" and engine.calls == []


def test_no_warmup_allowed_means_one_at_a_time_on_the_cpu(clock):
    engine = FakeEngine(SUBLINEAR, clock)
    plan = plan_batching(engine, PredictorSettings(), measurable=False)
    assert (plan.max_batch_size, plan.max_batch_delay_ms, plan.source) == (1, 0.0, "not measured")
    assert engine.calls == []


def test_the_decision_is_cached_and_a_restart_does_not_measure(clock, tmp_path):
    readonly, writable = tmp_path / "ro", tmp_path / "rw"
    readonly.write_text("a file where a folder should be: not writable")
    first = plan_batching(FakeEngine(SUBLINEAR, clock), PredictorSettings(), cache_folders=[readonly, writable])
    assert len(list(writable.glob("batching-*.json"))) == 1
    engine = FakeEngine(FLAT, clock)  # a restart: the cached figures win, nothing is run
    again = plan_batching(engine, PredictorSettings(), cache_folders=[readonly, writable])
    assert engine.calls == [] and again.source == "cached"
    assert (again.max_batch_size, again.per_image_ms) == (first.max_batch_size, first.per_image_ms)


@pytest.mark.parametrize("content", ['[1, 2]', '{"per_image_ms": [1, 4], "rounds": 3}',
                                    '{"per_image_ms": {"1": 0, "4": 0}, "rounds": 3}', '{"rounds": 3}', "{"])
def test_a_broken_cache_file_is_measured_again(clock, tmp_path, content):
    """The cache folder may hold anything (a model volume, an older version): a file that does not read as the
    figures is ignored and the engine measured, never a failed start."""
    plan_batching(FakeEngine(SUBLINEAR, clock), PredictorSettings(), cache_folders=[tmp_path])
    [cached] = tmp_path.glob("batching-*.json")
    cached.write_text(content)
    engine = FakeEngine(SUBLINEAR, clock)
    plan = plan_batching(engine, PredictorSettings(), cache_folders=[tmp_path])
    assert engine.calls and plan.source == "measured"
