"""The COCO 2017 detection categories, as data.

Models trained on COCO (the official YOLOv7 checkpoints) predict 80 contiguous class ids 0..79; the
COCO annotation files number the same 80 categories 1..90 with gaps (the 2014 paper's 91 ids, 11 of
which were never annotated). ``COCO80_TO_91[i]`` is the COCO category id of class ``i``.
"""

from __future__ import annotations

from predictor.yolov7.names import COCO_NAMES

# The COCO category id of class ids 0..79, in order (the names are predictor.yolov7.names').
COCO80_TO_91: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip
# (COCO category id, name) for class ids 0..79, in order.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = tuple(zip(COCO80_TO_91, COCO_NAMES, strict=True))
COCO91_TO_80: dict[int, int] = {category_id: index for index, category_id in enumerate(COCO80_TO_91)}

__all__ = ["COCO80_TO_91", "COCO91_TO_80", "COCO_CATEGORIES", "COCO_NAMES"]
