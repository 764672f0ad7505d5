"""A run's report: BENCHMARK.md, LOSS_CURVE.png, SAMPLES.md and MODEL_CARD.md from its files.

Layers, each importing only those before it: data (read the run) -> formatting (numbers to
text) -> documents, model_card, plot -> build (write the four files).
"""

from torchgpt.report.build import build_report
from torchgpt.report.data import ReportData, load_report_data, logged_step_seconds

__all__ = ["ReportData", "build_report", "load_report_data", "logged_step_seconds"]
