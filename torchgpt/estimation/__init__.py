"""Estimation before GPU hours are spent: per-GPU memory, speed, time-to-train, Chinchilla.

- plan.TrainingPlan: a config resolved for N processes (model args, degrees, batch, modes).
- memory.analytic_memory: per-rank peak by formula from the model args.
- trace.trace_memory: per-rank peak of one real step traced under FakeTensorMode with a fake
  process group (no real allocation).
- realstep.measure_real_peak: the real peak of a real step on this CPU (validation).
- speed.estimate_speed, chinchilla.chinchilla_table, verdict.decide, report.build_estimate.
tools/memory_estimate.py is the command line; bench/memory_estimate.py checks the accuracy.
"""

from torchgpt.estimation.memory import MemoryEstimate, analytic_memory
from torchgpt.estimation.plan import TrainingPlan
from torchgpt.estimation.report import Estimate, build_estimate, render_text, to_json
from torchgpt.estimation.speed import SpeedEstimate, estimate_speed

__all__ = [
    "Estimate",
    "MemoryEstimate",
    "SpeedEstimate",
    "TrainingPlan",
    "analytic_memory",
    "build_estimate",
    "estimate_speed",
    "render_text",
    "to_json",
]
