"""The NCCL flight recorder (`profiling.flight_recorder`): a per-rank ring buffer of the last
collectives (op, sizes, sequence number, state, Python stack), dumped to a file per rank when a
collective times out, so a hang shows which rank stopped where.

It is switched on by environment variables that ProcessGroupNCCL reads when it starts, so
`enable_flight_recorder` runs before `init_process_group` (torchgpt/train.py). Both the
current names (TORCH_FR_*) and the older ones (TORCH_NCCL_*, read by torch 2.11) are set.
Gloo has no flight recorder: on CPU the variables are set and ignored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger("torchgpt")


def flight_recorder_env(folder: Path, entries: int) -> dict[str, str]:
    """The variables that make every rank keep `entries` collectives and dump them (on a
    timeout) to folder/rank_{R}."""
    prefix = str(folder / "rank_")
    return {
        "TORCH_FR_BUFFER_SIZE": str(entries),
        "TORCH_NCCL_TRACE_BUFFER_SIZE": str(entries),
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "TORCH_FR_DUMP_TEMP_FILE": prefix,
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": prefix,
    }


def enable_flight_recorder(run_dir: Path, entries: int, *, nccl: bool) -> dict[str, str]:
    """Set the flight recorder's variables in this process (before the process group starts)
    and create RUN_DIR/flight_recorder; returns what was set. A variable the user already set
    is kept (and named)."""
    folder = Path(run_dir) / "flight_recorder"
    if nccl:  # NCCL writes the files but not their folder; a gloo run writes nothing there
        folder.mkdir(parents=True, exist_ok=True)
    applied = {}
    for name, value in flight_recorder_env(folder, entries).items():
        if name in os.environ and os.environ[name] != value:
            logger.info(
                "flight recorder: keeping %s=%s from the environment", name, os.environ[name]
            )
            continue
        os.environ[name] = applied[name] = value
    logger.info(
        "flight recorder: the last %d collectives of each rank, dumped to %s on a collective "
        "timeout%s",
        entries,
        folder,
        "" if nccl else " (NCCL only: this gloo run records nothing)",
    )
    return applied
