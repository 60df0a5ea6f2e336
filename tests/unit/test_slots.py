"""Nothing of the data plane outlives the pod's processes: slot files have no name in any folder and travel
to a front end as a descriptor; run folders whose owner died are swept by the next model process."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from pathlib import Path

import numpy as np

from predictor.dataplane import MULTIPROC_ENV, OWNER_LOCK, claim_run_dir, sweep_stale_run_dirs
from predictor.slots import SHM_DIR, SlotFile, SlotPool


def _fill(slots: SlotFile) -> None:  # in a spawned process, as a front end writes its slots
    slots.slot(1)[:] = 7
    slots.preparing[0] = 3


def test_a_slot_file_is_named_nowhere_and_reaches_a_spawned_process_as_a_descriptor(tmp_path):
    shm_before = set(os.listdir(SHM_DIR)) if os.path.isdir(SHM_DIR) else set()
    slots = SlotFile.create("yolo-v7-test-slots", 3, 16, str(tmp_path))
    target = os.readlink(f"/proc/self/fd/{slots._fd}")
    assert target.startswith("/memfd:yolo-v7-test-slots") or target.endswith("(deleted)"), target
    child = multiprocessing.get_context("spawn").Process(target=_fill, args=(slots,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert int(slots.preparing[0]) == 3 and np.all(slots.slot(1) == 7) and not np.any(slots.slot(0))
    assert list(tmp_path.iterdir()) == []
    if os.path.isdir(SHM_DIR):
        assert not {name for name in set(os.listdir(SHM_DIR)) - shm_before if "yolo-v7" in name}
    slots.close()


def test_run_folders_of_dead_owners_are_swept_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setenv(MULTIPROC_ENV, "unset by the test")
    stale = tmp_path / "yolo-v7-stale"
    (stale / "metrics").mkdir(parents=True)
    (stale / OWNER_LOCK).touch()  # nobody holds it: its model process died
    (stale / "metrics" / "counter_1.db").write_bytes(b"x")
    foreign = tmp_path / "yolo-v7-no-lock"  # not ours to judge
    foreign.mkdir()
    live = Path(claim_run_dir(str(tmp_path)))  # held by this process; sweeps the stale one first
    assert not stale.exists() and foreign.exists()
    assert os.environ[MULTIPROC_ENV] == str(live / "metrics") and (live / "metrics").is_dir()
    assert sweep_stale_run_dirs(str(tmp_path)) == [] and live.exists()


async def test_slots_are_taken_at_once_or_in_turn_and_given_without_a_task():
    pool = SlotPool(4)
    first = await pool.take(3)
    assert sorted(first) == [0, 1, 2]
    big = asyncio.ensure_future(pool.take(4))  # must wait for all four
    small = asyncio.ensure_future(pool.take(1))  # one is free, but the big request came first
    await asyncio.sleep(0)
    assert not big.done() and not small.done()
    pool.give(first)  # a plain call: the waiters are served in order
    await asyncio.sleep(0)
    assert big.done() and sorted(big.result()) == [0, 1, 2, 3] and not small.done()
    pool.give(big.result())
    assert await asyncio.wait_for(small, 5) in ([0], [1], [2], [3])
    pool.give(small.result())
    assert sorted(pool._free) == [0, 1, 2, 3]


async def test_a_cancelled_take_loses_no_slot_and_blocks_nobody():
    pool = SlotPool(2)
    held = await pool.take(2)
    waiting = asyncio.ensure_future(pool.take(2))
    behind = asyncio.ensure_future(pool.take(1))
    await asyncio.sleep(0)
    waiting.cancel()  # cancelled while it waits: the one behind it is served when slots come back
    pool.give(held[:1])
    assert await asyncio.wait_for(behind, 5) == held[:1]
    given = asyncio.ensure_future(pool.take(1))
    await asyncio.sleep(0)
    pool.give(held[1:])  # its turn is settled, then the task is cancelled before it resumes
    given.cancel()
    await asyncio.gather(given, return_exceptions=True)
    assert waiting.cancelled() and given.cancelled()
    assert sorted(pool._free) == sorted(held[1:])  # the slot given to the cancelled take came back


async def test_the_one_behind_a_cancelled_take_gets_the_free_slots_at_once():
    pool = SlotPool(2)
    held = await pool.take(1)
    ahead = asyncio.ensure_future(pool.take(2))  # waits for the held slot
    behind = asyncio.ensure_future(pool.take(1))  # one slot is free, but it waits its turn
    await asyncio.sleep(0)
    assert not behind.done()
    ahead.cancel()
    await asyncio.gather(ahead, return_exceptions=True)
    free = [slot for slot in (0, 1) if slot not in held]
    assert await asyncio.wait_for(behind, 5) == free  # served without waiting for a give
