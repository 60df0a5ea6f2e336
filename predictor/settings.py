"""Every predictor option, declared once: its command-line flag, environment variable, default and bounds.

This module imports nothing heavy (no torch, no kserve): the operator imports it to render the predictor
container's arguments, so the flag names have exactly one source of truth.

Precedence when the predictor starts: command-line flag > environment variable > default.
Flag names follow KServe's own style (``--model_name``, ``--http_port``): underscores.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

VARIANT_NAMES: tuple[str, ...] = (
    "yolov7-tiny",
    "yolov7",
    "yolov7x",
    "yolov7-w6",
    "yolov7-e6",
    "yolov7-d6",
    "yolov7-e6e",
)
DEVICES_HELP = "auto, cpu, cuda or cuda:N"
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")
ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
ACCELERATIONS: tuple[str, ...] = ("auto", "eager", "cudagraph", "compile")
ENV_PREFIX = "YOLO_"


class SettingsError(ValueError):
    """An option has a value outside its bounds or of the wrong type; the message names the option."""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true/false)")


def _parse_classes(text: str | Sequence[str | int] | None) -> tuple[str, ...]:
    """Class filter: comma-separated class ids or names ("0,2,person"). Empty means all classes."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else [str(item) for item in text]
    return tuple(item.strip() for item in items if item.strip())


@dataclass(frozen=True)
class Option:
    """One predictor option. ``name`` is the attribute on PredictorSettings."""

    name: str
    parse: Callable[[str], Any]
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("weights", str, "checkpoint file, or a directory holding one (KServe mounts storageUri at /mnt/models)"),
    Option("variant", str, "architecture; detected from the checkpoint when empty", choices=("",) + VARIANT_NAMES),
    Option("device", str, f"inference device: {DEVICES_HELP}"),
    Option("precision", str, "auto = fp16 on CUDA, fp32 on CPU; bf16: CPU engine openvino only", choices=PRECISIONS),
    Option("engine", str, "CPU engine: auto = the fastest passing parity here (torch on CUDA), torch, onnxruntime "
           "or openvino (see predictor.runtimes)", choices=ENGINES),
    Option("engine_cache", str, "folder for exported models; empty = next to the weights, else XDG/TMPDIR cache"),
    Option("accel", str, "CUDA acceleration: auto, eager, cudagraph or compile", choices=ACCELERATIONS),
    Option("input_size", int, "square network input size in pixels (multiple of 32; 0 = the variant's native size)",
           minimum=0, maximum=4096),
    Option("conf_threshold", float, "default confidence threshold (per request overridable)", minimum=0.0, maximum=1.0),
    Option("iou_threshold", float, "default NMS IoU threshold (per request overridable)", minimum=0.0, maximum=1.0),
    Option("max_detections", int, "default maximum detections per image", minimum=1, maximum=10000),
    Option("classes", _parse_classes, "default class filter: comma-separated ids or names; empty = all"),
    Option("max_batch_size", int, "largest batch the dynamic batcher forms", minimum=1, maximum=1024),
    Option("max_batch_delay_ms", float, "how long the batcher waits to fill a batch", minimum=0.0, maximum=10000.0),
    Option("max_request_bytes", int, "largest accepted request body (REST and gRPC)", minimum=1024),
    Option("max_image_pixels", int, "largest accepted image (width x height), checked before decoding", minimum=1),
    Option("max_images_per_request", int, "largest number of images in one request", minimum=1, maximum=4096),
    Option("max_queued_images", int, "images admitted at once (decoding, queued or in a batch); more get 503",
           minimum=1),
    Option("warmup", _parse_bool, "run warm-up forwards before reporting ready"),
    Option("demo", _parse_bool, "serve the demo page at / (for `make dev`)"),
    Option("request_logs", _parse_bool,
           "log every request (uvicorn's access log, KServe's per-request timings); off: at thousands of "
           "requests/s they cost a CPU core and flood the log (errors and /metrics are unaffected)"),
)
OPTIONS_BY_NAME: Mapping[str, Option] = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class PredictorSettings:
    """The predictor's configuration. Defaults here are the documented defaults."""

    weights: str = "/mnt/models"
    variant: str = ""
    device: str = "auto"
    precision: str = "auto"
    engine: str = "auto"
    engine_cache: str = ""
    accel: str = "auto"
    input_size: int = 0
    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 300
    classes: tuple[str, ...] = field(default_factory=tuple)
    max_batch_size: int = 8
    max_batch_delay_ms: float = 5.0
    max_request_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_images_per_request: int = 64
    max_queued_images: int = 256
    warmup: bool = True
    demo: bool = False
    request_logs: bool = False

    def __post_init__(self) -> None:
        for option in OPTIONS:
            _check_bounds(option, getattr(self, option.name))
        if self.input_size and self.input_size % 32:
            raise SettingsError(f"--input_size must be a multiple of 32 (got {self.input_size})")
        device = self.device
        if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise SettingsError(f"--device must be {DEVICES_HELP} (got {device!r})")

    # ----- construction -------------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add every option to ``parser`` (e.g. a child of ``kserve.model_server.parser``).

        Argument defaults are None so that an absent flag falls back to the environment, then the default.
        """
        group = parser.add_argument_group("yolo-v7 predictor")
        defaults = cls()
        for option in OPTIONS:
            default = getattr(defaults, option.name)
            shown = ",".join(default) if isinstance(default, tuple) else default
            group.add_argument(
                option.flag,
                dest=option.name,
                type=str,
                default=None,
                nargs="?" if option.parse is _parse_bool else None,
                const="true" if option.parse is _parse_bool else None,
                help=f"{option.help} (env {option.env}; default {shown!r})",
            )
        return parser

    @classmethod
    def from_sources(
        cls, namespace: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
    ) -> PredictorSettings:
        """Build settings from parsed flags, then environment variables, then defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for option in OPTIONS:
            raw = getattr(namespace, option.name, None) if namespace is not None else None
            source = option.flag
            if raw is None and option.env in environ:
                raw, source = environ[option.env], option.env
            if raw is None:
                continue
            try:
                values[option.name] = option.parse(raw) if isinstance(raw, str) else raw
            except ValueError as error:
                raise SettingsError(f"{source}: {error}") from None
        return cls(**values)

    # ----- rendering (used by the operator) ----------------------------------------------------------
    def to_args(self, *, only_changed: bool = False) -> list[str]:
        """Render as ``["--flag=value", ...]`` in declaration order; parsed back, it equals ``self``."""
        defaults = PredictorSettings()
        args: list[str] = []
        for option in OPTIONS:
            value = getattr(self, option.name)
            if only_changed and value == getattr(defaults, option.name):
                continue
            args.append(f"{option.flag}={_render(value)}")
        return args


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _check_bounds(option: Option, value: Any) -> None:
    if option.choices is not None and value not in option.choices:
        allowed = ", ".join(choice or "''" for choice in option.choices)
        raise SettingsError(f"{option.flag} must be one of {allowed} (got {value!r})")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if option.minimum is not None and value < option.minimum:
        raise SettingsError(f"{option.flag} must be >= {option.minimum} (got {value})")
    if option.maximum is not None and value > option.maximum:
        raise SettingsError(f"{option.flag} must be <= {option.maximum} (got {value})")


def parse_args(argv: Iterable[str], environ: Mapping[str, str] | None = None) -> PredictorSettings:
    """Parse only our options from ``argv`` (unknown flags ignored): handy for tests and the operator."""
    parser = PredictorSettings.add_arguments(argparse.ArgumentParser(add_help=False))
    namespace, _ = parser.parse_known_args(list(argv))
    return PredictorSettings.from_sources(namespace, environ={} if environ is None else environ)


__all__ = [
    "ACCELERATIONS",
    "ENGINES",
    "OPTIONS",
    "OPTIONS_BY_NAME",
    "Option",
    "PRECISIONS",
    "PredictorSettings",
    "SettingsError",
    "VARIANT_NAMES",
    "parse_args",
]
