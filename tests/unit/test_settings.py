"""Settings: flags, env vars, defaults and bounds round-trip (the operator relies on to_args)."""

from __future__ import annotations

import argparse

import pytest

from predictor.settings import OPTIONS, PredictorSettings, SettingsError, parse_args


def test_to_args_round_trips_every_option():
    custom = PredictorSettings(
        weights="/models/x.pt", variant="yolov7-tiny", device="cuda:1", precision="fp16", accel="cudagraph",
        engine="openvino", engine_cache="/cache",
        input_size=1280, conf_threshold=0.4, iou_threshold=0.6, max_detections=50, classes=("0", "person"),
        max_batch_size=32, max_batch_delay_ms=2.5, max_request_bytes=4096, max_image_pixels=1000,
        max_images_per_request=4, max_queued_images=12, auth_token_file="/run/token", warmup=False, demo=True,
        workers=3, request_logs=True,
    )
    args = custom.to_args()
    assert len(args) == len(OPTIONS)
    assert custom.to_args(only_changed=True) == args  # every option differs from its default here
    assert parse_args(args) == custom


@pytest.mark.parametrize("engine", ["auto", "torch", "onnxruntime", "openvino"])
def test_engine_from_flag_and_env(engine):
    assert parse_args([f"--engine={engine}"]).engine == engine
    assert parse_args([], environ={"YOLO_ENGINE": engine}).engine == engine
    assert PredictorSettings().engine == "auto"


def test_unknown_engine_and_precision_name_the_option():
    with pytest.raises(SettingsError, match="--engine"):
        parse_args(["--engine=tensorrt"])
    assert parse_args(["--precision=bf16"]).precision == "bf16"


def test_only_changed_renders_differences():
    assert PredictorSettings(conf_threshold=0.5).to_args(only_changed=True) == ["--conf_threshold=0.5"]
    assert PredictorSettings().to_args(only_changed=True) == []


def test_precedence_flag_over_env_over_default():
    env = {"YOLO_CONF_THRESHOLD": "0.3", "YOLO_MAX_BATCH_SIZE": "16"}
    settings = parse_args(["--conf_threshold", "0.7"], environ=env)
    assert settings.conf_threshold == 0.7
    assert settings.max_batch_size == 16
    assert settings.iou_threshold == PredictorSettings().iou_threshold


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--conf_threshold=1.5"], "--conf_threshold must be <= 1.0"),
        (["--iou_threshold=-0.1"], "--iou_threshold must be >= 0.0"),
        (["--max_batch_size=0"], "--max_batch_size must be >= 1"),
        (["--max_queued_images=0"], "--max_queued_images must be >= 1"),
        (["--input_size=500"], "multiple of 32"),
        (["--variant=yolov9"], "--variant must be one of"),
        (["--device=tpu"], "--device must be"),
        (["--max_batch_size=many"], "--max_batch_size: invalid literal"),
        (["--warmup=perhaps"], "not a boolean"),
    ],
)
def test_bad_values_name_the_option(argv, fragment):
    with pytest.raises(SettingsError, match=None) as info:
        parse_args(argv)
    assert fragment in str(info.value)


def test_env_errors_name_the_variable():
    with pytest.raises(SettingsError, match="YOLO_MAX_DETECTIONS"):
        parse_args([], environ={"YOLO_MAX_DETECTIONS": "lots"})


def test_extends_an_existing_parser_without_clashing():
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--model_name", default="model")
    parser = argparse.ArgumentParser(parents=[parent])
    PredictorSettings.add_arguments(parser)
    namespace = parser.parse_args(["--model_name", "m", "--classes", "1, 2,person"])
    assert namespace.model_name == "m"
    assert PredictorSettings.from_sources(namespace, environ={}).classes == ("1", "2", "person")


def test_bare_boolean_flags_mean_true():
    assert parse_args(["--demo"]).demo is True
    assert parse_args(["--demo", "false"]).demo is False
    assert parse_args([]).demo is False
    assert parse_args(["--warmup"]).warmup is True


def test_front_ends_auto_is_per_core_on_a_gpu_and_one_on_the_cpu():
    from predictor.settings import AUTO_WORKERS_CAP, front_ends

    assert front_ends(3, "cpu", 2) == 3  # given: as given, whatever the device
    assert front_ends(0, "cpu", 16) == 1  # the CPU forward takes every core
    assert front_ends(0, "cuda", 2) == 2
    assert front_ends(0, "cuda", 64) == AUTO_WORKERS_CAP
    with pytest.raises(SettingsError, match="--workers"):
        PredictorSettings(workers=-1)
