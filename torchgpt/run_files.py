"""The run directory's own files: train.log, config.json, run_info.json, last_exit.json.

Nothing is written until a launch is accepted (`accept`): until then rank 0's log records wait
in memory, so a refused launch (a bad checkpoint, another model) leaves the folder exactly as
it was. A failure appends its traceback to train.log from any rank (`record_failure`).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import time
from pathlib import Path
from typing import Any

from torchgpt.checkpoint.layout import write_json_atomic
from torchgpt.config import JobConfig
from torchgpt.config_manager import dump_config
from torchgpt.provenance import record_launch

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_NAME, CONFIG_NAME = "train.log", "config.json"
# How the last launch ended when it ended well ("finished", or "preempted" after its checkpoint),
# with the launch id and the time: a launcher stopped by a signal reads it to exit 0 when the
# workers finished their job (README's exit codes).
EXIT_RECORD_NAME = "last_exit.json"
LAUNCH_ID_ENV = "TORCHGPT_LAUNCH_ID"

_PACKAGE_LOGGER = logging.getLogger("torchgpt")


class RunFiles:
    """Rank 0's files in RUN_DIR; other ranks only ever append a failure to train.log."""

    def __init__(self, run_dir: Path, rank: int) -> None:
        self.run_dir, self.rank = run_dir, rank
        self._log_file: logging.Handler | None = None
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
        dump_config(cfg, self.run_dir / CONFIG_NAME)
        self._log_file = logging.FileHandler(self.run_dir / LOG_NAME, encoding="utf-8")
        self._log_file.setFormatter(logging.Formatter(LOG_FORMAT))
        self._drop_buffer(into=self._log_file)
        _PACKAGE_LOGGER.addHandler(self._log_file)
        record_launch(self.run_dir, **launch)

    def record_exit(self, status: str, step: int, checkpoint: Path | None) -> None:
        """last_exit.json: this launch ended well ("finished" or "preempted" after a save)."""
        if self.rank == 0:
            write_json_atomic(
                self.run_dir / EXIT_RECORD_NAME,
                {
                    "status": status,
                    "launch_id": os.environ.get(LAUNCH_ID_ENV, ""),
                    "written_at": time.time(),
                    "step": step,
                    "checkpoint": str(checkpoint) if checkpoint else None,
                },
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
