"""Export our own PyTorch network to ONNX, and find or place the exported file in a cache.

The exported model is keyed by what changes it: the weights' sha256, the input size, the precision
(always fp32 here: OpenVINO's bf16 is a compile-time hint, not another file) and the export recipe
(opset + :data:`EXPORT_VERSION`)::

    <stem>-<sha256[:16]>-s<S>-fp32-opset<opset>-x<EXPORT_VERSION>.onnx

Where (:func:`cache_dirs`, first match wins for reading, first writable for writing): the directory
given (``--engine_cache``), then ``.yolo-v7-engines/`` next to the weights (a build-time export lands
there, and a restart finds it), then ``$XDG_CACHE_HOME/yolo-v7/engines`` (``~/.cache/...``), then
``$TMPDIR/yolo-v7-engines`` — so a read-only weights volume (KServe's /mnt/models) still works.
OpenVINO keeps its own compiled-blob cache (keyed by its version, the model and the precision) in an
``openvino/`` folder beside the ONNX file.

Build time (a torch-free CPU image ships the result; see docs/cpu.md)::

    python -m predictor.runtimes.export --weights weights/yolov7-tiny.pt --out /models
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["EXPORT_VERSION", "OPSET", "CACHE_FOLDER", "cache_dirs", "exported_name", "find_or_export",
           "export_onnx", "weights_sha256"]

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the export recipe changes the graph
OPSET = 17
CACHE_FOLDER = ".yolo-v7-engines"
INPUT_NAME, OUTPUT_NAME = "images", "raw"


def weights_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def exported_name(weights: str | Path, sha256: str, input_size: int) -> str:
    return f"{Path(weights).stem}-{sha256[:16]}-s{input_size}-fp32-opset{OPSET}-x{EXPORT_VERSION}.onnx"


def cache_dirs(weights: str | Path, override: str | Path | None = None) -> list[Path]:
    """Candidate cache directories, in order (see the module docstring)."""
    dirs = [Path(override)] if override else []
    dirs.append(Path(weights).resolve().parent / CACHE_FOLDER)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    dirs.append(Path(xdg) / "yolo-v7" / "engines")
    dirs.append(Path(tempfile.gettempdir()) / "yolo-v7-engines")
    return dirs


def _writable(directory: Path) -> bool:
    """Try it: root ignores permission bits, a read-only mount does not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            return True
    except OSError:
        return False


def export_onnx(model: Any, input_size: int, dest: str | Path) -> Path:
    """Trace ``model`` (``[N, 3, S, S]`` → ``[N, R, 5 + nc]``, fp32, CPU) to ONNX at ``dest``, dynamic in
    ``N``; written to a temporary file and renamed, so a reader never sees half a file."""
    import torch

    dest = Path(dest)
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        raise ValueError(f"export needs the fp32 CPU network, got {param.dtype} on {param.device}")
    example = torch.zeros((1, 3, input_size, input_size), dtype=torch.float32)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".export-", suffix=".onnx")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                model, (example,), tmp, dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def find_or_export(model: Any, weights: str | Path, input_size: int, *, cache: str | Path | None = None) -> Path:
    """The cached ONNX file for these weights and input size, exported from ``model`` if none exists."""
    sha = weights_sha256(weights)
    name = exported_name(weights, sha, input_size)
    dirs = cache_dirs(weights, cache)
    for directory in dirs:
        if (directory / name).is_file():
            return directory / name
    for directory in dirs:
        if _writable(directory):
            start = time.perf_counter()
            path = export_onnx(model, input_size, directory / name)
            log.info("exported %s to %s in %.1f s", Path(weights).name, path, time.perf_counter() - start)
            return path
    raise OSError(f"no writable cache directory for the exported model (tried {', '.join(map(str, dirs))})")


def main(argv: list[str] | None = None) -> int:
    """Build-time export: ``python -m predictor.runtimes.export --weights W [--input_size S] [--out DIR]``."""
    parser = argparse.ArgumentParser(description="Export a YOLOv7 checkpoint to ONNX for the CPU engines")
    parser.add_argument("--weights", required=True, help="checkpoint (.pt or .safetensors)")
    parser.add_argument("--input_size", type=int, default=0, help="0 = the variant's native size")
    parser.add_argument("--out", default="", help=f"output folder (default: {CACHE_FOLDER}/ next to the weights)")
    args = parser.parse_args(argv)
    from predictor.engine import Detector

    detector = Detector.from_weights(args.weights, device="cpu", input_size=args.input_size or None)
    print(find_or_export(detector.model, args.weights, detector.input_size, cache=args.out or None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
