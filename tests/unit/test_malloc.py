"""predictor.malloc: image-sized blocks are reused, not mapped afresh for every image."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

# Allocate, fill and free batches of 32 letterboxed 640 x 640 images, as the request path does; report the
# page faults per image of the last rounds.
_BATCHES = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from predictor.malloc import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        images = [np.full((640, 640, 3), 114, np.uint8) for _ in range(32)]
        del images
    before = faults()
    for _ in range(5):
        images = [np.full((640, 640, 3), 114, np.uint8) for _ in range(32)]
        del images
    print(applied, (faults() - before) / 160)
""")


def _faults_per_image(mode: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    done = subprocess.run([sys.executable, "-c", _BATCHES, mode], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, check=True)
    applied, faults = done.stdout.split()
    return applied, float(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_images_are_reused_instead_of_mapped_again():
    applied, kept = _faults_per_image("keep")
    _, default = _faults_per_image("default")
    assert applied == "True"
    assert default > 200  # glibc's defaults: each 1.2 MB image is a fresh mapping (~300 pages)
    assert kept < 5


def test_a_malloc_setting_in_the_environment_wins():
    applied, _ = _faults_per_image("keep", {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert applied == "False"
