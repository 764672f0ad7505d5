"""The run directory's own files: train.log, config.json, run_info.json, last_exit.json.

Nothing is written until a launch is accepted (`accept`): until then rank 0's log records wait
in memory, so a refused launch (a bad checkpoint, another model) leaves the folder exactly as
it was. A failure appends its traceback to train.log from any rank (`record_failure`).
last_exit.json says how the last accepted launch ended (`write_exit_record`): by rank 0, or by
the launcher when a signal's stop did not get that far (the workers killed after torchrun's
grace); `next_launch` says in words what the same command does next.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from torchgpt.checkpoint.layout import write_json_atomic
from torchgpt.config.job_config import JobConfig
from torchgpt.config.manager import dump_config
from torchgpt.utils.provenance import RUN_INFO_NAME, record_launch

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_NAME, CONFIG_NAME = "train.log", "config.json"
# How the last accepted launch ended, with its launch id and the time. status: "finished";
# "preempted" (stopped by a signal with nothing lost: the step reached is in a checkpoint, or no
# step had run yet); "stopped" (stopped by a signal before the step reached was saved: the next
# launch re-runs the steps after `checkpoint`); "stopping" (a signal arrived and the stop was
# under way: what a killed stop leaves; the launcher then replaces it). The launcher reads it for
# its summary and exit code (README's exit codes: 0 for finished / preempted).
EXIT_RECORD_NAME = "last_exit.json"
LAUNCH_ID_ENV = "TORCHGPT_LAUNCH_ID"
EXIT_STATUSES = ("finished", "preempted", "stopped", "stopping")


def write_exit_record(
    run_dir: Path,
    status: str,
    *,
    step: int,
    checkpoint: Path | None,
    signal: str | None = None,
    during: str | None = None,
    written_by: str = "rank 0",
) -> dict[str, Any]:
    """Write last_exit.json (atomically) and return what was written.

    Args:
        status: one of EXIT_STATUSES.
        step: the optimizer steps done when the launch ended.
        checkpoint: the checkpoint the next launch resumes from (resume=auto): the one this
            launch saved last, else the newest complete one; None when there is none.
        signal: the signal that stopped it ("SIGTERM"); None when none did (or another rank's).
        during: what the run was doing when the signal arrived ("step 27 (forward/backward)").
        written_by: "rank 0" or "launcher".
    """
    assert status in EXIT_STATUSES, status
    from torchgpt.checkpoint.layout import step_of

    record = {
        "status": status,
        "launch_id": os.environ.get(LAUNCH_ID_ENV, ""),
        "written_at": time.time(),
        "written_by": written_by,
        "step": step,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_step": step_of(checkpoint) if checkpoint else None,
        "signal": signal,
        "during": during,
    }
    write_json_atomic(Path(run_dir) / EXIT_RECORD_NAME, record)
    return record


def read_exit_record(run_dir: Path, started: float) -> dict | None:
    """The last_exit.json of the launch started at `started` (time.time()): its launch id, or
    (another node's launcher, with its own id) written after that time; None otherwise."""
    try:
        record = json.loads((Path(run_dir) / EXIT_RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    ours = record.get("launch_id") == os.environ.get(LAUNCH_ID_ENV)
    recent = isinstance(record.get("written_at"), (int, float)) and record["written_at"] >= started
    return record if ours or recent else None


def launch_accepted(run_dir: Path, started: float) -> bool:
    """Whether the launch started at `started` was accepted (run_info.json lists it)."""
    try:
        launches = json.loads((Path(run_dir) / RUN_INFO_NAME).read_text()).get("launches") or []
        last = launches[-1]
        begun = datetime.fromisoformat(last["started_at"]).timestamp()
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return False
    # started_at has whole seconds; another node's launcher has its own launch id.
    return last.get("launch_id") == os.environ.get(LAUNCH_ID_ENV) or begun >= int(started)


def last_logged_step(run_dir: Path) -> int | None:
    """The step of the last training record in metrics.jsonl (None when there is none)."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a killed run can leave a torn last line
        if isinstance(record, dict) and "loss" in record and isinstance(record.get("step"), int):
            return record["step"]
    return None


def finish_stop_record(
    cfg: JobConfig, started: float, signal: str, note: dict | None
) -> tuple[dict | None, str]:
    """The launcher's part of a stop whose workers left no final record (killed after
    torchrun's grace, or before their handlers were in place): remove their lock and write
    last_exit.json from the "stopping" `note` (if any) and the newest complete checkpoint.

    Returns (the record, "") or (None, why none was written): the folder is another job's
    (a live lock), or this launch was never accepted (nothing was written; the folder stays
    as it was, as for a refused launch).
    """
    from torchgpt.checkpoint.layout import newest_complete
    from torchgpt.run.lock import lock_state, remove_abandoned

    run_dir = cfg.run_dir
    remove_abandoned(run_dir)
    state, holder = lock_state(run_dir)
    newest = newest_complete(run_dir / "checkpoints")
    if state != "free":
        who = f"host {(holder or {}).get('host')}, pid {(holder or {}).get('pid')}"
        return None, f"while {run_dir} is locked by {who}, which reports the outcome"
    if note is None and not launch_accepted(run_dir, started):
        return None, (
            f"before the launch was accepted: nothing was written to {run_dir}; "
            + next_launch(cfg, newest)
        )
    saved = newest[0] if newest else 0
    step = note["step"] if note else max(last_logged_step(run_dir) or 0, saved)
    record = write_exit_record(
        run_dir,
        "preempted" if step <= saved else "stopped",
        step=step,
        checkpoint=newest[1] if newest else None,
        signal=signal,
        during=(note or {}).get("during"),
        written_by="launcher",
    )
    return record, ""


def next_launch(cfg: JobConfig, newest: tuple[int, Path] | None) -> str:
    """What the same command does next, given the newest complete checkpoint (step, folder)."""
    c = cfg.checkpoint
    at = f"step {newest[0]} ({newest[1]})" if newest else None
    if not c.enable:
        return "checkpointing is off (checkpoint.enable = false): the same command starts again"
    if c.load_path:
        return f"the same command loads {c.load_path} again (checkpoint.load_path)" + (
            f"; without that option it resumes from {at}" if at else ""
        )
    if c.load_step >= 0:
        return f"the same command loads step {c.load_step} again (checkpoint.load_step)" + (
            f"; with --checkpoint.load_step -1 it resumes from {at}" if at else ""
        )
    if at is None:
        return "no checkpoint exists: the same command starts from step 0"
    if c.resume == "none":
        return (
            f"the same command starts again from step 0 (checkpoint.resume = none); without "
            f"that option it resumes from {at}"
        )
    return f"the same command resumes from {at}"


_PACKAGE_LOGGER = logging.getLogger("torchgpt")


class RunFiles:
    """Rank 0's files in RUN_DIR; other ranks only ever append a failure to train.log."""

    def __init__(self, run_dir: Path, rank: int) -> None:
        self.run_dir, self.rank = run_dir, rank
        self._log_file: logging.Handler | None = None
        self._accepted = False
        self._buffer: logging.handlers.MemoryHandler | None = None
        if rank == 0:
            self._buffer = logging.handlers.MemoryHandler(
                capacity=100_000, flushLevel=logging.CRITICAL + 1
            )
            _PACKAGE_LOGGER.addHandler(self._buffer)

    def accept(self, cfg: JobConfig, **launch: Any) -> None:
        """The launch is accepted: write config.json, open train.log with the buffered records,
        and add this launch (command, machine, versions, `launch` facts) to run_info.json."""
        if self.rank != 0:
            return
        self._accepted = True
        dump_config(cfg, self.run_dir / CONFIG_NAME)
        self._log_file = logging.FileHandler(self.run_dir / LOG_NAME, encoding="utf-8")
        self._log_file.setFormatter(logging.Formatter(LOG_FORMAT))
        self._drop_buffer(into=self._log_file)
        _PACKAGE_LOGGER.addHandler(self._log_file)
        # The launch id tells the launcher whether this launch got as far as acceptance.
        record_launch(self.run_dir, launch_id=os.environ.get(LAUNCH_ID_ENV, ""), **launch)

    @property
    def accepted(self) -> bool:
        """The launch was accepted: rank 0 may write the run folder's files."""
        return self._accepted

    def record_exit(
        self,
        status: str,
        step: int,
        checkpoint: Path | None,
        *,
        signal: str | None = None,
        during: str | None = None,
    ) -> None:
        """last_exit.json on rank 0 of an accepted launch (see write_exit_record)."""
        if self.rank == 0 and self.accepted:
            write_exit_record(
                self.run_dir, status, step=step, checkpoint=checkpoint, signal=signal, during=during
            )

    def record_failure(self, where: str, traceback_text: str) -> Path | None:
        """Append a failure's traceback to train.log (any rank); returns the log's path, or
        None when it cannot be written."""
        path = self.run_dir / LOG_NAME
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"rank {self.rank} failed at {where}:\n{traceback_text}")
        except OSError:
            return None
        return path

    def close(self) -> None:
        self._drop_buffer(into=None)
        if self._log_file is not None:
            _PACKAGE_LOGGER.removeHandler(self._log_file)
            self._log_file.close()
            self._log_file = None

    def _drop_buffer(self, into: logging.Handler | None) -> None:
        """Hand the records logged before acceptance to `into` (None drops them)."""
        if self._buffer is None:
            return
        _PACKAGE_LOGGER.removeHandler(self._buffer)
        if into is not None:
            self._buffer.setTarget(into)
            self._buffer.flush()
        self._buffer.close()
        self._buffer = None
