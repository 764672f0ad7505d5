"""RunLock: one job per run folder; a live holder refuses, a stale one is taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from torchgpt.run.lock import LOCK_NAME, RunFolderBusy, RunLock, _proc_start_ticks


def _write_lock(run_dir, **holder):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps(holder))


def test_acquire_release_leaves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    lock = RunLock(run_dir)
    lock.acquire()
    holder = json.loads((run_dir / LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    lock.release()
    assert not run_dir.exists()  # it made the folder, and nothing else was written


def test_a_live_holder_refuses_with_its_name(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(
            tmp_path,
            host=socket.gethostname(),
            pid=child.pid,
            start_ticks=_proc_start_ticks(child.pid),
            started_at="2026-12-01T10:00:00+00:00",
        )
        with pytest.raises(RunFolderBusy) as err:
            RunLock(tmp_path).acquire()
        msg = str(err.value)
        assert f"pid {child.pid}" in msg and socket.gethostname() in msg
        assert "2026-12-01T10:00:00+00:00" in msg and "another job.name" in msg
    finally:
        child.kill()
        child.wait()
    # The same pid number no longer names that process: stale now.
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()


def test_stale_locks_are_taken_over_with_a_warning(tmp_path, caplog):
    _write_lock(tmp_path / "dead", host=socket.gethostname(), pid=2**22 + 7, start_ticks=1)
    with caplog.at_level(logging.WARNING):
        lock = RunLock(tmp_path / "dead")
        lock.acquire()
    assert "taking over the stale lock" in caplog.text and "its process is gone" in caplog.text
    assert json.loads((tmp_path / "dead" / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    # Another host: a holder that keeps beating for stale_after seconds refuses the launch...
    _write_lock(tmp_path / "far", host="other-node", pid=1, start_ticks=1)
    stop = threading.Event()

    def beat():
        while not stop.wait(0.05):
            os.utime(tmp_path / "far" / LOCK_NAME)

    beater = threading.Thread(target=beat)
    beater.start()
    try:
        start = time.monotonic()
        with pytest.raises(RunFolderBusy, match="host other-node"):
            RunLock(tmp_path / "far", stale_after=0.5).acquire()
        assert time.monotonic() - start >= 0.5  # it waited for the heartbeat to stop first
    finally:
        stop.set()
        beater.join()
    # ...one whose heartbeat stopped (a crashed node) is taken over.
    old = time.time() - 600
    os.utime(tmp_path / "far" / LOCK_NAME, (old, old))
    lock = RunLock(tmp_path / "far", stale_after=60)
    lock.acquire()
    lock.release()


def test_the_holder_keeps_its_heartbeat(tmp_path):
    lock = RunLock(tmp_path, heartbeat=0.05)
    lock.acquire()
    old = time.time() - 600
    os.utime(tmp_path / LOCK_NAME, (old, old))
    time.sleep(0.3)
    assert time.time() - (tmp_path / LOCK_NAME).stat().st_mtime < 5
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists() and tmp_path.exists()
