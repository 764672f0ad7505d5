"""CUDA memory snapshots (`profiling.memory_snapshot`): the caching allocator's history of the
first steps, and of the moments before an out-of-memory error.

Recording starts before the model is built (torchgpt/train.py), so the snapshot holds every
allocation of setup and of the first `memory_snapshot_steps` steps with its Python stack; it is
dumped to RUN_DIR/memory_snapshot/rank{R}.step{N}.pickle and recording stops. An
out-of-memory error anywhere in the run dumps rank{R}.oom.pickle before the process exits.
pytorch.org/memory_viz opens both. On CPU the switch is a no-op, said once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("torchgpt")

VIEWER = "https://pytorch.org/memory_viz"


class MemorySnapshot:
    """Record, dump and stop; every call is a no-op when off or not on CUDA.

    Args:
        cfg: The [profiling] section (memory_snapshot, memory_snapshot_steps, _entries).
        run_dir: Snapshots go to run_dir/memory_snapshot/.
        rank: This process's rank (one file per rank).
        device: Where the run computes.
    """

    def __init__(self, cfg: Any, run_dir: Path, rank: int, device: torch.device) -> None:
        self.folder = Path(run_dir) / "memory_snapshot"
        self.rank, self.steps = rank, cfg.memory_snapshot_steps
        self.recording = False
        self.dumped: list[Path] = []
        if not cfg.memory_snapshot:
            return
        if device.type != "cuda":
            logger.info(
                "profiling.memory_snapshot: the CUDA caching allocator's history; on %s there "
                "is none to record (no-op). For CPU memory see the step records' mem and "
                "tools/memory_estimate.py",
                device.type,
            )
            return
        torch.cuda.memory._record_memory_history(
            enabled="all", max_entries=cfg.memory_snapshot_entries
        )
        self.recording = True
        logger.info("memory snapshot: recording the allocator's history for %d steps", self.steps)

    def step(self, step: int) -> None:
        """After optimizer step `step`: dump and stop once `memory_snapshot_steps` are done."""
        if self.recording and step >= self.steps:
            self.dump(f"step{step}")
            self.stop()

    def on_out_of_memory(self) -> Path | None:
        """Dump what was recorded (called on an OOM error, before the process exits)."""
        if not self.recording:
            return None
        path = self.dump("oom")
        self.stop()
        return path

    def dump(self, tag: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"rank{self.rank}.{tag}.pickle"
        tmp = path.with_suffix(".pickle.tmp")
        torch.cuda.memory._dump_snapshot(str(tmp))
        os.replace(tmp, path)  # never a half-written snapshot under the final name
        self.dumped.append(path)
        logger.info("memory snapshot: %s (open it at %s)", path, VIEWER)
        return path

    def stop(self) -> None:
        if self.recording:
            torch.cuda.memory._record_memory_history(enabled=None)
            self.recording = False


def out_of_memory_hint(error: BaseException, snapshot: Path | None, config_hint: str) -> str:
    """One line after an out-of-memory error: what to change, and the snapshot if one exists."""
    fix = (
        "lower training.micro_batch_size or set activation_checkpoint.mode = selective or full "
        f'("auto" for either sizes them to the device); {config_hint} estimates them'
    )
    where = (
        f"memory snapshot {snapshot} (open at {VIEWER})"
        if snapshot
        else "profiling.memory_snapshot = true records where the memory went"
    )
    return f"hint: out of memory ({type(error).__name__}): {fix}; {where}"
