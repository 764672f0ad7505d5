#!/usr/bin/env python
"""Compare training runs: validation loss against wall-clock time, and one summary row per run.

Made for ablations at an equal wall-clock budget (e.g. the gpt2 vs modern architectures of
WRITEUP.md): every figure is read from each run's config.json, metrics.jsonl and run_info.json,
nothing is recomputed.

python tools/compare_runs.py outputs/ablation-gpt2 outputs/ablation-modern --out ABLATION

writes ABLATION.json (the rows) and ABLATION.png (val loss against minutes since launch) and
prints the rows as a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from torchgpt.config.job_config import Model
from torchgpt.eval.loading import read_metrics
from torchgpt.model.args import get_model_args, num_params
from torchgpt.report import logged_step_seconds


def _launch_time(run_dir: Path) -> float | None:
    """Start of the newest launch (run_info.json) as a Unix time, or None."""
    try:
        launches = json.loads((run_dir / "run_info.json").read_text())["launches"]
        return datetime.fromisoformat(launches[-1]["started_at"]).timestamp()
    except (OSError, KeyError, IndexError, ValueError, TypeError):
        return None


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """One row: architecture, size, steps, tokens, time, throughput and validation loss."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{config_path} does not exist: {run_dir} is not a torchgpt run directory")
    config = json.loads(config_path.read_text())
    metrics = read_metrics(run_dir)
    train = [r for r in metrics if "loss" in r]
    val = [r for r in metrics if r.get("val_loss") is not None]
    if not train or not val:
        raise ValueError(f"{run_dir}/metrics.jsonl has no training or validation records yet")
    flavor = config["model"]["flavor"]
    known = {f.name for f in dataclasses.fields(Model)}  # a config.json of an older torchgpt
    section = Model(**{k: v for k, v in config["model"].items() if k in known})
    args = get_model_args(flavor, **section.options())
    start = _launch_time(run_dir) or metrics[0]["time"] - train[0].get("step_time_s", 0.0)
    step_seconds = logged_step_seconds(train)
    best = min(val, key=lambda r: r["val_loss"])
    return {
        "run": str(run_dir),
        "flavor": flavor,
        "params": num_params(args),
        "params_non_embedding": num_params(args, embeddings=False),
        "steps": train[-1]["step"],
        "tokens_seen": train[-1]["tokens_seen"],
        "lr": config["optimizer"]["lr"],
        "wall_clock_min": (metrics[-1]["time"] - start) / 60,
        "train_step_min": step_seconds / 60,
        "tokens_per_s": train[-1]["tokens_seen"] / step_seconds if step_seconds else None,
        "final_val_loss": val[-1]["val_loss"],
        "best_val_loss": best["val_loss"],
        "best_val_step": best["step"],
        "val_curve": [
            {"step": r["step"], "minutes": (r["time"] - start) / 60, "val_loss": r["val_loss"]}
            for r in val
        ],
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| run | flavor | params (non-emb.) | steps | tokens | wall clock | tokens/s "
        "| final val loss |\n|---|---|---|---|---|---|---|---|"
    )
    body = [
        f"| {Path(r['run']).name} | {r['flavor']} | "
        f"{r['params']:,} ({r['params_non_embedding']:,}) "
        f"| {r['steps']} | {r['tokens_seen']:,} | {r['wall_clock_min']:.1f} min "
        f"| {r['tokens_per_s']:,.0f} | {r['final_val_loss']:.4f} |"
        for r in rows
    ]
    return "\n".join([head, *body])


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        xs = [p["minutes"] for p in r["val_curve"]]
        ys = [p["val_loss"] for p in r["val_curve"]]
        ax.plot(xs, ys, marker="o", label=f"{Path(r['run']).name} ({r['flavor']})")
    ax.set_xlabel("wall-clock minutes since launch")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss at equal wall-clock budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", help="write OUT.json and OUT.png")
    args = p.parse_args(argv)
    try:
        rows = [summarize(r) for r in args.runs]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(rows))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".json.tmp")
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
        tmp.replace(out.with_name(out.name + ".json"))
        print(f"wrote {out}.json and {plot(rows, out.with_name(out.name + '.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
