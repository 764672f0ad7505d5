"""Process lifecycle of a worker: stop requests (SIGTERM/SIGINT), and dying with the launcher.

SIGTERM/SIGINT ask the run to stop at the next safe point: the end of setup (nothing to save),
or the end of the current step, validation or save (which is then checkpointed); the trainer
writes how it ended to last_exit.json (torchgpt/run/stop.py) and exits 0, or 1 when the step it
reached could not be saved (checkpointing off). train.py installs the handler once the
process group exists; until then a signal kills the worker as before.

A second signal exits at once, after the `on_exit_now` callbacks (last_exit.json says
"stopped", the run-folder lock is released). A repeat within 5 s counts as the same request:
Slurm signals every process of the job and torchrun forwards its own copy to each worker about
a millisecond later. `requested` is this rank's view only; the trainer acts on the flag once
every rank has agreed on it through an all-reduce.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_SAME_REQUEST_S = 5.0


def signal_name(signum: int) -> str:
    """'SIGTERM' for 15; 'signal N' for a number Python has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class PreemptionHandler:
    """Installs the handlers (`install`) and puts the previous ones back (`restore`).

    Attributes:
        requested: a stop was asked of this process.
        signum: the signal that asked first (None before).
        on_request: called with the signal number on the first request (the trainer logs where
            the run stands and notes it in last_exit.json); its errors are logged, never raised.
        on_exit_now: called, last added first, before a second signal ends the process.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self.on_request: Callable[[int], None] | None = None
        self.on_exit_now: list[Callable[[], None]] = []
        self._first_at: float | None = None
        self._previous: dict[int, object] = {}

    @property
    def signal_name(self) -> str | None:
        return None if self.signum is None else signal_name(self.signum)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            assert self._first_at is not None
            if time.monotonic() - self._first_at < _SAME_REQUEST_S:
                return
            logger.warning(
                "second signal (%s): exiting now, without a checkpoint", signal_name(signum)
            )
            for callback in reversed(self.on_exit_now):
                _call_logging_errors(callback)
            logging.shutdown()
            os._exit(128 + signum)
        self._first_at = time.monotonic()
        self.requested, self.signum = True, signum
        if self.on_request is None:
            logger.warning(
                "%s: will stop at the next safe point (the end of setup or of the current step)",
                signal_name(signum),
            )
        else:
            _call_logging_errors(self.on_request, signum)

    def install(self) -> None:
        """Handle SIGTERM/SIGINT from now on (again: a no-op)."""
        for sig in _SIGNALS:
            self._previous.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put back the handlers `install` replaced.

        Left installed, the bound handler would keep its owner (the Trainer: model, meshes,
        process groups) alive until interpreter shutdown.
        """
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def _call_logging_errors(callback: Callable, *args: object) -> None:
    """Run a callback from a signal handler: an exception there would surface at a random line
    of the interrupted code, so it is logged instead."""
    try:
        callback(*args)
    except Exception:
        logger.exception("error in the stop handler %r", callback)


LAUNCHER_PID_ENV = "TORCHGPT_LAUNCHER_PID"


def die_with_launcher() -> None:
    """Make this worker die the moment its launcher does (run_train.sh's torchrun).

    torchrun starts each worker in a session of its own, so `kill -9 -- -PGID` of the launcher,
    or the OOM killer taking it, used to leave the workers training (and checkpointing into a
    folder a restarted job then shared). On Linux the kernel now sends SIGKILL to this process
    when its parent exits (prctl PR_SET_PDEATHSIG), as if the node had failed: the next launch
    resumes from the last complete checkpoint. Only under the launcher, which names its pid
    in $TORCHGPT_LAUNCHER_PID; a no-op elsewhere (plain torchrun, tests, other systems).
    """
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
        return
    if os.getppid() != int(launcher):  # the launcher died before the call above
        logger.error("launcher (pid %s) is gone: exiting", launcher)
        os._exit(1)
