"""Formatting of the report: the only place numbers become text (tables, cells, labels).

Every figure is formatted from the run's JSON records, so tests can look for exactly these
strings; the documents (documents.py, model_card.py) are assembled from these pieces.
"""

from __future__ import annotations

import json
from typing import Any

from torchgpt.eval.references import CHANCE, REFERENCES, Reference
from torchgpt.report.data import SCORE_COLUMNS, TASK_LABELS, ReportData

MAX_SAMPLE_CHECKPOINTS = 6


def fmt_float(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def fmt_score(scores: dict[str, Any] | None, metric: str) -> str:
    """ "0.2650 (0.0044)": the value and its standard error, or "-" when not evaluated."""
    if not scores or scores.get(metric) is None:
        return "-"
    stderr = scores.get(f"{metric}_stderr")
    return fmt_float(scores[metric]) + (f" ({stderr:.4f})" if stderr is not None else "")


def one_line(text: str) -> str:
    """Newlines and tabs shown as \\n and \\t: one line per sample, degenerate output visible."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def column_title(task: str, metric: str) -> str:
    return f"{TASK_LABELS.get(task, task)} {metric}"


def checkpoint_label(record: dict[str, Any]) -> str:
    return f"step-{record['step']}"


def score_columns(data: ReportData) -> list[tuple[str, str]]:
    """The standard (task, metric) columns, then every other task's acc / acc_norm that some
    result holds (any harness task or a user's own, tools/eval.py --include-path)."""
    standard = {t for t, _ in SCORE_COLUMNS}
    extra = sorted(
        {
            (task, metric)
            for r in data.records
            for task, scores in (r.get("tasks") or {}).items()
            for metric in ("acc", "acc_norm")
            if task not in standard and scores.get(metric) is not None
        }
    )
    return [*SCORE_COLUMNS, *extra]


def benchmark_rows(data: ReportData) -> list[str]:
    """The table of this run's checkpoints (header, separator, one row per eval result)."""
    columns = score_columns(data)
    header = ["checkpoint", "tokens seen", "val_loss", "perplexity"]
    header += [column_title(t, m) for t, m in columns]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in data.records:
        tasks = r.get("tasks") or {}
        cells = [
            checkpoint_label(r),
            fmt_int(r.get("tokens_seen")),
            fmt_float(r.get("val_loss")),
            fmt_float(r.get("val_ppl"), 2),
        ]
        cells += [fmt_score(tasks.get(t), m) for t, m in columns]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _reference_cell(ref: Reference, task: str, metric: str) -> str:
    key = f"{task}/{metric}"
    if key not in ref.scores:
        return "-"
    return ("~" if key in ref.approximate else "") + f"{ref.scores[key]:.4f}"


def reference_rows() -> list[str]:
    header = ["model", "params", "tokens"] + [column_title(t, m) for t, m in SCORE_COLUMNS]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for ref in (CHANCE, *REFERENCES):
        cells = [ref.name, ref.params, ref.tokens]
        cells += [_reference_cell(ref, t, m) for t, m in SCORE_COLUMNS]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def items_note(data: ReportData) -> list[str]:
    lines = []
    for r in data.records:
        tasks = r.get("tasks") or {}
        if not tasks:
            continue
        counts = ", ".join(f"{t} {fmt_int(s.get('num_samples'))}" for t, s in tasks.items())
        limit = r.get("limit")
        where = r.get("task_data_dir") or "the Hugging Face hub"
        lines.append(
            f"- {checkpoint_label(r)}: items scored {counts}"
            + (f" (--limit {limit}: the first {limit} of each set)" if limit else " (full sets)")
            + f"; data from `{where}`"
        )
    return lines


def unique(values: list[Any]) -> list[Any]:
    seen, out = set(), []
    for v in values:
        key = json.dumps(v, sort_keys=True, default=str)
        if v and key not in seen:
            seen.add(key)
            out.append(v)
    return out


def run_file_links(data: ReportData) -> list[str]:
    """The training run's own files that exist (config, metrics, log, launch record)."""
    names = ("config.json", "metrics.jsonl", "train.log", "run_info.json")
    return [f"`{data.run_dir / n}`" for n in names if (data.run_dir / n).exists()]


def provenance_lines(data: ReportData) -> list[str]:
    lines = ["## How these numbers were produced", ""]
    lines += ["Commands (each evaluation JSON records the command that wrote it):", "", "```sh"]
    lines += unique([r.get("command") for r in data.records]) or ["(no eval results)"]
    lines += [f"python tools/report.py {data.run_dir}", "```", ""]
    run_files = run_file_links(data)
    if run_files:
        lines += ["Training run files: " + ", ".join(run_files) + ".", ""]
    if data.launches:
        lines += ["Training launches (run_info.json):", "", "```sh"]
        lines += [f"# {x.get('started_at')}\n{x.get('command')}" for x in data.launches]
        lines += ["```", ""]
    final = data.final or {}
    for title, key in (("Versions", "versions"), ("Evaluation hardware", "hardware")):
        lines += [f"{title} (from {checkpoint_label(final) if final else '-'}.json):", ""]
        lines += [f"- {k}: {v}" for k, v in (final.get(key) or {}).items()] + [""]
    lines += ["Resolved training config (RUN_DIR/config.json):", "", "<details><summary>config"]
    lines += ["</summary>", "", "```json", json.dumps(data.config, indent=2), "```", "</details>"]
    return lines
