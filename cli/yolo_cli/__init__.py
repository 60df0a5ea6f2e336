"""The ``yolo-v7`` command-line client: ``detect`` (images, folders, globs, videos, cameras) and ``eval``
(COCO AP with pycocotools), against a running predictor (REST or gRPC, Open Inference Protocol v2) or
in-process (``--local``). See ``docs/cli.md``."""

__version__ = "1.0.0"
