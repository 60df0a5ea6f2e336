"""Every predictor option, declared once: its command-line flag, environment variable, default and bounds.

This module imports nothing heavy (no torch, no kserve): the operator imports it to render the predictor
container's arguments, so the flag names have exactly one source of truth.

Precedence when the predictor starts: command-line flag > environment variable > default.
Flag names follow KServe's own style (``--model_name``, ``--http_port``): underscores.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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
GPU_ACCELERATIONS: tuple[str, ...] = ("cudagraph", "compile")  # the modes that need a CUDA device
ENV_PREFIX = "YOLO_"

# Where the checkpoint is when neither --weights nor YOLO_WEIGHTS is given, in this order:
MODEL_MOUNT_DIR = "/mnt/models"  # KServe's storage initializer puts spec.storageUri here (it wins when present)
BAKED_WEIGHTS_DIR = "/opt/yolo-v7/weights"  # the image's baked checkpoints (Dockerfile, stage "weights")
BAKED_WEIGHTS_ENV = "YOLO_BAKED_WEIGHTS"  # another baked file or folder (tests point it at a fixture)
# Ports: REST on $PORT when the platform sets it (Cloud Run, Knative), else HTTP_PORT; gRPC on GRPC_PORT,
# or the REST port + 1 when $PORT takes GRPC_PORT.
HTTP_PORT = 8080
GRPC_PORT = 8081
PORT_ENV = "PORT"
MAX_WORKERS = 64
# Given by no flag on the CPU, these are decided by measuring the engine at start-up (predictor.batch_plan)
MEASURED_ON_CPU: tuple[str, ...] = ("max_batch_size", "max_batch_delay_ms")
AUTO_WORKERS_CAP = 8  # --workers 0 on a GPU: one front end per core, at most this many


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
    Option("weights", str, "checkpoint file, or a directory holding one; empty = KServe's storageUri mount "
           f"{MODEL_MOUNT_DIR} when present, else the image's baked checkpoint in {BAKED_WEIGHTS_DIR} "
           f"(env {BAKED_WEIGHTS_ENV} names another)"),
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
    Option("auth_token_file", str, "file holding the bearer token REST/gRPC callers must send (Authorization: "
           "Bearer ...); health probes and /metrics are exempt; empty = no check (predictor/auth.py)"),
    Option("warmup", _parse_bool, "run warm-up forwards before reporting ready"),
    Option("demo", _parse_bool, "serve the demo page at / (for `make dev`)"),
    Option("workers", int, "front-end processes (REST + gRPC: parse, validate, decode, letterbox) feeding ONE model "
           "process through shared memory; 1 (default) = one process; 0 = auto: one per core (at most 8) on a GPU, 1 on "
           "the CPU (the forward takes every core there). Opt-in: not yet measured on a GPU", minimum=0, maximum=MAX_WORKERS),
    Option("request_logs", _parse_bool,
           "log every request (uvicorn's access log, KServe's per-request timings); off: at thousands of "
           "requests/s they cost a CPU core and flood the log (errors and /metrics are unaffected)"),
)
OPTIONS_BY_NAME: Mapping[str, Option] = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class PredictorSettings:
    """The predictor's configuration. Defaults here are the documented defaults."""

    weights: str = ""
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
    auth_token_file: str = ""
    warmup: bool = True
    demo: bool = False
    workers: int = 1
    request_logs: bool = False
    # the options given by flag or environment variable (from_sources); see is_explicit
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

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
        return cls(**values, given=frozenset(values))

    def is_explicit(self, name: str) -> bool:
        """Whether option ``name`` was chosen rather than left at its default: given by flag or environment
        variable (:meth:`from_sources`), or set to another value than the default."""
        return name in self.given or getattr(self, name) != getattr(type(self)(), name)

    # ----- rendering (used by the operator) ----------------------------------------------------------
    def to_args(self, *, only_changed: bool = False, only_changed_for: Collection[str] = ()) -> list[str]:
        """Render as ``["--flag=value", ...]`` in declaration order; parsed back, it equals ``self``.

        ``only_changed``: leave out every option at its default; ``only_changed_for``: these options only
        (e.g. :data:`MEASURED_ON_CPU`, which the predictor decides itself when no flag gives them)."""
        defaults = PredictorSettings()
        args: list[str] = []
        for option in OPTIONS:
            value = getattr(self, option.name)
            if (only_changed or option.name in only_changed_for) and value == getattr(defaults, option.name):
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


# ----- per-request detection parameters ---------------------------------------------------------------
@dataclass(frozen=True)
class DetectParams:
    """What one request asks of the detector; every field defaults to the predictor's default above.

    The same names are the request parameters on the wire (``confidence``, ``iou``, ``max_detections``,
    ``classes``, ``agnostic``); the predictor flags set their defaults (``--conf_threshold``,
    ``--iou_threshold``, ``--max_detections``, ``--classes``). Checked once, here, against the flags'
    bounds; the engine and the NMS take a ``DetectParams`` whole and trust it.

    * ``confidence``: a prediction is a candidate if its objectness is above it, and kept if objectness ×
      best class probability is above it too.
    * ``iou``: boxes of one class overlapping more than this (IoU) are suppressed.
    * ``max_detections``: at most this many detections per image (highest scores first).
    * ``classes``: the class ids kept (``None`` or empty: every class); checked against the model's
      number of classes by the NMS, the one place that knows it.
    * ``agnostic``: suppress overlapping boxes across classes too.
    """

    confidence: float = PredictorSettings.conf_threshold
    iou: float = PredictorSettings.iou_threshold
    max_detections: int = PredictorSettings.max_detections
    classes: tuple[int, ...] | None = None
    agnostic: bool = False

    def __post_init__(self) -> None:
        for name, option in (("confidence", "conf_threshold"), ("iou", "iou_threshold"),
                             ("max_detections", "max_detections")):
            value, bounds = getattr(self, name), OPTIONS_BY_NAME[option]
            integer = bounds.parse is int
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
                    or (integer and float(value) != int(value)):
                kind = "an integer" if integer else "a number"
                raise ValueError(f"'{name}' must be {kind} in [{bounds.minimum:g}, {bounds.maximum:g}], "
                                 f"got {value!r}")
            if not bounds.minimum <= value <= bounds.maximum:
                raise ValueError(f"'{name}' must be in [{bounds.minimum:g}, {bounds.maximum:g}], got {value}")
            object.__setattr__(self, name, int(value) if integer else float(value))
        classes = self.classes
        if classes is not None:
            if isinstance(classes, str | bytes) or not all(
                    isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
                raise ValueError(f"'classes' must be class ids (integers >= 0), got {classes!r}")
            object.__setattr__(self, "classes", tuple(sorted(set(classes))) or None)
        if not isinstance(self.agnostic, bool):
            raise ValueError(f"'agnostic' must be true or false, got {self.agnostic!r}")


def default_weights(environ: Mapping[str, str] | None = None,
                    is_dir: Callable[[str], bool] = os.path.isdir) -> tuple[str, str]:
    """The checkpoint to load when no ``--weights``/``YOLO_WEIGHTS`` is given, and why (for the start-up log).

    KServe's ``/mnt/models`` wins when it exists (an InferenceService with a storageUri); otherwise the file or
    folder baked into the image (``$YOLO_BAKED_WEIGHTS``, default ``/opt/yolo-v7/weights``: a folder holding
    one checkpoint is that checkpoint).
    """
    environ = os.environ if environ is None else environ
    if is_dir(MODEL_MOUNT_DIR):
        return MODEL_MOUNT_DIR, "KServe's storageUri mount"
    if environ.get(BAKED_WEIGHTS_ENV):
        return environ[BAKED_WEIGHTS_ENV], f"baked weights from {BAKED_WEIGHTS_ENV}; no {MODEL_MOUNT_DIR}"
    return BAKED_WEIGHTS_DIR, f"baked into the image; no {MODEL_MOUNT_DIR}"


def serving_ports(http_port: int | None, grpc_port: int | None,
                  environ: Mapping[str, str] | None = None) -> tuple[int, int, str]:
    """``(http_port, grpc_port, where the HTTP port came from)`` from the flags (None = not given) and ``$PORT``.

    Flags win; then ``$PORT`` (Cloud Run and Knative set it, and route to it only); then HTTP_PORT. gRPC keeps
    GRPC_PORT unless the HTTP port took it (then HTTP + 1). Raises SettingsError for a bad ``$PORT`` or two
    flags naming the same port.
    """
    environ = os.environ if environ is None else environ
    if http_port is not None:
        http, source = http_port, "--http_port"
    elif environ.get(PORT_ENV, "").strip():
        raw = environ[PORT_ENV].strip()
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise SettingsError(f"{PORT_ENV}={raw!r}: must be a TCP port number (1-65535)")
        http, source = int(raw), f"${PORT_ENV}"
    else:
        http, source = HTTP_PORT, "default"
    if grpc_port is None:
        grpc = GRPC_PORT if http != GRPC_PORT else http + 1
    elif grpc_port == http and http != 0:
        raise SettingsError(f"--grpc_port {grpc_port} is also the HTTP port ({source}); choose another")
    else:
        grpc = grpc_port
    return http, grpc, source


def front_ends(workers: int, device_type: str, cpu_count: int | None) -> int:
    """How many front-end processes ``--workers`` asks for: itself when > 0; for 0 (auto), one per core up to
    AUTO_WORKERS_CAP on a GPU, 1 on the CPU (the CPU forward takes every core: more front ends would take
    cores from it)."""
    if workers > 0:
        return workers
    if device_type != "cuda":
        return 1
    return max(1, min(AUTO_WORKERS_CAP, cpu_count or 1))


def parse_args(argv: Iterable[str], environ: Mapping[str, str] | None = None) -> PredictorSettings:
    """Parse only our options from ``argv`` (unknown flags ignored): handy for tests and the operator."""
    parser = PredictorSettings.add_arguments(argparse.ArgumentParser(add_help=False))
    namespace, _ = parser.parse_known_args(list(argv))
    return PredictorSettings.from_sources(namespace, environ={} if environ is None else environ)


__all__ = [
    "ACCELERATIONS",
    "DetectParams",
    "ENGINES",
    "GPU_ACCELERATIONS",
    "BAKED_WEIGHTS_DIR",
    "BAKED_WEIGHTS_ENV",
    "GRPC_PORT",
    "HTTP_PORT",
    "MEASURED_ON_CPU",
    "MODEL_MOUNT_DIR",
    "PORT_ENV",
    "OPTIONS",
    "OPTIONS_BY_NAME",
    "Option",
    "PRECISIONS",
    "PredictorSettings",
    "SettingsError",
    "VARIANT_NAMES",
    "default_weights",
    "front_ends",
    "parse_args",
    "serving_ports",
]
