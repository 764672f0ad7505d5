"""The larger flavors' 8-GPU recipes: each loads, and the estimate its header states (auto
sizing on 8 x H100 80GB: micro-batch, AC, per-GPU peak; the layout) is what
tools/memory_estimate.py computes now, so the comments cannot go stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from torchgpt.config.manager import load_config
from torchgpt.estimation.autosize import resolve
from torchgpt.estimation.plan import TrainingPlan

CONFIGS = Path(__file__).resolve().parents[2] / "train_configs"
GIB = 2**30


@pytest.mark.parametrize(
    "name,tp",
    [("gpt2_350m_8gpu", 1), ("gpt2_774m_8gpu_tp2", 2), ("gpt2_1558m_8gpu", 1)],
)
def test_the_header_states_the_estimate(name: str, tp: int) -> None:
    path = CONFIGS / f"{name}.toml"
    text = path.read_text()
    assert "ESTIMATES, not measurements" in text
    stated = re.search(
        r"8 x H100 80GB: auto -> micro-batch (\d+), no AC, accumulation (\d+); ([\d.]+) GiB", text
    )
    assert stated, "the header's estimate line"
    cfg = load_config(path, [], world_size=8)
    sizing = resolve(cfg, 8, 80.0)
    assert (sizing.micro_batch_size, sizing.ac_mode, sizing.grad_accum) == (
        int(stated[1]),
        "none",
        int(stated[2]),
    )
    assert round(sizing.peak_bytes / GIB, 1) == float(stated[3])
    cfg.training.micro_batch_size = sizing.micro_batch_size
    cfg.activation_checkpoint.mode = sizing.ac_mode
    plan = TrainingPlan.from_config(cfg, 8)
    assert plan.tp == tp and plan.dp_degree == 8 // tp and plan.fsdp
    steps = int(re.search(r"([\d,]+) steps x 524,288", text)[1].replace(",", ""))
    assert cfg.training.steps == steps and cfg.training.global_batch_tokens == 524288
