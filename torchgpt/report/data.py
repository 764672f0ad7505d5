"""The report's data: everything a run's report shows, read from the run's own files.

Inputs are RUN_DIR/eval/step-N.json (tools/eval.py), RUN_DIR/metrics.jsonl and RUN_DIR/config.json
(the trainer); nothing is recomputed, so every number in the report is one of theirs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchgpt.eval.loading import CONFIG_NAME, read_metrics
from torchgpt.eval.results import EVAL_DIR_NAME, read_eval_records
from torchgpt.utils.provenance import RUN_INFO_NAME

logger = logging.getLogger(__name__)

REPORT_DIR_NAME = "report"
REPORT_FILES = ("BENCHMARK.md", "LOSS_CURVE.png", "SAMPLES.md", "MODEL_CARD.md")
TASK_LABELS = {"hellaswag": "HellaSwag", "arc_easy": "ARC-Easy", "piqa": "PIQA"}
# The benchmark table's score columns: (task, metric).
SCORE_COLUMNS = (
    ("hellaswag", "acc_norm"),
    ("arc_easy", "acc"),
    ("arc_easy", "acc_norm"),
    ("piqa", "acc_norm"),
)


@dataclass
class ReportData:
    """Everything a report is made from, as read from the run directory."""

    run_dir: Path
    records: list[dict[str, Any]]
    """Eval results, ascending step."""
    metrics: list[dict[str, Any]]
    """metrics.jsonl records in file order."""
    config: dict[str, Any]
    """config.json, else the config stored with the newest eval result."""
    manifest: dict[str, Any] | None = None
    """manifest.json of the training data when it can be read."""
    run_info: dict[str, Any] | None = None
    """run_info.json: one entry per training launch (command, machine, versions)."""

    @property
    def train_points(self) -> list[dict[str, Any]]:
        return [r for r in self.metrics if isinstance(r.get("loss"), (int, float))]

    @property
    def val_points(self) -> list[dict[str, Any]]:
        return [r for r in self.metrics if isinstance(r.get("val_loss"), (int, float))]

    @property
    def name(self) -> str:
        return (self.config.get("job") or {}).get("name") or self.run_dir.name

    @property
    def launches(self) -> list[dict[str, Any]]:
        """Training launches from run_info.json, oldest first (empty for older runs)."""
        launches = (self.run_info or {}).get("launches")
        return [x for x in launches if isinstance(x, dict)] if isinstance(launches, list) else []

    @property
    def final(self) -> dict[str, Any] | None:
        """The newest eval result (the checkpoint the model card describes)."""
        return self.records[-1] if self.records else None


def logged_step_seconds(train_points: list[dict[str, Any]]) -> float:
    """Time in training steps: each log's mean step time x the steps since the previous log."""
    seconds, prev = 0.0, 0
    for r in train_points:
        if isinstance(r.get("step_time_s"), (int, float)):
            seconds += r["step_time_s"] * (r["step"] - prev)
        prev = r["step"]
    return seconds


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def load_report_data(run_dir: str | Path, eval_dir: str | Path | None = None) -> ReportData:
    """Read the eval JSONs, metrics.jsonl, config.json and the data manifest of a run.

    Raises:
        ValueError: the folder has neither eval results nor metrics (says what to run).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist")
    records = read_eval_records(Path(eval_dir) if eval_dir else run_dir / EVAL_DIR_NAME)
    metrics = read_metrics(run_dir)
    if not records and not metrics:
        raise ValueError(
            f"{run_dir} has no eval/step-N.json and no metrics.jsonl: train with torchgpt.train "
            f"and run `python tools/eval.py {run_dir} --all ...` first"
        )
    config = _read_json(run_dir / CONFIG_NAME) or (records[-1].get("config") if records else {})
    manifest = None
    dataset = (config.get("data") or {}).get("dataset_path")
    if dataset:
        manifest = _read_json(Path(dataset) / "manifest.json")
    run_info = _read_json(run_dir / RUN_INFO_NAME)
    return ReportData(run_dir, records, metrics, config or {}, manifest, run_info)
