"""The operator starts kopf again when a root task fails, and restarts its process when kopf hangs on its way
out after such a failure (``yolo_operator.__main__.StuckStopWatch``)."""

from __future__ import annotations

import logging
import threading

from yolo_operator.__main__ import StuckStopWatch


def _fail(name: str = "kopf._core.reactor.running", message: str = "Multidimensional multitasker has failed: 404"):
    logging.getLogger(name).error(message)


def test_a_failed_root_task_that_does_not_stop_restarts_the_process():
    fired = threading.Event()
    watch = StuckStopWatch(seconds=0.05, restart=fired.set)
    logging.getLogger("kopf").addHandler(watch)
    try:
        _fail()  # kopf's own logger name, propagated to the "kopf" logger
        assert fired.wait(5), "the restart did not run"
    finally:
        logging.getLogger("kopf").removeHandler(watch)
        watch.disarm()


def test_kopf_returning_in_time_disarms_it_and_other_errors_do_not_arm_it():
    fired = threading.Event()
    watch = StuckStopWatch(seconds=0.2, restart=fired.set)
    logging.getLogger("kopf").addHandler(watch)
    try:
        _fail("kopf.objects", "Handler 'create' has failed temporarily")  # a handler's error: not a root task
        _fail("kopf._core.reactor.orchestration", "something else went wrong")
        assert not fired.wait(0.4)
        _fail("kopf._core.reactor.orchestration", "Watcher for yolodetectors has failed: 404 page not found")
        watch.disarm()  # main(): kopf.run returned
        assert not fired.wait(0.4)
    finally:
        logging.getLogger("kopf").removeHandler(watch)
        watch.disarm()


def test_main_leaves_no_watch_behind(monkeypatch):
    """``main()`` run in-process (as here) must not leave its watch on the kopf logger: armed later by another
    test's log line, it would re-execute the test runner itself."""
    from yolo_operator import __main__ as entry

    monkeypatch.setattr(entry.kopf, "run", lambda **kwargs: None)
    before = list(logging.getLogger("kopf").handlers)
    assert entry.main(["-n", "ns", "--liveness="]) == 0
    assert not [h for h in logging.getLogger("kopf").handlers if isinstance(h, StuckStopWatch)], \
        logging.getLogger("kopf").handlers
    assert [h for h in logging.getLogger("kopf").handlers if h not in before] == []


_HUNG_OPERATOR = """
import logging, os, sys, time
from pathlib import Path
from yolo_operator.__main__ import StuckStopWatch
starts = Path(sys.argv[1])
with starts.open("a") as f:
    f.write(f"{os.getpid()}\\n")
if len(starts.read_text().splitlines()) >= 2:
    sys.exit(0)
logging.getLogger("kopf").addHandler(StuckStopWatch(seconds=0.2))
logging.getLogger("kopf._core.reactor.running").error("Multidimensional multitasker has failed: 404")
time.sleep(60)  # kopf hanging on its way out
sys.exit(3)
"""


def test_the_restart_re_executes_the_same_process(tmp_path):
    """The default restart replaces the hung process with a fresh one running the same command line (same PID:
    the kubelet and a supervising test keep their handle)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    starts = tmp_path / "starts"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "operator")])}
    done = subprocess.run([sys.executable, "-c", _HUNG_OPERATOR, str(starts)], env=env, timeout=30,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    pids = starts.read_text().split()
    assert len(pids) == 2 and pids[0] == pids[1], pids
    assert "restarting the operator process" in done.stderr
