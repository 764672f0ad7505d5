"""Preemption: SIGTERM/SIGINT ask the trainer to finish the step, checkpoint and exit 0.

A second signal exits at once. A repeat within 5 s counts as the same request: Slurm signals
every process of the job and torchrun forwards its own copy to each worker about a
millisecond later. `requested` is this rank's view only; the trainer acts on the flag once
every rank has agreed on it through an all-reduce.
"""

from __future__ import annotations

import logging
import os
import signal
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
