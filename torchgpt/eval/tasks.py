"""lm-evaluation-harness tasks on local files: include-based YAMLs and a TaskManager over them.

With no hub access the harness's stock HellaSwag, ARC-Easy and PIQA are pointed at JSON-lines
files in the hub schema (../shared/data/eval). Each generated YAML `include`s the stock one and
only swaps where the data comes from, so prompting and scoring (acc, acc_norm) stay the
harness's own; the local task keeps the stock name.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TASKS = ("hellaswag", "arc_easy", "piqa")


@dataclass(frozen=True)
class LocalTask:
    """Where a stock task's YAML lives in lm_eval/tasks and which local files replace its data."""

    stock_yaml: str
    """Path of the stock YAML relative to the lm_eval/tasks folder."""
    eval_split: str
    """The split the harness scores (the stock task's test split if it has one)."""
    files: tuple[tuple[str, str], ...]
    """(split, file relative to --data-dir); the eval split's file is required, others optional."""


LOCAL_TASKS: dict[str, LocalTask] = {
    "hellaswag": LocalTask(
        "hellaswag/hellaswag.yaml", "validation", (("validation", "hellaswag/validation.jsonl"),)
    ),
    # lm-eval reports ARC-Easy on test (the stock YAML has test_split: test).
    "arc_easy": LocalTask(
        "arc/arc_easy.yaml",
        "test",
        (("test", "arc_easy/test.jsonl"), ("validation", "arc_easy/validation.jsonl")),
    ),
    "piqa": LocalTask("piqa/piqa.yaml", "validation", (("validation", "piqa/validation.jsonl"),)),
}


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _missing_data_error(task: str, path: Path, data_dir: Path) -> ValueError:
    expected = ", ".join(f for _, f in LOCAL_TASKS[task].files)
    return ValueError(
        f"task data for {task!r} not found: {path} does not exist. --data-dir {data_dir} must "
        f"hold {expected} (JSON lines in the Hugging Face hub schema); the shared copies are in "
        f"../shared/data/eval (see its README.md). Without --data-dir the harness downloads the "
        f"data from the hub, which needs network access"
    )


def local_task_config(task: str, data_dir: str | os.PathLike) -> dict[str, Any]:
    """The YAML content of the local variant of stock `task` reading from `data_dir`.

    Raises:
        ValueError: the eval split's file is missing (message says how to get it).
    """
    spec = LOCAL_TASKS[task]
    data_dir = Path(data_dir).resolve()
    data_files = {}
    for split, rel in spec.files:
        path = data_dir / rel
        if path.is_file():
            data_files[split] = str(path)
        elif split == spec.eval_split:
            raise _missing_data_error(task, path, data_dir)
    config: dict[str, Any] = {
        "task": task,
        "include": str(_lm_eval_tasks_dir() / spec.stock_yaml),
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files},
        # The stock task names a train split the local files lack; 0-shot never reads it.
        "training_split": None,
    }
    if "validation" not in data_files:
        config["validation_split"] = None
    return config


def write_local_tasks(tasks: list[str], data_dir: str | os.PathLike, out_dir: Path) -> list[str]:
    """Write one include-based YAML per task of `tasks` that has local data; return their names."""
    import yaml

    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        if task not in LOCAL_TASKS:
            continue
        config = local_task_config(task, data_dir)
        (out_dir / f"{task}_local.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        written.append(task)
    return written


def _unknown_task_error(unknown: list[str], known: list[str]) -> ValueError:
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=3)
        hints.append(f"{name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return ValueError(
        f"unknown lm-eval task(s): {'; '.join(hints)}. List the names with `lm_eval ls tasks`; "
        f"local data is available for {', '.join(LOCAL_TASKS)}"
    )


def build_task_manager(
    tasks: list[str],
    data_dir: str | os.PathLike | None,
    yaml_dir: Path,
    include_paths: list[str] | tuple[str, ...] = (),
):
    """A TaskManager that knows `tasks`: local data for the ones `data_dir` provides, the
    user's task YAMLs under `include_paths` (as lm-eval's --include_path), then the harness's
    own tasks.

    The harness's own index of ~15k tasks takes ~20 s to build on these CPUs, so it is only
    included when a task is neither local nor in an include path.

    Args:
        tasks: harness task (or group) names (e.g. ["hellaswag", "arc_easy", "piqa"]).
        data_dir: folder of local files in the hub schema, or None to use the hub.
        yaml_dir: a folder for the generated YAMLs; it must outlive the evaluation.
        include_paths: folders of task YAMLs (searched recursively).

    Raises:
        ValueError: a task name nobody knows, missing local data, a missing include path.
    """
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise ValueError("no tasks given; e.g. --tasks hellaswag,arc_easy,piqa")
    for folder in include_paths:
        if not Path(folder).is_dir():
            raise ValueError(f"--include-path {folder}: not a folder of task YAML files")
    local = write_local_tasks(tasks, data_dir, yaml_dir) if data_dir else []
    include = ([str(yaml_dir)] if local else []) + [str(Path(f).resolve()) for f in include_paths]
    manager = None
    if include:
        manager = TaskManager(include_path=include, include_defaults=False)
    if manager is None or any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=include or None, include_defaults=True)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise _unknown_task_error(unknown, manager.all_tasks)
    return manager


def load_tasks(manager, tasks: list[str], data_dir: str | os.PathLike | None) -> dict:
    """Load (download or read) the data of `tasks`; turn data errors into a clear ValueError."""
    try:
        return manager.load(tasks)
    except (ConnectionError, OSError, RuntimeError, ValueError) as err:
        where = f"--data-dir {data_dir}" if data_dir else "the Hugging Face hub"
        raise ValueError(
            f"could not load the data of tasks {tasks} from {where} ({type(err).__name__}: "
            f"{err}). Offline, pass --data-dir ../shared/data/eval (local data exists for "
            f"{', '.join(LOCAL_TASKS)}); other tasks need hub access or a warm HF datasets cache"
        ) from err
