"""CheckpointManager: save every N steps, keep the best and the newest K, resume from the newest.

Every rank writes its shards with DCP into `step-N.tmp/`; rank 0 then writes the info file and
the COMPLETE marker and renames the folder to `step-N/`, so a crash or a full disk at any moment
leaves the previous checkpoints untouched and the unfinished one ignored.

The storage writer is DCP's FileSystemWriter unless $TORCHGPT_CHECKPOINT_WRITER names another
("package.module:factory", called with the folder path): a hook for custom storage backends,
and what the fault-injection tests use to stop a real save half-way.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter, StorageWriter
from torch.distributed.checkpoint.stateful import Stateful

from torchgpt.checkpoint import integrity, layout
from torchgpt.checkpoint.comm import Comm
from torchgpt.checkpoint.compat import quiet_no_dist
from torchgpt.checkpoint.resume import DCP_ERRORS, Resumer, describe_error
from torchgpt.checkpoint.states import ModelState, OptimizerState, PickledState, RNGState

logger = logging.getLogger(__name__)

_ASYNC_MODES = ("disabled", "async")
_RESUME_MODES = ("auto", "none")
WRITER_ENV = "TORCHGPT_CHECKPOINT_WRITER"


class CheckpointSaveError(RuntimeError):
    """A save failed on some rank; the unfinished folder was removed, older ones are intact."""


@dataclass
class _PendingSave:
    step: int
    tmp: Path
    future: Future
    prev_best: tuple[int | None, float | None]


class CheckpointManager:
    """Saves and restores `states` as DCP checkpoints under RUN_DIR/checkpoints/step-N/.

    `save`, `load` and `wait` are collective: every rank calls them with the same arguments.

    Args:
        run_dir: the run directory; checkpoints go to `run_dir/checkpoints`.
        states: name -> Stateful. ModelState / OptimizerState / RNGState go through DCP as
            they are; any other Stateful (lr scheduler, dataloader, train counters) is saved as
            one blob and must hold the same state on every rank.
        interval: save every this many steps (and at the last step), see `should_save`.
        keep_latest_k: keep this many newest checkpoints, plus the best; 0 keeps all.
        async_mode: "disabled" (save blocks) or "async" (DCP async_save: training continues
            once the state is copied, the write goes on in a background thread).
        enabled: when False, `save` does nothing and resume "auto" starts fresh.
        extra_metadata: JSON-able dict (resolved config, model args) stored in each checkpoint's
            checkpoint_info.json.
        collective_timeout: how long the checkpoint group's collectives wait for a peer.

    Attributes:
        last_blocked_seconds: how long the last `save` kept training waiting (sync: the whole
            save; async: waiting for the previous save plus copying the state).
        best_step, best_val_loss: the checkpoint with the lowest validation loss (best.json).
        loaded_path: the folder of the checkpoint `load` restored (None before, or fresh).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        states: dict[str, Stateful],
        interval: int,
        keep_latest_k: int = 3,
        async_mode: str = "disabled",
        enabled: bool = True,
        extra_metadata: dict | None = None,
        collective_timeout: timedelta | None = None,
    ) -> None:
        _validate_args(states, interval, keep_latest_k, async_mode)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.interval, self.keep_latest_k = interval, keep_latest_k
        self.async_mode, self.enabled = async_mode, enabled
        self.extra_metadata = dict(extra_metadata or {})
        self._states: dict[str, Stateful] = {
            name: s if isinstance(s, (ModelState, OptimizerState, RNGState)) else PickledState(s)
            for name, s in states.items()
        }
        self._writer_factory = _writer_factory()
        self._comm = Comm(collective_timeout)
        self._resumer = Resumer(self.ckpt_dir, self._states, self._comm)
        self._executor = ThreadPoolExecutor(1, "ckpt-finish") if async_mode == "async" else None
        self._pending: _PendingSave | None = None
        self.last_blocked_seconds = 0.0
        self.last_checksum_seconds = 0.0
        self.loaded_path: Path | None = None  # the checkpoint `load` restored
        self.best_step, self.best_val_loss = layout.read_best(self.ckpt_dir)

    # ----- saving -----

    def loaded_config(self) -> dict:
        """The job config the restored checkpoint was saved with ({} if none or fresh)."""
        return layout.saved_config(self.loaded_path)

    def should_save(self, step: int, *, last_step: int) -> bool:
        """True every `interval` steps and at `last_step` (when enabled)."""
        return self.enabled and step > 0 and (step % self.interval == 0 or step == last_step)

    def list_complete(self) -> list[tuple[int, Path]]:
        """(step, folder) of every complete checkpoint, oldest first (this process's view)."""
        return layout.scan(self.ckpt_dir).complete

    def save(self, step: int, *, val_loss: float | None = None, force: bool = False) -> Path | None:
        """Write the checkpoint of `step` (collective); returns its folder, None when disabled.

        Waits for a pending async save first. An existing complete `step-N` is kept (and
        returned) unless `force`, which replaces it. `val_loss` (lower is better) makes this
        the best checkpoint when it beats the best so far. Raises CheckpointSaveError when any
        rank fails to write; the older checkpoints stay as they were.
        """
        if not self.enabled:
            return None
        start = time.perf_counter()
        self._finish_pending()
        final, tmp = layout.step_dir(self.ckpt_dir, step), layout.tmp_dir(self.ckpt_dir, step)
        status = self._comm.broadcast(
            self._prepare_tmp(final, tmp, force) if self._comm.rank == 0 else None
        )
        if status == "exists":
            logger.info("checkpoint %s already exists: not saving step %d again", final, step)
            self.last_blocked_seconds = time.perf_counter() - start
            return final
        if status != "ready":
            raise CheckpointSaveError(f"could not create {tmp} to save step {step}: {status}")
        prev_best = (self.best_step, self.best_val_loss)
        new_best = layout.is_better(val_loss, self.best_val_loss)
        if new_best:
            self.best_step, self.best_val_loss = step, val_loss
        info = self._info(step, val_loss)
        if self.async_mode == "async":
            self._start_async(step, tmp, info, new_best, prev_best)
        else:
            self._save_sync(step, tmp, info, new_best, prev_best)
        self.last_blocked_seconds = time.perf_counter() - start
        logger.info(
            "checkpoint step %d -> %s (%s, training blocked %.2f s)",
            step,
            final,
            "writing in the background" if self.async_mode == "async" else "written",
            self.last_blocked_seconds,
        )
        return final

    def wait(self) -> None:
        """Finish a pending async save (collective); call before exiting. Raises its errors."""
        self._finish_pending()

    def _prepare_tmp(self, final: Path, tmp: Path, force: bool) -> str:
        """Rank 0: 'exists', 'ready' (empty tmp folder made) or the error that stopped it."""
        if layout.is_complete(final) and not force:
            return "exists"
        try:
            layout.remove_leftovers(self.ckpt_dir)
            tmp.mkdir(parents=True)
        except OSError as e:
            return f"{type(e).__name__}: {e}"
        return "ready"

    def _info(self, step: int, val_loss: float | None) -> dict[str, Any]:
        return {
            "step": step,
            "val_loss": val_loss,
            "world_size": self._comm.world_size,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
            "states": sorted(self._states),
            "extra": self.extra_metadata,
        }

    def _state_dict_for_save(self) -> dict[str, Any]:
        return {name: state.state_dict() for name, state in self._states.items()}

    def _save_sync(self, step, tmp, info, new_best, prev_best) -> None:
        error: BaseException | None = None
        try:
            with quiet_no_dist():
                dcp.save(
                    self._state_dict_for_save(),
                    storage_writer=self._writer_factory(str(tmp)),
                    process_group=self._comm.group,
                    no_dist=not self._comm.is_dist,
                )
            if self._comm.rank == 0:
                self._finalize(step, tmp, info, new_best)
        except DCP_ERRORS as e:
            error = e
        self._raise_if_failed(step, tmp, error, prev_best)

    def _start_async(self, step, tmp, info, new_best, prev_best) -> None:
        try:
            # Returns once the state is copied to CPU memory ("staging"); the write runs on.
            upload = dcp.async_save(
                self._state_dict_for_save(),
                storage_writer=self._writer_factory(str(tmp)),
                process_group=self._comm.group,
                no_dist=not self._comm.is_dist,
            )
        except DCP_ERRORS as e:
            # Staging is local, so other ranks may already be in the upload's collectives:
            # no collective here (it would interleave with theirs); this rank's error ends the job.
            self.best_step, self.best_val_loss = prev_best
            raise CheckpointSaveError(
                f"staging checkpoint step {step} failed: {describe_error(e)}"
            ) from e
        future = self._executor.submit(self._complete_async, upload, step, tmp, info, new_best)
        self._pending = _PendingSave(step, tmp, future, prev_best)

    def _complete_async(self, upload: Future, step: int, tmp: Path, info: dict, new_best: bool):
        upload.result()  # DCP's upload fails on every rank alike
        if self._comm.rank == 0:
            self._finalize(step, tmp, info, new_best)

    def _finish_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        error: BaseException | None = None
        try:
            pending.future.result()
        except DCP_ERRORS as e:
            error = e
        self._raise_if_failed(pending.step, pending.tmp, error, pending.prev_best)

    def _finalize(self, step: int, tmp: Path, info: dict, new_best: bool) -> None:
        """Rank 0, after every rank's shards are written: info, marker, rename, bookkeeping."""
        layout.write_json_atomic(tmp / layout.INFO_NAME, info)
        start = time.perf_counter()
        nbytes = integrity.write_checksums(tmp)  # reads back what every rank wrote
        self.last_checksum_seconds = time.perf_counter() - start
        logger.info(
            "checksums of step %d: %.0f MB in %.2f s",
            step,
            nbytes / 1e6,
            self.last_checksum_seconds,
        )
        # The marker goes last: a folder with it has everything else.
        layout.write_json_atomic(tmp / layout.MARKER_NAME, {"step": step})
        final = layout.step_dir(self.ckpt_dir, step)
        if final.exists():
            layout.remove_dir(final)  # save(force=True) over an existing step-N
        tmp.rename(final)
        layout.fsync_dir(self.ckpt_dir)
        try:
            if new_best:
                layout.write_best(self.ckpt_dir, step, info["val_loss"])
            self._apply_retention(protect=step)
        except OSError as e:
            # The checkpoint itself is complete; only the bookkeeping around it failed.
            logger.error("checkpoint %s saved, but updating best/retention failed: %s", final, e)

    def _apply_retention(self, protect: int) -> None:
        complete = dict(layout.scan(self.ckpt_dir).complete)
        doomed = layout.steps_to_delete(
            list(complete), self.keep_latest_k, self.best_step, protect=protect
        )
        # Only a newer checkpoint that carries checksums may replace an old one.
        verified = [s for s, path in complete.items() if integrity.has_checksums(path)]
        doomed = [s for s in doomed if verified and s < max(verified)]
        for s in doomed:
            logger.info(
                "retention (keep_latest_k=%d): deleting %s", self.keep_latest_k, complete[s]
            )
            layout.remove_dir(complete[s])

    def _raise_if_failed(
        self,
        step: int,
        tmp: Path,
        error: BaseException | None,
        prev_best: tuple[int | None, float | None],
    ) -> None:
        """Collective: if any rank failed, clean up and raise the same error on every rank."""
        errors = self._comm.gather(None if error is None else describe_error(error))
        failed = sorted({e for e in errors if e is not None})
        if not failed:
            return
        self.best_step, self.best_val_loss = prev_best
        if self._comm.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        complete = self.list_complete()
        still = f"{complete[-1][1]} is still the newest" if complete else "no older checkpoint"
        raise CheckpointSaveError(
            f"saving checkpoint step {step} into {tmp} failed: {' | '.join(failed)}. The "
            f"unfinished folder was removed; {still} (resume picks it). If the disk is full, "
            "free space or lower checkpoint.keep_latest_k."
        ) from error

    # ----- loading -----

    def load(self, *, resume: str = "auto", load_step: int = -1, load_path: str = "") -> int | None:
        """Restore every state from a checkpoint (collective); returns its step, None if fresh.

        `load_path` (a step-N folder) wins over `load_step` (a step of this run), which wins
        over `resume`: "auto" takes the newest complete checkpoint, skipping incomplete or
        corrupt ones with a warning; "none" starts fresh. An explicit checkpoint that is
        missing, incomplete or unreadable raises ValueError; so does a model shape mismatch.
        """
        self._finish_pending()
        if resume not in _RESUME_MODES:
            raise ValueError(f"checkpoint.resume={resume!r}: expected one of {_RESUME_MODES}")
        if load_path:
            step = self._resumer.load_explicit(Path(load_path), "checkpoint.load_path")
        elif load_step >= 0:
            path = layout.step_dir(self.ckpt_dir, load_step)
            step = self._resumer.load_explicit(path, f"checkpoint.load_step={load_step}")
        elif resume == "none":
            return None
        elif not self.enabled:
            logger.info("checkpointing disabled: not resuming from %s", self.ckpt_dir)
            return None
        else:
            step = self._resumer.load_auto()
        if step is not None:
            folder = Path(load_path) if load_path else layout.step_dir(self.ckpt_dir, step)
            self.loaded_path = folder
            self._after_load(step)
        return step

    def _after_load(self, step: int) -> None:
        complete = self.list_complete()
        if self.best_step is not None and self.best_step not in dict(complete):
            logger.warning(
                "best.json names step %d, which is not a complete checkpoint: forgetting it",
                self.best_step,
            )
            self.best_step, self.best_val_loss = None, None
        newer = [f"step-{s}" for s, _ in complete if s > step]
        if newer:
            logger.warning(
                "loaded step %s while newer checkpoints exist (%s): auto-resume and retention "
                "order by step, so move them away if this run replaces them",
                step,
                ", ".join(newer),
            )


def _writer_factory() -> Callable[[str], StorageWriter]:
    """FileSystemWriter, or the factory that $TORCHGPT_CHECKPOINT_WRITER names (module:attr)."""
    spec = os.environ.get(WRITER_ENV, "")
    if not spec:
        return FileSystemWriter
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(
            f"{WRITER_ENV}={spec!r} does not name an importable factory ({e}); set it to "
            "'package.module:callable' taking the checkpoint folder, or unset it"
        ) from e
    logger.info("checkpoint storage writer: %s (from %s)", spec, WRITER_ENV)
    return factory


def _validate_args(states: dict, interval: int, keep_latest_k: int, async_mode: str) -> None:
    if interval < 1:
        raise ValueError(f"checkpoint.interval={interval}: must be >= 1 (steps between saves)")
    if keep_latest_k < 0:
        raise ValueError(f"checkpoint.keep_latest_k={keep_latest_k}: must be >= 0 (0 keeps all)")
    if async_mode not in _ASYNC_MODES:
        raise ValueError(f"checkpoint.async_mode={async_mode!r}: expected one of {_ASYNC_MODES}")
    for name, state in states.items():
        if not (hasattr(state, "state_dict") and hasattr(state, "load_state_dict")):
            raise ValueError(
                f"checkpoint state {name!r} ({type(state).__name__}) has no state_dict/"
                "load_state_dict: wrap it in a Stateful"
            )
