"""Shared-memory slots between one front-end process and the model process (``--workers`` > 1).

One file per front end, mapped by both processes (``mmap``, in ``/dev/shm`` when it has room, else the
run directory under ``/tmp``: the image runs with a read-only root and a writable ``/tmp``)::

    [ header: 64 bytes ][ slot 0: uint8 [S, S, 3] ][ slot 1 ] ... [ slot n - 1 ]

* The header's first int64 is the number of images the front end is decoding now (written by the front
  end only, read by the model process's batcher: a partial batch waits for them, as in one process).
* A slot holds one letterboxed image. The front end takes free slots (all of a request's at once, so two
  requests never wait on each other), writes the pixels, and sends the slot numbers, geometries and
  thresholds over its pipe; the model process stacks the slots straight into the network input and sends
  back the detections (small arrays); the front end then frees the slots. Pixels are never pickled.

Free slots are taken last-freed first, so under light load the same few pages stay hot and the file's
untouched pages never take memory.
"""

from __future__ import annotations

import asyncio
import mmap
import os
from pathlib import Path

import numpy as np

__all__ = ["HEADER_BYTES", "SlotFile", "SlotPool", "slot_dir"]

HEADER_BYTES = 64
SHM_DIR = "/dev/shm"


def slot_dir(run_dir: str, total_bytes: int) -> str:
    """``/dev/shm`` when writable with room for ``total_bytes`` (memory-backed), else ``run_dir``."""
    try:
        stat = os.statvfs(SHM_DIR)
        if os.access(SHM_DIR, os.W_OK) and stat.f_bavail * stat.f_frsize > 2 * total_bytes:
            return SHM_DIR
    except OSError:
        pass
    return run_dir


class SlotFile:
    """The mapped file: ``count`` slots of ``uint8 [size, size, 3]`` plus the header."""

    def __init__(self, path: str | Path, count: int, size: int, *, create: bool):
        self.path = str(path)
        self.count, self.size = count, size
        self.slot_bytes = size * size * 3
        length = HEADER_BYTES + count * self.slot_bytes
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, length)  # sparse: pages take memory when first written
            self._map = mmap.mmap(fd, length)
        finally:
            os.close(fd)
        self.preparing = np.frombuffer(self._map, dtype=np.int64, count=1, offset=0)
        self._slots = np.frombuffer(self._map, dtype=np.uint8, offset=HEADER_BYTES).reshape(count, size, size, 3)

    def slot(self, index: int) -> np.ndarray:
        """Slot ``index`` as a ``uint8 [S, S, 3]`` view (no copy)."""
        return self._slots[index]

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class SlotPool:
    """The front end's free list over a :class:`SlotFile` (event-loop side only)."""

    def __init__(self, count: int):
        self._free = list(range(count - 1, -1, -1))
        self._changed = asyncio.Condition()
        self.count = count

    async def take(self, n: int) -> list[int]:
        """``n`` slots at once (waits until that many are free; ``n`` <= the pool's size)."""
        if n > self.count:
            raise ValueError(f"{n} slots asked of a pool of {self.count}")
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._free) >= n)
            return [self._free.pop() for _ in range(n)]

    async def give(self, slots: list[int]) -> None:
        async with self._changed:
            self._free.extend(reversed(slots))
            self._changed.notify_all()
