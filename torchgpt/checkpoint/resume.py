"""Resume: pick a checkpoint (the newest complete one, or an explicit one) and load every state.

Every checkpoint is verified against the checksums written at save before it is read. Auto-resume
skips incomplete folders and quarantines corrupt ones (step-N.corrupt, torchgpt.checkpoint.
integrity) with a warning naming the file; an explicit choice that is bad is a ValueError
naming the path and the fix. The states' shapes are checked against the
checkpoint's metadata first, so a wrong model config lists every mismatched key at once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.stateful import Stateful

from torchgpt.checkpoint import integrity, layout
from torchgpt.checkpoint.comm import Comm
from torchgpt.checkpoint.compat import (
    find_mismatches,
    flatten,
    mismatch_message,
    quiet_no_dist,
    read_metadata,
)
from torchgpt.checkpoint.states import RNGState

logger = logging.getLogger(__name__)

# DCP raises CheckpointException, a BaseException: `except Exception` alone would miss it.
DCP_ERRORS = (Exception, CheckpointException)


def describe_error(error: BaseException) -> str:
    """One line per failing rank; DCP wraps each rank's exception in CheckpointException."""
    if isinstance(error, CheckpointException):
        parts = [f"rank {r}: {type(e).__name__}: {e}" for r, (e, _) in error.failures.items()]
        return "; ".join(parts)
    return f"{type(error).__name__}: {error}"


class _CorruptCheckpoint(Exception):
    def __init__(self, message: str, touched_state: bool) -> None:
        super().__init__(message)
        self.touched_state = touched_state


class Resumer:
    """Loads `states` (already adapted for DCP) from checkpoints under `ckpt_dir`; collective."""

    def __init__(self, ckpt_dir: Path, states: dict[str, Stateful], comm: Comm) -> None:
        self.ckpt_dir, self.states, self.comm = ckpt_dir, states, comm

    def load_auto(self) -> int | None:
        """Load the newest loadable complete checkpoint; None when there is none."""
        on_rank_0 = layout.scan(self.ckpt_dir) if self.comm.rank == 0 else None
        found = self.comm.broadcast(on_rank_0)
        for path in found.incomplete:
            logger.warning("skipping incomplete checkpoint %s (its save never finished)", path)
        for _, path in reversed(found.complete):
            try:
                return self._load_dir(path, explicit=False)
            except _CorruptCheckpoint as e:
                moved = self._quarantine(path, str(e))
                if e.touched_state:
                    # Reading it overwrote part of the model: no older checkpoint may be loaded
                    # on top of that in this process. The next launch starts clean.
                    raise RuntimeError(
                        f"checkpoint {path} failed while loading ({e}) after part of the model "
                        f"was read from it; it was quarantined as {moved}. Launch again: the "
                        "next launch resumes from the newest remaining checkpoint"
                    ) from e
        logger.info("no complete checkpoint in %s: starting fresh", self.ckpt_dir)
        return None

    def load_explicit(self, path: Path, key: str) -> int:
        """Load `path`; any problem is a ValueError starting with the config `key`."""
        on_rank_0 = layout.explicit_problem(path, self.ckpt_dir) if self.comm.rank == 0 else None
        problem = self.comm.broadcast(on_rank_0)
        if problem is not None:
            raise ValueError(f"{key}: {problem}")
        return self._load_dir(path, explicit=True)

    def _quarantine(self, path: Path, reason: str) -> Path | None:
        """Rank 0 moves a checkpoint that failed aside (step-N.corrupt); every rank logs why."""
        moved = None
        if self.comm.rank == 0:
            try:
                moved = integrity.quarantine(path, reason)
            except OSError as e:
                logger.error("could not quarantine %s: %s", path, e)
        moved = self.comm.broadcast(moved)
        logger.warning(
            "corrupt checkpoint %s: %s; quarantined as %s, resuming from an older one",
            path,
            reason,
            moved,
        )
        return moved

    def _verify(self, path: Path, explicit: bool) -> None:
        """Rank 0 checks every file against the checksums written at save (shared filesystem)."""
        start = time.perf_counter()
        problem = self.comm.broadcast(integrity.verify(path) if self.comm.rank == 0 else None)
        if problem is not None:
            if explicit:
                raise ValueError(
                    f"checkpoint {path} fails verification: {problem}; pick another "
                    "checkpoint (checkpoint.load_step / load_path) or resume=auto"
                )
            raise _CorruptCheckpoint(f"verification failed: {problem}", touched_state=False)
        logger.info("verified checkpoint %s in %.2f s", path, time.perf_counter() - start)

    def _load_dir(self, path: Path, *, explicit: bool) -> int:
        start = time.perf_counter()
        step = layout.step_of(path)
        if step is None:
            raise ValueError(f"cannot tell the step of checkpoint {path}: name the folder step-N")
        self._verify(path, explicit)
        state_dict = self._state_dict_for_load(path, explicit)
        try:
            with quiet_no_dist():
                dcp.load(
                    state_dict,
                    checkpoint_id=str(path),
                    process_group=self.comm.group,
                    no_dist=not self.comm.is_dist,
                )
        except DCP_ERRORS as e:
            if explicit:
                raise ValueError(f"checkpoint {path} could not be read: {describe_error(e)}") from e
            if integrity.has_checksums(path):
                # Its files are the ones that were saved: the cause is elsewhere (memory, the
                # torch version, a peer). Renaming it would hide a good checkpoint.
                raise RuntimeError(
                    f"loading checkpoint {path} failed although its files match their "
                    f"checksums: {describe_error(e)}; fix the cause and launch again"
                ) from e
            raise _CorruptCheckpoint(describe_error(e), touched_state=True) from e
        for name, state in self.states.items():
            if name in state_dict:
                state.load_state_dict(state_dict[name])
        logger.info(
            "loaded checkpoint %s (step %d) in %.2f s", path, step, time.perf_counter() - start
        )
        return step

    def _state_dict_for_load(self, path: Path, explicit: bool) -> dict[str, Any]:
        """The states to fill, checked against the checkpoint's metadata on every rank."""
        metadata, error = None, None
        try:
            metadata = read_metadata(path)
        except DCP_ERRORS as e:
            error = describe_error(e)
        errors = [e for e in self.comm.gather(error) if e is not None]
        if errors:
            if explicit:
                raise ValueError(f"checkpoint {path}: unreadable DCP .metadata ({errors[0]})")
            raise _CorruptCheckpoint(f"unreadable .metadata ({errors[0]})", touched_state=False)
        state_dict = {name: state.state_dict() for name, state in self.states.items()}
        for name, state in self.states.items():
            # After a world-size change, ranks the checkpoint never had keep their seeded RNG.
            if isinstance(state, RNGState) and f"{name}.{state.key()}" not in (
                metadata.state_dict_metadata
            ):
                logger.info("%s has no %s.%s (saved by fewer ranks)", path, name, state.key())
                state_dict.pop(name)
        problems = find_mismatches(flatten(state_dict), metadata)
        if problems:
            raise ValueError(mismatch_message(path, problems))
        return state_dict
