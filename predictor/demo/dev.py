"""``make dev``: the predictor on this machine's CPU with the demo page, and always something to show.

    python -m predictor.demo.dev [--weights yolov7] [--host 127.0.0.1] [--port 8080] [-- PREDICTOR FLAGS]

1. ``weights/<name>.pt`` present and verified, or fetched (sha256-checked, ``weights.fetch``): served.
2. Otherwise (no internet, no mirror) one line says so, with the offline way to the real weights
   (``--from-file``), and a **random-weights** yolov7-tiny is served instead, written once into
   ``~/.cache/yolo-v7/demo/`` (BatchNorm statistics measured on the sample photos, so its boxes follow
   the image even though they mean nothing); the page shows a banner saying so. ``--weights random``
   asks for that directly, ``--weights PATH`` serves any checkpoint file.
3. The servers listen on ``--host`` (127.0.0.1 unless asked otherwise: REST and gRPC), and the page's URL is
   printed once the model is ready.

KServe's ModelServer always listens on every interface (``0.0.0.0`` for REST, ``[::]`` for gRPC); only
this development entry point narrows that, by giving KServe's REST config and gRPC server the host.
Production (``python -m predictor``, the container image) is unchanged.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from predictor.demo import NOTICE_ENV

DEFAULT_WEIGHTS = "yolov7"
RANDOM = "random"
RANDOM_VARIANT = "yolov7-tiny"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "yolo-v7" / "demo"
RANDOM_NOTICE = (
    "Random weights: no official checkpoint could be fetched, so this is a randomly initialised "
    f"{RANDOM_VARIANT} — its boxes and labels mean nothing. For real detections: "
    ".venv/bin/python -m weights.fetch yolov7 --from-file PATH/yolov7.pt, then make dev again."
)
FETCH_TIMEOUT_S = 15.0
# the calibrated random yolov7-tiny then draws ~50 boxes over 0.25 on the astronaut, none on the cat;
# photos it was not calibrated on can give hundreds, hence a cap on the boxes it serves
RANDOM_OBJECTNESS_SHIFT = -3.0
RANDOM_MAX_DETECTIONS = 20
READY_POLL_S = 0.5


def write_random_checkpoint(variant: str, out: Path, *, seed: int = 0, calibration: Sequence[Path] = (),
                            objectness_shift: float | None = None) -> Path:
    """A randomly initialised ``variant`` in our safetensors export format (fp16, 80 COCO class names).

    Without ``calibration`` the Detect head gets the usual YOLO bias priors (about 8 objects per 640²
    image, class prior 0.6/nc): realistic NMS load for speed measurements. With ``calibration`` images,
    the BatchNorm statistics are measured on them first (a random network with its initial statistics
    gives nearly the same score everywhere), so that scores depend on the image, and the objectness bias
    is moved by ``objectness_shift`` so that a handful of boxes pass the default 0.25 threshold."""
    import numpy as np
    import torch

    from predictor.yolov7 import YOLOv7
    from predictor.yolov7.checkpoint import Checkpoint, save_export
    from predictor.yolov7.names import COCO_NAMES

    torch.manual_seed(seed)
    model = YOLOv7(variant).eval()
    detect = [m for m in model.modules() if hasattr(m, "anchor_grid")][0]
    size = model.input_size
    if calibration:
        import cv2

        batch = np.stack([cv2.resize(cv2.imread(str(p))[:, :, ::-1], (size, size)).transpose(2, 0, 1)
                          for p in calibration]).astype(np.float32) / 255.0
        images = torch.from_numpy(batch)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a plain average over the calibration batch
        model.train()
        with torch.no_grad():
            model(torch.cat([images, images.flip(-1)]))
        model.eval()
    with torch.no_grad():
        for conv, stride in zip(detect.m, detect.strides, strict=True):
            bias = conv.bias.view(detect.na, detect.no)
            if objectness_shift is not None:
                bias[:, 4] += objectness_shift
            else:
                bias[:, 4] += math.log(8 / (size / stride) ** 2)
                bias[:, 5:] += math.log(0.6 / (detect.nc - 0.99))
    ckpt = Checkpoint(variant=variant, names=list(COCO_NAMES), num_classes=detect.nc,
                      state_dict={k: v.float() for k, v in model.state_dict().items()},
                      anchors=detect.anchor_grid.view(detect.nl, -1).tolist(), strides=list(detect.strides),
                      source_format="random-init")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_export(ckpt, partial, dtype=torch.float16)
    os.replace(partial, out)
    return out


def random_weights() -> Path:
    """The stand-in model, written once: calibrated on the sample photos, so it draws some boxes."""
    path = CACHE_DIR / f"{RANDOM_VARIANT}-random-init.safetensors"
    if not path.is_file():
        samples = sorted((Path(__file__).resolve().parent / "samples").glob("*.jpg"))
        write_random_checkpoint(RANDOM_VARIANT, path, calibration=samples, objectness_shift=RANDOM_OBJECTNESS_SHIFT)
    return path


def resolve_weights(name: str, weights_dir: Path) -> tuple[Path, str]:
    """(checkpoint to serve, notice for the page: empty for real weights)."""
    if name == RANDOM:
        return random_weights(), RANDOM_NOTICE
    if os.sep in name or name.endswith((".pt", ".pth", ".safetensors")):
        return Path(name), ""
    from weights.fetch import URL_BASE_ENV, FetchError, ensure, load_manifest

    manifest = load_manifest()
    try:
        entry = manifest.entry(name)
    except FetchError as error:
        sys.exit(f"error: {error}")
    url_base = os.environ.get(URL_BASE_ENV) or manifest.url_base
    try:
        return ensure(entry, dest=weights_dir, url_base=url_base, timeout=FETCH_TIMEOUT_S), ""
    except FetchError as error:
        reason = str(error).splitlines()[0]
        print(f"make dev: no official {entry.file} ({reason}) — serving a RANDOM-WEIGHTS {RANDOM_VARIANT} demo "
              f"instead (boxes mean nothing); offline, get the real one with: .venv/bin/python -m weights.fetch "
              f"{name} --from-file PATH/{entry.file}", file=sys.stderr, flush=True)
        return random_weights(), RANDOM_NOTICE


def listen_on(host: str) -> None:
    """Make KServe's REST (uvicorn) and gRPC servers listen on ``host`` instead of every interface."""
    from kserve.protocol.grpc import server as grpc_server
    from kserve.protocol.rest import server as rest_server

    rest_init = rest_server.RESTServer.__init__

    def init(self, *args, **kwargs):
        rest_init(self, *args, **kwargs)
        self.config.host = host  # read by uvicorn when it binds

    rest_server.RESTServer.__init__ = init
    real_aio = grpc_server.aio
    target = f"[{host}]" if ":" in host else host

    class _Aio:
        def __getattr__(self, name):
            return getattr(real_aio, name)

        def server(self, *args, **kwargs):
            server = real_aio.server(*args, **kwargs)
            add_port = server.add_insecure_port
            server.add_insecure_port = lambda address: add_port(address.replace("[::]", target, 1))
            return server

    grpc_server.aio = _Aio()


def announce_when_ready(host: str, port: int, model: str) -> threading.Thread:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{shown}:{port}/"

    def wait() -> None:
        ready = f"http://{shown}:{port}/v2/models/{model}/ready"
        while True:
            try:
                with urllib.request.urlopen(ready, timeout=2) as response:  # noqa: S310 (http only)
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(READY_POLL_S)
        extra = "" if shown == host else f" (listening on all interfaces, {host})"
        print(f"\n  Demo page: {url}{extra}    Ctrl-C stops it\n", file=sys.stderr, flush=True)

    thread = threading.Thread(target=wait, name="announce-url", daemon=True)
    thread.start()
    return thread


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m predictor.demo.dev", description=__doc__.split("\n")[0],
                                     epilog="Arguments after -- go to python -m predictor unchanged.")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS,
                        help="a weights/manifest.json name (fetched when missing), 'random', or a checkpoint path")
    parser.add_argument("--weights-dir", type=Path, default=Path(__file__).resolve().parents[2] / "weights")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8080, help="REST port (gRPC: the next one)")
    parser.add_argument("--model-name", default="yolov7")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    weights, notice = resolve_weights(args.weights, args.weights_dir)
    if notice:
        os.environ[NOTICE_ENV] = notice
        extra = ["--max_detections", str(RANDOM_MAX_DETECTIONS), *extra]  # a later flag still wins
    listen_on(args.host)
    announce_when_ready(args.host, args.port, args.model_name)
    from predictor.__main__ import main as predictor_main

    predictor_main(["--model_name", args.model_name, "--weights", str(weights), "--device", "cpu",
                    "--http_port", str(args.port), "--grpc_port", str(args.port + 1), "--demo", "true", *extra])


if __name__ == "__main__":
    main()
