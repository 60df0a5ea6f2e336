"""Shared-memory slots between one front-end process and the model process (``--workers`` > 1).

One anonymous memory file per front end (``memfd_create``), mapped by both processes (``mmap``)::

    [ header: 64 bytes ][ slot 0: uint8 [S, S, 3] ][ slot 1 ] ... [ slot n - 1 ]

* Nothing is left behind: the file has no name in any folder (``/dev/shm`` included), so the kernel frees
  it when the last process holding it ends, however it ends (SIGKILL, OOM kill). The model process keeps
  its descriptor (a front end started again maps the same file); a front end gets it at spawn, passed as
  a descriptor (pickling a :class:`SlotFile` duplicates it for the child), never by path. Where
  ``memfd_create`` is missing the file is made in ``/dev/shm`` (else the run directory) and unlinked at
  once: the same lifetime. Not being in ``/dev/shm`` also keeps the slots clear of its size limit (64 MB
  in a container by default); their pages count in the pod's memory like any shared memory.
* The header's first int64 is the number of images the front end is decoding now (written by the front
  end only, read by the model process's batcher: a partial batch waits for them, as in one process).
* A slot holds one letterboxed image. The front end takes free slots (all of a request's at once, so a
  request never holds some while it waits for more; requests that must wait are served in turn), writes
  the pixels, and sends the slot numbers, geometries and thresholds over its pipe; the model process
  stacks the slots straight into the network input and sends back the detections (small arrays); the
  front end then frees the slots. Pixels are never pickled.

Free slots are taken last-freed first, so under light load the same few pages stay hot and the file's
untouched pages never take memory.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import tempfile
from collections import deque
from typing import Any

import numpy as np

__all__ = ["HEADER_BYTES", "SlotFile", "SlotPool"]

HEADER_BYTES = 64
SHM_DIR = "/dev/shm"


def _anonymous_file(name: str, length: int, fallback_dir: str) -> int:
    """A descriptor of a new file of ``length`` bytes (sparse) that no folder lists."""
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # no memfd (an old kernel, a sandbox): a file unlinked at once
        where = SHM_DIR if os.access(SHM_DIR, os.W_OK) else fallback_dir
        fd, path = tempfile.mkstemp(prefix=f"{name}-", dir=where)
        os.unlink(path)
    os.ftruncate(fd, length)  # sparse: pages take memory when first written
    return fd


class SlotFile:
    """The mapped file: ``count`` slots of ``uint8 [size, size, 3]`` plus the header.

    Made by the model process with :meth:`create`; pickled to a front end (spawn) it travels as a
    descriptor and is mapped again there."""

    def __init__(self, fd: int, count: int, size: int, *, keep_fd: bool):
        self.count, self.size = count, size
        self.slot_bytes = size * size * 3
        self._map = mmap.mmap(fd, HEADER_BYTES + count * self.slot_bytes)
        if keep_fd:
            self._fd: int | None = fd
        else:
            self._fd = None
            os.close(fd)
        self.preparing = np.frombuffer(self._map, dtype=np.int64, count=1, offset=0)
        self._slots = np.frombuffer(self._map, dtype=np.uint8, offset=HEADER_BYTES).reshape(count, size, size, 3)

    @classmethod
    def create(cls, name: str, count: int, size: int, fallback_dir: str) -> SlotFile:
        """A new slot file (``name`` shows in ``/proc/<pid>/maps`` as ``/memfd:<name>``)."""
        fd = _anonymous_file(name, HEADER_BYTES + count * size * size * 3, fallback_dir)
        return cls(fd, count, size, keep_fd=True)

    def __reduce__(self) -> tuple[Any, tuple]:
        from multiprocessing.reduction import DupFd

        if self._fd is None:
            raise TypeError("only the slot file's creator can pass it on")
        return _attach, (DupFd(self._fd), self.count, self.size)

    def slot(self, index: int) -> np.ndarray:
        """Slot ``index`` as a ``uint8 [S, S, 3]`` view (no copy)."""
        return self._slots[index]

    def close(self) -> None:
        """Drop this process's descriptor (the mapping stays until the process ends)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _attach(dup: Any, count: int, size: int) -> SlotFile:
    return SlotFile(dup.detach(), count, size, keep_fd=False)


class SlotPool:
    """The front end's free list over a :class:`SlotFile` (event-loop side only).

    :meth:`take` returns at once when enough slots are free and nobody waits before it; otherwise it
    waits its turn (first come, first served: a request for many slots is not overtaken forever by small
    ones). :meth:`give` is a plain call — it hands freed slots to the waiters in order — so an answer
    frees its slots without a task or a lock.
    """

    def __init__(self, count: int):
        self._free = list(range(count - 1, -1, -1))
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()
        self.count = count

    async def take(self, n: int) -> list[int]:
        """``n`` slots at once (waits until that many are free; ``n`` <= the pool's size)."""
        if n > self.count:
            raise ValueError(f"{n} slots asked of a pool of {self.count}")
        if not self._waiting and len(self._free) >= n:
            return [self._free.pop() for _ in range(n)]
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append((n, turn))
        try:
            return await turn
        except BaseException:  # cancelled (or the coroutine closed) while it waited
            if turn.done() and not turn.cancelled():  # given the slots, then cancelled: they go back
                self.give(turn.result())
            else:
                turn.cancel()
                self._serve()  # those behind it may fit now
            raise

    def give(self, slots: list[int]) -> None:
        self._free.extend(reversed(slots))
        self._serve()

    def _serve(self) -> None:
        while self._waiting:
            n, turn = self._waiting[0]
            if turn.done():  # cancelled while it waited
                self._waiting.popleft()
                continue
            if len(self._free) < n:
                return
            self._waiting.popleft()
            turn.set_result([self._free.pop() for _ in range(n)])
