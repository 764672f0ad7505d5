"""Build a run's report (BENCHMARK.md, LOSS_CURVE.png, SAMPLES.md, MODEL_CARD.md) from its files.

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
from torchgpt.provenance import RUN_INFO_NAME

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


BEGIN_MARK = "<!-- tools/report.py: begin -->"
END_MARK = "<!-- tools/report.py: end -->"


def _write_benchmark(path: Path, text: str) -> None:
    """Write BENCHMARK.md; if it exists with report markers, replace only what lies between them.

    The top-level BENCHMARK.md also holds hand-run benchmark figures (bench/*.py); regenerating
    the eval tables must not erase them.
    """
    if path.exists():
        old = path.read_text(encoding="utf-8")
        if BEGIN_MARK in old and END_MARK in old:
            head, rest = old.split(BEGIN_MARK, 1)
            tail = rest.split(END_MARK, 1)[1]
            text = f"{head}{BEGIN_MARK}\n{text.rstrip()}\n{END_MARK}{tail}"
    path.write_text(text, encoding="utf-8")


def build_report(
    run_dir: str | Path, out_dir: str | Path | None = None, eval_dir: str | Path | None = None
) -> dict[str, Path]:
    """Write the four report files and return their paths by name.

    Args:
        run_dir: the training run directory.
        out_dir: where to write; default RUN_DIR/report.
        eval_dir: where the step-N.json results are; default RUN_DIR/eval.
    """
    from torchgpt.eval.plot import plot_loss_curve
    from torchgpt.eval.report_md import render_benchmark, render_model_card, render_samples

    data = load_report_data(run_dir, eval_dir)
    out = Path(out_dir) if out_dir else data.run_dir / REPORT_DIR_NAME
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in REPORT_FILES}
    _write_benchmark(paths["BENCHMARK.md"], render_benchmark(data))
    plot_loss_curve(data, paths["LOSS_CURVE.png"])
    paths["SAMPLES.md"].write_text(render_samples(data), encoding="utf-8")
    paths["MODEL_CARD.md"].write_text(render_model_card(data), encoding="utf-8")
    if not data.records:
        logger.warning("no eval results in %s/eval: the tables are empty", data.run_dir)
    return paths
