"""Markdown of the report: BENCHMARK.md and SAMPLES.md (MODEL_CARD.md is in model_card.py).

Every figure is formatted from the run's JSON records; the formatters below are the only place
numbers become text, so tests can look for exactly these strings.
"""

from __future__ import annotations

import json
from typing import Any

from torchgpt.eval.references import CHANCE, REFERENCES, Reference
from torchgpt.eval.report import SCORE_COLUMNS, TASK_LABELS, ReportData

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


def benchmark_rows(data: ReportData) -> list[str]:
    """The table of this run's checkpoints (header, separator, one row per eval result)."""
    header = ["checkpoint", "tokens seen", "val_loss", "perplexity"]
    header += [column_title(t, m) for t, m in SCORE_COLUMNS]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in data.records:
        tasks = r.get("tasks") or {}
        cells = [
            checkpoint_label(r),
            fmt_int(r.get("tokens_seen")),
            fmt_float(r.get("val_loss")),
            fmt_float(r.get("val_ppl"), 2),
        ]
        cells += [fmt_score(tasks.get(t), m) for t, m in SCORE_COLUMNS]
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


def _items_note(data: ReportData) -> list[str]:
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


def _unique(values: list[Any]) -> list[Any]:
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


def _provenance(data: ReportData) -> list[str]:
    lines = ["## How these numbers were produced", ""]
    lines += ["Commands (each evaluation JSON records the command that wrote it):", "", "```sh"]
    lines += _unique([r.get("command") for r in data.records]) or ["(no eval results)"]
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


def render_benchmark(data: ReportData) -> str:
    """BENCHMARK.md: this run's checkpoints, reference rows with sources, and provenance."""
    lines = [
        f"# Benchmark: {data.name}",
        "",
        "Zero-shot scores from lm-evaluation-harness (its own HellaSwag, ARC-Easy and PIQA "
        "prompts and its acc / acc_norm) and the validation loss on held-out tokens of the "
        "training data, for every evaluated checkpoint of this run. Scores are shown as "
        "value (standard error). Generated by `tools/report.py` from RUN_DIR/eval/step-N.json "
        "and RUN_DIR/metrics.jsonl; no number here is computed anywhere else.",
        "",
        "## This run",
        "",
        *benchmark_rows(data),
        "",
        *_items_note(data),
        "",
        "## Reference models (published 0-shot numbers)",
        "",
        *reference_rows(),
        "",
        "Sources: " + " ".join(f"**{ref.name}**: {ref.source}." for ref in REFERENCES),
        "`~` marks a value from a third-party run (approximate). References ran the full sets "
        "with other harness versions and the hub's data; the local HellaSwag file joins ctx_a "
        "and ctx_b differently (see ../shared/data/README.md), so compare shapes, not decimals.",
        "",
        *_provenance(data),
        "",
    ]
    return "\n".join(lines)


def _sample_records(data: ReportData) -> list[dict[str, Any]]:
    """Up to MAX_SAMPLE_CHECKPOINTS evenly spaced results with samples, first and last kept."""
    with_samples = [r for r in data.records if r.get("samples")]
    if len(with_samples) <= MAX_SAMPLE_CHECKPOINTS:
        return with_samples
    n = len(with_samples) - 1
    picks = sorted(
        {round(i * n / (MAX_SAMPLE_CHECKPOINTS - 1)) for i in range(MAX_SAMPLE_CHECKPOINTS)}
    )
    return [with_samples[i] for i in picks]


def render_samples(data: ReportData) -> str:
    """SAMPLES.md: each fixed prompt's greedy and sampled continuation at major checkpoints."""
    records = _sample_records(data)
    lines = [
        f"# Samples: {data.name}",
        "",
        "The fixed prompts of configs/eval_prompts.toml, continued at each major checkpoint. "
        "`greedy` is argmax decoding; `sampled` uses the settings below with seed + prompt "
        "index, so the same checkpoint always gives the same text. `|` marks where the "
        "prompt ends; a newline in the text is written as \\\\n.",
        "",
    ]
    if not records:
        return "\n".join(lines + ["No eval results with samples yet (tools/eval.py).", ""])
    settings = records[-1].get("sample_settings") or {}
    lines += ["Sampling: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    prompts = _unique([s["prompt"] for r in records for s in r["samples"]])
    for i, prompt in enumerate(prompts, start=1):
        lines += [f"## Prompt {i}: {prompt!r}", ""]
        for r in records:
            sample = next((s for s in r["samples"] if s["prompt"] == prompt), None)
            if sample is None:
                continue
            lines.append(
                f"**{checkpoint_label(r)}** (tokens seen {fmt_int(r.get('tokens_seen'))}, "
                f"val_loss {fmt_float(r.get('val_loss'))})"
            )
            lines += ["", "```text"]
            lines += [f"greedy : {one_line(prompt)}|{one_line(sample['greedy'])}"]
            lines += [f"sampled: {one_line(prompt)}|{one_line(sample['sampled'])}", "```", ""]
    return "\n".join(lines)


def render_model_card(data: ReportData) -> str:
    """MODEL_CARD.md (see model_card.py)."""
    from torchgpt.eval.model_card import render_model_card as render

    return render(data)
