"""Build a run's report (BENCHMARK.md, LOSS_CURVE.png, SAMPLES.md, MODEL_CARD.md).

The package is layered one way: data -> formatting -> documents / model_card, plot -> build.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torchgpt.report.data import REPORT_DIR_NAME, REPORT_FILES, load_report_data
from torchgpt.report.documents import render_benchmark, render_samples
from torchgpt.report.model_card import render_model_card
from torchgpt.report.plot import plot_loss_curve

logger = logging.getLogger(__name__)

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
