"""LOSS_CURVE.png: train and val loss against tokens seen, learning rate on a second axis.

Drawn with matplotlib's Agg backend (no display needed) from metrics.jsonl and the eval results.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchgpt.report.data import ReportData


def _xy(points: list[dict], key: str) -> tuple[list[float], list[float]]:
    pairs = [(p["tokens_seen"], p[key]) for p in points if p.get("tokens_seen") is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _tokens_label(x: float, _pos: int) -> str:
    """Tick labels as 500k / 1.5M / 2B: tokens read at a glance."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def _ylim(values: list[float]) -> tuple[float, float] | None:
    """Keep the first steps' very high loss from flattening the rest of the curve."""
    if len(values) < 50:  # few points: show them all, the start of training included
        return None
    ordered = sorted(values)
    low, high = ordered[0], ordered[int(0.95 * (len(ordered) - 1))]
    margin = 0.1 * max(high - low, 1e-3)
    return low - margin, high + 3 * margin


def plot_loss_curve(data: ReportData, path: Path) -> Path:
    """Draw the curve to `path` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(9, 5), dpi=120)
    train_x, train_y = _xy(data.train_points, "loss")
    val_x, val_y = _xy(data.val_points, "val_loss")
    if train_x:
        ax.plot(train_x, train_y, color="tab:blue", lw=1.4, label="train loss")
    if val_x:
        ax.plot(val_x, val_y, "o-", color="tab:orange", lw=1.8, ms=4, label="val loss")
    evals = [r for r in data.records if r.get("val_loss") is not None and r.get("tokens_seen")]
    if evals:
        ax.plot(
            [r["tokens_seen"] for r in evals],
            [r["val_loss"] for r in evals],
            "D",
            color="tab:red",
            ms=6,
            mfc="none",
            label="val loss (tools/eval.py, per checkpoint)",
        )
    limits = _ylim(train_y + val_y)
    if limits:
        ax.set_ylim(*limits)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_formatter(FuncFormatter(_tokens_label))
    lr_x, lr_y = _xy([p for p in data.train_points if "lr" in p], "lr")
    handles, labels = ax.get_legend_handles_labels()
    if lr_x:
        ax2 = ax.twinx()
        ax2.plot(lr_x, lr_y, "--", color="tab:gray", lw=1.0, label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.set_title(f"{data.name}: loss vs tokens")
    if handles:  # below the axes, where it can never hide a curve
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path
