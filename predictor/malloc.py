"""glibc's malloc told to keep image-sized blocks for reuse instead of handing them back to the kernel.

Every request allocates a few image-sized arrays (the decoded image, the resized one, the letterboxed
640 x 640 x 3 = 1.2 MB one) and frees them once its batch has them. glibc's defaults serve blocks from
128 KiB up with ``mmap`` and give the top of a heap back once more than twice the largest freed block is
free there; a freed batch (32 letterboxed images, 39 MB) is always more than that. So each image cost a
fresh mapping — ~300 page faults, and an ``munmap`` (page tables, a TLB flush on every core running the
process) on whatever thread dropped the last reference, mostly the event loop with the GIL held: 0.62
against 0.05 ms per 640 x 640 image allocated, filled and freed in batches of 32 (``docs/dataplane.md``,
fifth pass). With ``--workers`` > 1, where a front end's event loop frees every letterboxed image after
copying it to the shared slot, that was 30 % of the loop's time.

:func:`keep_freed_memory` sets ``M_MMAP_THRESHOLD`` (blocks below it come from the heap) and
``M_TRIM_THRESHOLD`` (free memory above it at a heap's top goes back to the kernel). The process then keeps
up to its peak use resident between bursts, no more — the peak itself is bounded by the admission limits
(``--max_queued_images``, ``--max_image_pixels``). A ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``
or ``GLIBC_TUNABLES`` malloc setting in the environment wins: then nothing is changed here.
"""

from __future__ import annotations

import os

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "keep_freed_memory"]

MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest allowed on 64-bit; larger blocks (>10 MP images) are mapped
TRIM_THRESHOLD_BYTES = 128 << 20  # above three batches of 32 letterboxed 640 x 640 images

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Apply the two thresholds to this process's malloc; False where it is not glibc's (musl, macOS) or
    the environment sets them."""
    if any(name in os.environ for name in _USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return (bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
            and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)))
