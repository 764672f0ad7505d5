"""One job owns a run folder: RUN_DIR/.lock names its holder (host, pid, start time).

Rank 0 of a launch takes the lock before it writes anything. A second launch into a folder
whose holder is alive is refused (exit 2) with a message naming the holder; a stale lock (its
process gone on this host, or no heartbeat for `stale_after` seconds from another host) is taken
over with a warning, which is the normal case after a crash or a SIGKILL. The holder refreshes
the lock's mtime every `heartbeat` seconds from a daemon thread and removes it on release.
A launcher whose worker was killed (after torchrun's grace) removes that worker's lock at once
(`remove_abandoned`), so the lock never outlives a stopped run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunFolderBusy(RuntimeError):
    """Another live job holds the run folder."""


def _proc_start_ticks(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (tells a reused pid apart)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])


def _alive_here(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    ticks = _proc_start_ticks(pid)
    return ticks is not None and ticks == holder.get("start_ticks")


class RunLock:
    """The lock of one run folder (see the module docstring)."""

    def __init__(self, run_dir: Path, *, heartbeat: float = 30.0, stale_after: float = 180.0):
        self.path = Path(run_dir) / LOCK_NAME
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created_dir = False
        self.me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start_ticks": _proc_start_ticks(os.getpid()),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def describe(self, holder: dict) -> str:
        return (
            f"host {holder.get('host')}, pid {holder.get('pid')}, "
            f"started {holder.get('started_at')}"
        )

    def _stale_reason(self, holder: dict) -> str | None:
        """Why the holder is gone, or None when it may still be running."""
        if holder.get("host") == self.me["host"]:
            return None if _alive_here(holder) else "its process is gone"
        age = time.time() - self.path.stat().st_mtime
        if age > self.stale_after:
            return f"no heartbeat for {age:.0f} s"
        return None

    def _read(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _wait_for_remote_holder(self, holder: dict) -> str | None:
        """Another host's holder: wait until its heartbeat is `stale_after` old (a crashed
        node's relaunch is not refused), or refuse once it has kept beating that long."""
        waited = time.monotonic()
        logger.warning(
            "%s is locked by %s: waiting up to %.0f s for its heartbeat to stop",
            self.path.parent,
            self.describe(holder),
            self.stale_after,
        )
        while time.monotonic() - waited <= self.stale_after:
            reason = self._stale_reason(holder)
            if reason is not None:
                return reason
            time.sleep(min(5.0, self.stale_after / 10))
        return None

    def acquire(self) -> None:
        """Take the lock, or raise RunFolderBusy naming the live holder."""
        self._created_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{LOCK_NAME}.{self.me['pid']}.tmp")
        tmp.write_text(json.dumps(self.me) + "\n")
        try:
            for _ in range(5):
                try:
                    os.link(tmp, self.path)  # atomic, fails if a lock exists (also on NFS)
                    break
                except FileExistsError:
                    pass
                holder = self._read()
                reason = self._stale_reason(holder) if holder else "it is unreadable"
                if reason is None and holder.get("host") != self.me["host"]:
                    reason = self._wait_for_remote_holder(holder)
                if reason is None:
                    raise RunFolderBusy(
                        f"run folder {self.path.parent} is in use by another job "
                        f"({self.describe(holder)}); wait for it to end, stop it, or choose "
                        "another job.name / job.dump_folder"
                    )
                self._remove_stale(holder, reason)
            else:
                raise RunFolderBusy(
                    f"run folder {self.path.parent}: other launches keep taking its lock; "
                    "launch one job at a time"
                )
        finally:
            tmp.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._beat, name="run-lock", daemon=True)
        self._thread.start()

    def _remove_stale(self, holder: dict, reason: str) -> None:
        """Move the stale lock aside under a unique name: only one taker's rename gets it, and
        a lock that turns out to be someone else's fresh one is put back."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{self.me['pid']}.{time.time_ns()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another launch moved it first; try to link again
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved and moved != holder:  # a fresh lock taken meanwhile: not ours to remove
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        logger.warning(
            "taking over the stale lock of %s (%s): %s",
            self.path.parent,
            self.describe(holder),
            reason,
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock (and the run folder if this made it empty)."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout=5)
        self._thread = None
        try:
            if json.loads(self.path.read_text()).get("pid") == self.me["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass
        if self._created_dir:
            try:
                self.path.parent.rmdir()  # only when empty: a refused launch leaves nothing
            except OSError:
                pass


def lock_state(run_dir: Path) -> tuple[str, dict | None]:
    """("free" | "held" | "abandoned" | "remote", holder) of RUN_DIR/.lock: held by a live
    process of this host, left by a dead one, or held by another host's process (alive or
    not, which only its heartbeat tells: see RunLock)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return "free", None
    except (OSError, ValueError):
        return "abandoned", {}
    if not isinstance(holder, dict):
        return "abandoned", {}
    if holder.get("host") != socket.gethostname():
        return "remote", holder
    return ("held" if _alive_here(holder) else "abandoned"), holder


def remove_abandoned(run_dir: Path) -> dict | None:
    """Remove RUN_DIR/.lock when its holder was a process of this host that is gone (a worker
    killed by a signal); returns that holder, or None when the lock is free, live or another
    host's. Moved aside first, like a stale takeover: a lock taken meanwhile is put back."""
    state, holder = lock_state(run_dir)
    if state != "abandoned":
        return None
    path = Path(run_dir) / LOCK_NAME
    aside = path.with_name(f"{LOCK_NAME}.abandoned.{os.getpid()}.{time.time_ns()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    try:
        moved = json.loads(aside.read_text())
    except (OSError, ValueError):
        moved = {}
    if moved and moved != holder:  # a new launch's fresh lock: not ours to remove
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return None
    aside.unlink(missing_ok=True)
    return holder
