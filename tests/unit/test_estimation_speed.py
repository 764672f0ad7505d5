"""Speed and Chinchilla estimates: hand-computed values, AC recompute FLOPs, and input errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchgpt.config.manager import load_config
from torchgpt.estimation.chinchilla import (
    chinchilla_loss,
    chinchilla_table,
    fitted_optimal_params,
    optimal_params_for_compute,
)
from torchgpt.estimation.plan import TrainingPlan
from torchgpt.estimation.speed import estimate_speed, recompute_flops_per_token
from torchgpt.model.args import flops_per_token

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "train_configs" / "mini_gpt_100m.toml"


# The recipe's values, pinned so the hand-computed figures below do not drift with the file.
PINNED = [
    "--model.flavor=gpt2-124m",
    "--training.steps=1907",
    "--training.global_batch_tokens=524288",
    "--training.micro_batch_size=16",
    "--training.seq_len=1024",
    "--activation_checkpoint.mode=selective",
    "--activation_checkpoint.selective_option=op",
]


def recipe_plan(overrides: list[str] = (), nproc: int = 1) -> TrainingPlan:
    cfg = load_config(RECIPE, [*PINNED, *overrides], world_size=nproc)
    return TrainingPlan.from_config(cfg, nproc)


def test_speed_without_recompute_is_peak_times_mfu_over_flops() -> None:
    plan = recipe_plan(["--activation_checkpoint.mode=none"], nproc=4)
    s = estimate_speed(plan, "a100-80g", mfu=0.5, usd_per_gpu_hour=2.0)
    fpt = flops_per_token(plan.args, 1024)
    assert s.flops_per_token == fpt and s.recompute_flops_per_token == 0
    assert s.tokens_per_s == pytest.approx(4 * 312e12 * 0.5 / fpt)
    assert s.total_tokens == 1907 * 524_288
    assert s.train_seconds == pytest.approx(s.total_tokens / s.tokens_per_s)
    assert s.step_seconds == pytest.approx(524_288 / s.tokens_per_s)
    assert s.gpu_hours == pytest.approx(s.train_seconds * 4 / 3600)
    assert s.usd == pytest.approx(2.0 * s.gpu_hours)


def test_recompute_flops_of_gpt2_small() -> None:
    d, h, layers, t = 768, 3072, 12, 1024
    full = recipe_plan(["--activation_checkpoint.mode=full"])
    # Every block forward again: 2 FLOPs per matmul weight (4d^2 + 2dh) + 4dT attention.
    assert recompute_flops_per_token(full) == layers * (2 * (4 * d * d + 2 * d * h) + 4 * d * t)
    # op-level selective recomputes attn.proj (d x d) and mlp.proj (h x d) only.
    assert recompute_flops_per_token(recipe_plan()) == layers * 2 * (d * d + h * d)
    every2 = recipe_plan(
        ["--activation_checkpoint.mode=selective", "--activation_checkpoint.selective_option=2"]
    )
    assert recompute_flops_per_token(every2) == recompute_flops_per_token(full) // 2
    s = estimate_speed(full, "h100", mfu=0.4)
    fpt = flops_per_token(full.args, t)
    assert s.mfu_effective == pytest.approx(0.4 * fpt / (fpt + recompute_flops_per_token(full)))
    # Textbook full AC costs 1/4 of throughput (8N vs 6N); less here because the lm-head
    # (a third of GPT-2 small's matmul weights) is outside the checkpointed blocks.
    assert 0.4 * 0.75 < s.mfu_effective < 0.4 * 0.85


def test_speed_input_errors_name_the_option() -> None:
    plan = recipe_plan()
    with pytest.raises(ValueError, match=r"--gpu: unknown GPU 'h300'; known: h100, .*rtx4090"):
        estimate_speed(plan, "h300")
    with pytest.raises(ValueError, match="--mfu"):
        estimate_speed(plan, "h100", mfu=1.5)
    with pytest.raises(ValueError, match="--usd-per-gpu-hour"):
        estimate_speed(plan, "h100", usd_per_gpu_hour=-1)


def test_chinchilla_fit_reproduces_the_papers_models() -> None:
    # Chinchilla (70B params, 1.4T tokens) and Gopher (280B, 300B) under the approach-3 fit.
    assert chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.9366, abs=1e-3)
    assert chinchilla_loss(280e9, 300e9) == pytest.approx(1.9933, abs=1e-3)
    assert chinchilla_loss(70e9, 1.4e12) < chinchilla_loss(280e9, 300e9)  # same compute, better


def test_compute_optimal_sizes() -> None:
    c = 6 * 124e6 * 2.48e9
    n = optimal_params_for_compute(c)
    assert n * 20 * n * 6 == pytest.approx(c)  # D = 20 N and C = 6 N D
    n_fit = fitted_optimal_params(c)
    at = lambda k: chinchilla_loss(k * n_fit, c / (6 * k * n_fit))  # noqa: E731
    assert at(1.0) < at(0.9) and at(1.0) < at(1.1)  # the closed form is the minimum


def test_chinchilla_table_marks_the_model() -> None:
    c = 7.47e17
    flops, rows = chinchilla_table(compute_flops=c, num_params=124.4e6)
    assert flops == c
    labels = [r.label for r in rows]
    assert "this model" in labels and "20 tokens/param optimum" in labels
    mine = rows[labels.index("this model")]
    assert mine.num_tokens == pytest.approx(c / (6 * 124.4e6))
    assert [r.num_params for r in rows] == sorted(r.num_params for r in rows)
    _, by_params = chinchilla_table(num_params=1e9)  # budget of the 20 tok/param run for 1B
    assert by_params[
        [r.label for r in by_params].index("this model")
    ].tokens_per_param == pytest.approx(20)
    with pytest.raises(ValueError):
        chinchilla_table()
