"""Run ``python -m predictor`` in a process where ``import torch`` / ``import torchvision`` fail.

    python tests/tools/no_torch.py --weights ... --engine onnxruntime   # the predictor's own arguments

A meta-path finder refuses the two packages (and their submodules) before anything is imported, so a
server that answers was served without them: the torch-free CPU path's proof without a second
environment (tests/service/test_torch_free.py).
"""

from __future__ import annotations

import importlib.abc
import runpy
import sys
from pathlib import Path

BLOCKED = ("torch", "torchvision")


class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: this process must serve without torch")
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, NoTorch())
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
    runpy.run_module("predictor", run_name="__main__", alter_sys=True)
