"""What the predictor picks when started with no arguments: weights (KServe mount, else baked) and ports."""

from __future__ import annotations

import pytest

from predictor.settings import (
    BAKED_WEIGHTS_DIR,
    BAKED_WEIGHTS_ENV,
    GRPC_PORT,
    HTTP_PORT,
    MODEL_MOUNT_DIR,
    PredictorSettings,
    SettingsError,
    default_weights,
    parse_args,
    serving_ports,
)


def test_no_weights_option_means_automatic():
    assert PredictorSettings().weights == ""
    assert parse_args([]).weights == ""
    assert parse_args(["--weights", "/x.pt"]).weights == "/x.pt"


@pytest.mark.parametrize("environ", [{}, {BAKED_WEIGHTS_ENV: "/elsewhere/yolov7-tiny.pt"}])
def test_kserve_mount_wins_when_present(environ):
    path, why = default_weights(environ, is_dir=lambda p: p == MODEL_MOUNT_DIR)
    assert (path, why) == ("/mnt/models", "KServe's storageUri mount")


def test_baked_weights_without_a_mount():
    path, why = default_weights({}, is_dir=lambda p: False)
    assert path == BAKED_WEIGHTS_DIR == "/opt/yolo-v7/weights"
    assert why == "baked into the image; no /mnt/models"
    path, why = default_weights({BAKED_WEIGHTS_ENV: "/fixtures/yolov7-tiny.pt"}, is_dir=lambda p: False)
    assert path == "/fixtures/yolov7-tiny.pt" and BAKED_WEIGHTS_ENV in why


def test_baked_dir_is_the_operators():
    from yolo_operator import config

    assert config.BAKED_WEIGHTS_DIR == BAKED_WEIGHTS_DIR and config.MODEL_MOUNT_PATH == MODEL_MOUNT_DIR
    assert (config.HTTP_PORT, config.GRPC_PORT) == (HTTP_PORT, GRPC_PORT)


@pytest.mark.parametrize(("flags", "environ", "expected"), [
    ((None, None), {}, (8080, 8081, "default")),
    ((None, None), {"PORT": "9000"}, (9000, 8081, "$PORT")),  # Cloud Run, Knative
    ((None, None), {"PORT": " 8080 "}, (8080, 8081, "$PORT")),
    ((None, None), {"PORT": "8081"}, (8081, 8082, "$PORT")),  # gRPC steps aside
    ((None, None), {"PORT": ""}, (8080, 8081, "default")),
    ((7000, None), {"PORT": "9000"}, (7000, 8081, "--http_port")),  # a flag wins (the operator's args)
    ((None, 7001), {"PORT": "9000"}, (9000, 7001, "$PORT")),
    ((0, 0), {}, (0, 0, "--http_port")),  # both free ports (tests)
])
def test_serving_ports(flags, environ, expected):
    assert serving_ports(*flags, environ=environ) == expected


@pytest.mark.parametrize(("flags", "environ", "message"), [
    ((None, None), {"PORT": "http"}, "PORT='http': must be a TCP port number"),
    ((None, None), {"PORT": "70000"}, "PORT='70000'"),
    ((None, None), {"PORT": "0"}, "PORT='0'"),
    ((None, 9000), {"PORT": "9000"}, "--grpc_port 9000 is also the HTTP port ($PORT)"),
])
def test_bad_ports_are_named(flags, environ, message):
    with pytest.raises(SettingsError, match=None) as error:
        serving_ports(*flags, environ=environ)
    assert message in str(error.value)
