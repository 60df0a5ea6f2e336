"""Write a randomly initialised checkpoint (our safetensors export) for speed measurements.

    python hack/gpu/random_checkpoint.py yolov7 /tmp/yolov7-init.safetensors

The device machine cannot receive the 75 MB fixture checkpoint (its working-tree limit is 64 MiB), and
speed does not depend on weight values — but NMS time does depend on how many boxes pass the threshold.
So the Detect biases get the usual YOLO priors (about 8 objects per 640² image, class prior 0.6/nc), which
gives a handful of detections per image like real weights do, instead of every cell scoring 0.5. The same
writer makes `make dev`'s offline random-weights demo (predictor.demo.dev.write_random_checkpoint).
"""

from __future__ import annotations

import sys
from pathlib import Path

from predictor.demo.dev import write_random_checkpoint


def main(variant: str, out: str) -> None:
    write_random_checkpoint(variant, Path(out))
    print(f"wrote {out}: {variant}, random init with YOLO bias priors")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
