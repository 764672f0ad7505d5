"""Process lifecycle of a worker: preemption signals, and dying with the launcher.

SIGTERM/SIGINT ask the trainer to finish the step, checkpoint and exit 0.

A second signal exits at once. A repeat within 5 s counts as the same request: Slurm signals
every process of the job and torchrun forwards its own copy to each worker about a
millisecond later. `requested` is this rank's view only; the trainer acts on the flag once
every rank has agreed on it through an all-reduce.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_SAME_REQUEST_S = 5.0


class PreemptionHandler:
    """Installs the handlers (`install`) and puts the previous ones back (`restore`)."""

    def __init__(self) -> None:
        self.requested = False
        self._first_at: float | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            assert self._first_at is not None
            if time.monotonic() - self._first_at < _SAME_REQUEST_S:
                return
            logger.warning("second signal %d: exiting without a checkpoint", signum)
            os._exit(128 + signum)
        self._first_at = time.monotonic()
        self.requested = True
        logger.warning("signal %d: will checkpoint after the current step and exit", signum)

    def install(self) -> None:
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
