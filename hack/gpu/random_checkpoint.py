"""Write a randomly initialised checkpoint (our safetensors export) for speed measurements.

    python hack/gpu/random_checkpoint.py yolov7 /tmp/yolov7-init.safetensors

The device machine cannot receive the 75 MB fixture checkpoint (its working-tree limit is 64 MiB), and
speed does not depend on weight values — but NMS time does depend on how many boxes pass the threshold.
So the Detect biases get the usual YOLO priors (about 8 objects per 640² image, class prior 0.6/nc), which
gives a handful of detections per image like real weights do, instead of every cell scoring 0.5.
"""

from __future__ import annotations

import math
import sys

import torch

from predictor.yolov7 import YOLOv7
from predictor.yolov7.checkpoint import Checkpoint, save_export
from predictor.yolov7.names import COCO_NAMES


def main(variant: str, out: str) -> None:
    torch.manual_seed(0)
    model = YOLOv7(variant).eval()
    detect = model.detect if hasattr(model, "detect") else [m for m in model.modules() if hasattr(m, "anchor_grid")][0]
    size = model.input_size
    with torch.no_grad():
        for conv, stride in zip(detect.m, detect.strides, strict=True):
            bias = conv.bias.view(detect.na, detect.no)
            bias[:, 4] += math.log(8 / (size / stride) ** 2)
            bias[:, 5:] += math.log(0.6 / (detect.nc - 0.99))
    anchors = (detect.anchor_grid.view(detect.nl, -1)).tolist()
    ckpt = Checkpoint(variant=variant, names=list(COCO_NAMES), num_classes=detect.nc,
                      state_dict={k: v.float() for k, v in model.state_dict().items()},
                      anchors=anchors, strides=list(detect.strides), source_format="random-init")
    save_export(ckpt, out, dtype=torch.float16)
    print(f"wrote {out}: {variant}, random init with YOLO bias priors")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
