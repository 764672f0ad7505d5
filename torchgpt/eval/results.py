"""Per-checkpoint evaluation results on disk: RUN_DIR/eval/step-N.json, plus versions and hardware.

One JSON per checkpoint holds everything the report shows (step, tokens seen, val loss, task
scores, samples, limit, versions), so `tools/report.py` never recomputes a number.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from torchgpt.utils.provenance import git_commit, host_info

logger = logging.getLogger(__name__)

EVAL_DIR_NAME = "eval"
SCHEMA_VERSION = 1
_STEP_JSON_RE = re.compile(r"^step-(\d+)\.json$")


def eval_json_path(out_dir: str | Path, step: int | None, name: str | None = None) -> Path:
    """RUN_DIR/eval/step-N.json (or NAME.json for a checkpoint with no known step)."""
    if step is None and not name:
        raise ValueError("an eval result needs a step or a name")
    stem = f"step-{step}" if step is not None else name
    return Path(out_dir) / f"{stem}.json"


def environment_info() -> dict[str, Any]:
    """Library versions and the machine the evaluation ran on."""
    import torch

    versions: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("lm_eval", "transformers", "tiktoken", "torchgpt"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        versions[name] = getattr(module, "__version__", None)
    versions["git_commit"] = git_commit()
    return {"versions": versions, "hardware": host_info()}


def write_eval_json(path: Path, record: dict[str, Any]) -> Path:
    """Write one result atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_eval_records(eval_dir: str | Path) -> list[dict[str, Any]]:
    """Every step-N.json of `eval_dir`, ascending step.

    Raises:
        ValueError: a result file is not valid JSON or has no step (names the file).
    """
    eval_dir = Path(eval_dir)
    records = []
    if not eval_dir.is_dir():
        return records
    for path in eval_dir.iterdir():
        if not _STEP_JSON_RE.match(path.name):
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); re-run tools/eval.py on it") from e
        if not isinstance(record.get("step"), int):
            raise ValueError(f"{path} has no integer 'step'; re-run tools/eval.py on it")
        record["_path"] = str(path)
        records.append(record)
    return sorted(records, key=lambda r: r["step"])
