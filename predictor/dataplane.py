"""``--workers N`` (N > 1): N front-end processes feeding ONE model process (this one) through shared memory.

::

    clients ──REST/gRPC──▶ front end 1 ┐  parse, validate, limits, admission,      ┌─ slot file 1 (mmap)
                     ...  (SO_REUSEPORT) ├ decode + letterbox into shared slots ───┤  ...
    clients ──REST/gRPC──▶ front end N ┘  (each: KServe ModelServer, own asyncio)  └─ slot file N
                                 │ pipe: (request key, [(slot, geometry, thresholds)])  ▲ detections (small)
                                 ▼                                                      │
                      model process: ONE DetectionPipeline, ONE DynamicBatcher across all front ends
                      (stack the slots → forward → NMS), supervisor of the front ends

* The model process (the pod's main process) loads the model once, then starts the front ends
  (``multiprocessing`` spawn: no CUDA state is forked). A front end that dies is started again (at most
  :data:`MAX_RESTARTS` in :data:`RESTART_WINDOW_S`, else the process exits and the pod restarts).
* A front end whose pipe to the model process breaks (the model process died) exits at once: with the
  model process gone the container ends, never a server that accepts requests and hangs.
* The model process's batcher waits for the images the front ends count as on their way (shared memory);
  a front end whose images fail to decode drops its count and sends :data:`NUDGE`, so no batch waits out
  its delay for them.
* Metrics: prometheus_client's multiprocess mode; each front end's ``/metrics`` sums every process's.
* Nothing outlives the pod's processes: the slot files have no name (:mod:`predictor.slots`); the run
  folder (metrics files) is removed by the model process at exit, by the front ends when the model process
  died, and, if every process was killed at once, by the next model process to start (:func:`claim_run_dir`:
  a folder whose owner's lock is free is stale).
"""

from __future__ import annotations

import asyncio
import fcntl
import glob
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from predictor.slots import SlotFile

__all__ = ["FrontEndSpec", "MAX_RESTARTS", "MULTIPROC_ENV", "RESTART_WINDOW_S", "claim_run_dir", "remove_if_stale",
           "serve_front_ends"]

log = logging.getLogger("predictor")

MAX_RESTARTS = 5  # front-end restarts allowed within RESTART_WINDOW_S before the pod is restarted
RESTART_WINDOW_S = 60.0
STOP_GRACE_S = 10.0
WATCH_INTERVAL_S = 0.5
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for its metrics folder
RUN_DIR_PREFIX = "yolo-v7-"
OWNER_LOCK = "owner.lock"  # in the run folder: flock'ed by the model process as long as it lives
# A front end's message with this key carries no request: its images failed to decode, so a batch waiting
# for them (the shared count of images on their way) should not wait out its delay. Request keys start at 1.
NUDGE = (0, ())
_owner_locks: list[int] = []  # held until this process ends


def claim_run_dir(parent: str) -> str:
    """A fresh run folder under ``parent`` (metrics files), owned by this process until it ends: its
    ``owner.lock`` stays locked (``flock``; the kernel releases it however the process ends). Stale folders
    (their lock free: every process of that pod died, SIGKILL included) are removed first. Sets
    ``PROMETHEUS_MULTIPROC_DIR``: call it before anything imports prometheus_client."""
    sweep_stale_run_dirs(parent)
    making = tempfile.mkdtemp(prefix=f".{RUN_DIR_PREFIX}", dir=parent)  # named for the sweep once locked
    fd = os.open(os.path.join(making, OWNER_LOCK), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _owner_locks.append(fd)
    run_dir = os.path.join(parent, os.path.basename(making)[1:])
    os.rename(making, run_dir)
    os.makedirs(os.path.join(run_dir, "metrics"))
    os.environ[MULTIPROC_ENV] = os.path.join(run_dir, "metrics")
    return run_dir


def sweep_stale_run_dirs(parent: str) -> list[str]:
    """Remove the run folders under ``parent`` whose owner lock nobody holds; the folders removed."""
    return [folder for folder in glob.glob(os.path.join(parent, f"{RUN_DIR_PREFIX}*")) if remove_if_stale(folder)]


def remove_if_stale(run_dir: str, wait_s: float = 0.0) -> bool:
    """Remove ``run_dir`` if its owner lock is free (waiting up to ``wait_s`` for it); whether it was removed.
    A folder without the lock file is not judged (not a run folder of this kind)."""
    try:
        fd = os.open(os.path.join(run_dir, OWNER_LOCK), os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:  # held: its model process lives (or is still closing its files)
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
    finally:
        os.close(fd)
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


@dataclass(frozen=True)
class FrontEndSpec:
    """What a front-end process needs (pickled to it at spawn)."""

    index: int
    args: dict[str, Any]  # the parsed command line (KServe's flags)
    settings: Any  # PredictorSettings
    conn: Connection
    slots: SlotFile  # pickled as a descriptor (see predictor.slots)
    run_dir: str  # removed by the front ends if the model process dies
    slot_count: int
    input_size: int
    names: list[str]
    summary: dict[str, Any]


@dataclass(eq=False)
class _FrontEnd:
    index: int
    slots: SlotFile
    process: Any = None
    conn: Connection | None = None


def _send(conn: Connection, message: Any) -> None:
    """From the event loop (the only thread that touches the pipes); a front end gone took its requests along."""
    if conn.closed:
        return
    try:
        conn.send(message)
    except (OSError, ValueError):
        pass


class _Host:
    """The model process: serves every front end's requests through one pipeline, restarts front ends."""

    def __init__(self, model: Any, args: dict[str, Any], count: int, run_dir: str):
        self.model, self.args, self.run_dir = model, args, run_dir
        pipeline = model.pipeline
        size = pipeline.detector.input_size
        s = model.settings
        # all of a request's images at once, and two batches in flight
        self.slot_count = max(s.max_images_per_request, 2 * s.max_batch_size)
        self.front_ends = [_FrontEnd(i, SlotFile.create(f"yolo-v7-slots-{i}", self.slot_count, size, run_dir))
                           for i in range(count)]
        pipeline.preparing_elsewhere = self.preparing
        self.context = multiprocessing.get_context("spawn")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: set[asyncio.Task] = set()
        self.stopping = False
        self.exit_code = 0
        self.done: asyncio.Event | None = None
        self.restarts: list[float] = []

    def preparing(self) -> int:
        return int(sum(int(fe.slots.preparing[0]) for fe in self.front_ends))

    # ----- front ends ---------------------------------------------------------------------------------
    def start(self, fe: _FrontEnd) -> None:
        from predictor.frontend import run_front_end

        ours, theirs = self.context.Pipe(duplex=True)
        pipeline = self.model.pipeline
        spec = FrontEndSpec(
            index=fe.index, args=self.args, settings=self.model.settings, conn=theirs, slots=fe.slots,
            run_dir=self.run_dir, slot_count=self.slot_count, input_size=pipeline.detector.input_size, names=list(self.model.names),
            summary=pipeline.summary(),
        )
        fe.slots.preparing[0] = 0
        process = self.context.Process(target=run_front_end, args=(spec,), name=f"yolo-front-end-{fe.index}",
                                       daemon=True)
        process.start()
        theirs.close()
        fe.process, fe.conn = process, ours
        self.record_processes()
        assert self.loop is not None
        # read on the event loop itself: a reader thread would add a wake-up (a scheduling slot) per message
        self.loop.add_reader(ours.fileno(), self._read, fe, ours)
        log.info("front end %d started (pid %d)", fe.index, process.pid)

    def record_processes(self) -> None:
        """Every process of the pod by label, for the process metrics of ``/metrics`` (predictor.metrics)."""
        from predictor.metrics import record_processes

        record_processes({"model": os.getpid(), **{f"front-end-{fe.index}": fe.process.pid
                                                   for fe in self.front_ends if fe.process is not None}})

    def _read(self, fe: _FrontEnd, conn: Connection) -> None:
        try:
            while conn.poll():
                self._submit(fe, conn, conn.recv())
        except (EOFError, OSError):  # the front end is gone; _watch starts it again
            self._forget(fe, conn)

    def _forget(self, fe: _FrontEnd, conn: Connection) -> None:
        assert self.loop is not None
        if not conn.closed:
            self.loop.remove_reader(conn.fileno())
            conn.close()
        if fe.conn is conn:
            fe.conn = None

    def _submit(self, fe: _FrontEnd, conn: Connection, message: tuple) -> None:
        if message == NUDGE:
            self.model.pipeline.batcher.nudge()
            return
        task = asyncio.get_running_loop().create_task(self._detect(fe, conn, *message))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _detect(self, fe: _FrontEnd, conn: Connection, key: int, entries: list[tuple]) -> None:
        """One request of one front end: its slots through the shared batcher, the answer back on the pipe it
        came from (a front end started again since gets nothing meant for its predecessor)."""
        from predictor.errors import ServiceError
        from predictor.pipeline import PreparedImage

        items = [
            PreparedImage(params=params, jpeg=bytearray(fe.slots.slot(slot).reshape(-1)[:jpeg_bytes]))
            if jpeg_bytes else PreparedImage(params=params, letterboxed=fe.slots.slot(slot), geometry=geometry)
            for slot, geometry, params, jpeg_bytes in entries
        ]
        try:
            detections = await self.model.pipeline.detect(items)
        except ServiceError as error:  # e.g. a JPEG nvJPEG and OpenCV both refuse: the client's error, as is
            _send(conn, (key, (type(error).__name__, error.reason, error.code), None, None))
            return
        except Exception as error:  # noqa: BLE001 - the front end answers 500 with this text
            log.exception("model process: a batch failed")
            _send(conn, (key, f"{type(error).__name__}: {error}", None, None))
            return
        _send(conn, (key, detections, [item.timings for item in items], [item.geometry for item in items]))

    def _watch(self) -> None:
        """Thread: a front end that exits is started again (on the event loop), unless stopping."""
        while not self.stopping:
            time.sleep(WATCH_INTERVAL_S)
            # waitpid, not the sentinel pipe: a front end's libraries may close or reuse that descriptor
            for fe in [fe for fe in self.front_ends if fe.process is not None and not fe.process.is_alive()]:
                if self.stopping:
                    return
                assert self.loop is not None
                process = fe.process
                fe.process = None
                self.loop.call_soon_threadsafe(self._restart, fe, process)

    def _restart(self, fe: _FrontEnd, process: Any) -> None:
        """On the event loop: forget the dead front end, start it again (or stop, past the restart limit)."""
        from prometheus_client import multiprocess

        assert self.done is not None
        if self.stopping:
            return
        multiprocess.mark_process_dead(process.pid)
        if fe.conn is not None:
            self._forget(fe, fe.conn)
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(self.restarts) > MAX_RESTARTS:
            log.error("front end %d exited (code %s): more than %d restarts in %.0f s; stopping", fe.index,
                      process.exitcode, MAX_RESTARTS, RESTART_WINDOW_S)
            self.exit_code = 1
            self.done.set()
            return
        log.error("front end %d (pid %d) exited with code %s; starting it again", fe.index, process.pid,
                  process.exitcode)
        self.start(fe)

    # ----- lifetime -----------------------------------------------------------------------------------
    async def serve(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.done.set)
        for fe in self.front_ends:
            self.start(fe)
        threading.Thread(target=self._watch, name="yolo-front-end-watch", daemon=True).start()
        await self.done.wait()
        self.stopping = True
        self.stop_front_ends()
        await self.model.pipeline.close()
        return self.exit_code

    def stop_front_ends(self) -> None:
        processes = [fe.process for fe in self.front_ends if fe.process is not None]
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)


def serve_front_ends(model: Any, args: dict[str, Any], count: int, run_dir: str) -> int:
    """Serve ``model`` (loaded here) behind ``count`` front-end processes until SIGTERM; the exit code."""
    host = _Host(model, args, count, run_dir)
    log.info("model process %d: %d front ends, %d shared slots each (run folder %s)", os.getpid(), count,
             host.slot_count, run_dir)
    try:
        return asyncio.run(host.serve())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
