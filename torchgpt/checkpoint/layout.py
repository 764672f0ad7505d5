"""On-disk layout of RUN_DIR/checkpoints: folder names, completion markers, best.json, retention.

A checkpoint is written into `step-N.tmp/`, gets `checkpoint_info.json` and then a `COMPLETE`
marker, and only then is renamed to `step-N/`. A folder counts as a checkpoint only with the name,
the marker and DCP's `.metadata` in place. Everything here is plain file work done by one process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MARKER_NAME = "COMPLETE"
INFO_NAME = "checkpoint_info.json"
DCP_METADATA_NAME = ".metadata"
BEST_NAME = "best.json"
TMP_SUFFIX = ".tmp"
TRASH_PREFIX = ".trash-"
_STEP_DIR_RE = re.compile(r"^step-(\d+)$")
_TMP_DIR_RE = re.compile(r"^step-(\d+)\.tmp$")


def step_dir(ckpt_dir: Path, step: int) -> Path:
    """The final folder of the checkpoint of `step`."""
    return ckpt_dir / f"step-{step}"


def tmp_dir(ckpt_dir: Path, step: int) -> Path:
    """The folder a checkpoint is written into before it is complete."""
    return ckpt_dir / f"step-{step}{TMP_SUFFIX}"


def is_complete(path: Path) -> bool:
    """True when DCP finished writing (`.metadata`) and the completion marker is there."""
    return (path / MARKER_NAME).is_file() and (path / DCP_METADATA_NAME).is_file()


@dataclass
class Scan:
    """What a checkpoints folder holds: complete checkpoints (ascending step) and leftovers."""

    complete: list[tuple[int, Path]] = field(default_factory=list)
    incomplete: list[Path] = field(default_factory=list)


def scan(ckpt_dir: Path) -> Scan:
    """List complete checkpoints and incomplete folders (no marker, or an unfinished `.tmp`)."""
    result = Scan()
    if not ckpt_dir.is_dir():
        return result
    for entry in ckpt_dir.iterdir():
        if not entry.is_dir():
            continue
        match = _STEP_DIR_RE.match(entry.name)
        if match and is_complete(entry):
            result.complete.append((int(match.group(1)), entry))
        elif match or _TMP_DIR_RE.match(entry.name):
            result.incomplete.append(entry)
    result.complete.sort()
    result.incomplete.sort()
    return result


def newest_complete(ckpt_dir: Path) -> tuple[int, Path] | None:
    """(step, folder) of the newest complete checkpoint, the one resume=auto tries first; None
    when there is none. Not verified here: a resume checks its checksums before loading it."""
    complete = scan(ckpt_dir).complete
    return complete[-1] if complete else None


def step_of(path: Path) -> int | None:
    """The step a checkpoint folder holds: from its info file, else from its `step-N` name."""
    info = read_json(path / INFO_NAME)
    if info is not None and isinstance(info.get("step"), int):
        return info["step"]
    match = _STEP_DIR_RE.match(path.name)
    return int(match.group(1)) if match else None


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename or a new file) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to `path` through a temporary file and a rename, so readers never see half."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    # default=str: resolved configs may hold Paths or enums; a readable string is what we want.
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path) -> dict | None:
    """A JSON object from `path`, or None when it is missing or unreadable."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def saved_config(folder: Path | None) -> dict:
    """The job config a checkpoint folder was saved with (its info's extra.config); {} if none."""
    info = read_json(folder / INFO_NAME) if folder is not None else None
    return ((info or {}).get("extra") or {}).get("config") or {}


def read_best(ckpt_dir: Path) -> tuple[int | None, float | None]:
    """(step, val_loss) recorded in best.json, or (None, None)."""
    best = read_json(ckpt_dir / BEST_NAME)
    if best is None or not isinstance(best.get("step"), int):
        return None, None
    return best["step"], float(best["val_loss"])


def write_best(ckpt_dir: Path, step: int, val_loss: float) -> None:
    """Record the best checkpoint (lowest validation loss) in best.json."""
    write_json_atomic(ckpt_dir / BEST_NAME, {"step": step, "val_loss": val_loss})


def is_better(val_loss: float | None, best_val_loss: float | None) -> bool:
    """True when `val_loss` is finite and lower than the best so far (lower is better)."""
    if val_loss is None or not math.isfinite(val_loss):
        return False
    return best_val_loss is None or val_loss < best_val_loss


def steps_to_delete(
    steps: list[int], keep_latest_k: int, best_step: int | None, protect: int | None = None
) -> list[int]:
    """Steps retention removes: all but the best, `protect` and the newest others (0 keeps all).

    `protect` (the checkpoint just saved) counts toward `keep_latest_k` and is always kept, even
    when a rewound run saves a lower step than ones already on disk.
    """
    if keep_latest_k <= 0:
        return []
    others = sorted(s for s in steps if s != protect)
    num_others = keep_latest_k - (1 if protect in steps else 0)
    keep = set(others[-num_others:]) if num_others > 0 else set()
    keep |= {s for s in (best_step, protect) if s is not None}
    return [s for s in sorted(steps) if s not in keep]


def remove_dir(path: Path) -> None:
    """Delete a checkpoint folder; renamed first so a crash mid-delete leaves no `step-N`."""
    trash = path.with_name(TRASH_PREFIX + path.name)
    if trash.exists():
        shutil.rmtree(trash)
    path.rename(trash)
    shutil.rmtree(trash)


def remove_leftovers(ckpt_dir: Path) -> None:
    """Delete unfinished `.tmp` folders and half-deleted trash from an interrupted run."""
    if not ckpt_dir.is_dir():
        return
    for entry in ckpt_dir.iterdir():
        if entry.is_dir() and (
            _TMP_DIR_RE.match(entry.name) or entry.name.startswith(TRASH_PREFIX)
        ):
            logger.info("removing unfinished checkpoint folder %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def explicit_problem(path: Path, ckpt_dir: Path) -> str | None:
    """Why an explicitly requested checkpoint `path` cannot be loaded, with the fix; or None."""
    steps = [f"step-{s}" for s, _ in scan(ckpt_dir).complete]
    available = f"complete ones in {ckpt_dir}: {steps or 'none'}"
    if not path.exists():
        return f"{path} does not exist; point it at a checkpoint folder ({available})"
    if not path.is_dir():
        return (
            f"{path} is a file, not a DCP checkpoint folder (for a model-only export use "
            f"torchgpt.checkpoint.load_model_only; {available})"
        )
    if not (path / DCP_METADATA_NAME).is_file():
        if (path / "checkpoints").is_dir() or any(path.glob("step-*")):
            return f"{path} holds checkpoints; point it at one of its step-N folders"
        return f"{path} has no DCP .metadata: not a checkpoint, or its save was interrupted"
    if not (path / MARKER_NAME).is_file():
        return (
            f"{path} is incomplete (no {MARKER_NAME} marker: its save did not finish); "
            f"pick another checkpoint ({available}) or use resume=auto"
        )
    return None
