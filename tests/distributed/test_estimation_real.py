"""The estimates against a REAL training step: 2 gloo processes, FSDP2, bf16, accumulation.

The real peak is measured per rank as torchgpt/estimation/realstep.py documents (exact resident
tensor
bytes + growth of the OS peak-RSS counter during one full step, with glibc returning freed
memory at once). Acceptance: traced within 10%, analytic within 20% of the real peak.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from torchgpt.config.manager import load_config
from torchgpt.estimation.memory import _loss_buffers, analytic_memory, element_bytes
from torchgpt.estimation.plan import TrainingPlan
from torchgpt.estimation.realstep import measure_real_peak
from torchgpt.estimation.trace import trace_memory

ROOT = Path(__file__).resolve().parents[2]

# debug flavor, 4 x 128 tokens per micro-batch, 2 micro-steps per step on 2 ranks (one without
# gradient sync), selective AC: small enough for seconds per step, every mechanism involved.
SMALL = [
    "--training.seq_len=128",
    "--training.micro_batch_size=4",
    "--training.global_batch_tokens=2048",
    "--activation_checkpoint.mode=selective",
]


@pytest.mark.slow
def test_estimates_match_a_real_fsdp2_step_on_two_ranks() -> None:
    cfg = load_config(ROOT / "train_configs" / "debug_model.toml", SMALL, world_size=2)
    plan = TrainingPlan.from_config(cfg, 2)
    assert plan.fsdp and plan.grad_accum == 2 and plan.precision_mode == "fsdp-bf16"
    ranks = measure_real_peak(plan)
    assert [r.rank for r in ranks] == [0, 1]
    real = max(r.peak_bytes for r in ranks)
    # The step itself must dominate the measurement for the comparison to mean anything:
    # the cross-entropy buffers alone are 512 tokens x 12 B x 50257.
    assert min(r.step_growth_bytes for r in ranks) > 512 * 12 * 50257
    traced = trace_memory(plan).peak_bytes
    analytic = analytic_memory(plan).peak_bytes
    assert traced == pytest.approx(real, rel=0.10), (traced, ranks)
    assert analytic == pytest.approx(real, rel=0.20), (analytic, ranks)


# The step the recipe runs: torch.compile on (per-block compile and the fused loss). One rank,
# no AC, 4 x 128 tokens, so the loss's (B*T, V) buffers dominate and the peak is the loss
# backward. Measured (debug flavor, bf16): estimate 221.5 MiB, real 220.8 on an AVX512-BF16 CPU,
# 221.0 with oneDNN capped at AVX2. At 2 x 128 the peak moves to the lm-head backward, where
# the estimate (182.3) errs high on a bf16-native CPU (169.7; 181.7 on AVX2, whose bf16 matmul
# adds a 12 MiB conversion buffer): the estimate stays on the safe side there.
COMPILED = [
    "--training.seq_len=128",
    "--activation_checkpoint.mode=none",
    "--compile.enable=true",
]


@pytest.mark.slow
@pytest.mark.parametrize("precision, micro", [("fp32", 4), ("bf16", 4)])
def test_the_estimate_of_a_compiled_step_matches_its_real_peak(precision, micro) -> None:
    overrides = COMPILED + [
        f"--training.mixed_precision={precision}",
        f"--training.micro_batch_size={micro}",
        f"--training.global_batch_tokens={2 * micro * 128}",
    ]
    cfg = load_config(ROOT / "train_configs" / "debug_model.toml", overrides, world_size=1)
    plan = TrainingPlan.from_config(cfg, 1)
    assert plan.compile_enable and plan.grad_accum == 2
    (rank,) = measure_real_peak(plan)
    analytic = analytic_memory(plan)
    # The fused loss: the logits and their gradient in the compute dtype, no fp32 copy.
    loss_item = _loss_buffers(plan, element_bytes(plan))
    bytes_per = 4 if precision == "fp32" else 2
    assert loss_item.nbytes == micro * 128 * 2 * bytes_per * plan.args.padded_vocab_size
    assert analytic.peak_bytes == pytest.approx(rank.peak_bytes, rel=0.05), (analytic, rank)
    # ...and the eager model of the same plan would be far off: the estimate follows compile.
    eager = analytic_memory(plan.replace(compile_enable=False)).peak_bytes
    assert eager > 1.2 * rank.peak_bytes
    traced = trace_memory(plan).peak_bytes
    assert traced == pytest.approx(rank.peak_bytes, rel=0.05), (traced, rank)
