"""The estimator under tensor parallelism: the analytic formulas against the FakeTensorMode trace
of the real tp step (a fake process group of 2 to 8 ranks), the per-rank parameter count
against the DTensors the plan makes, auto sizing and memory_estimate's --tp."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed.tensor import DTensor

from torchgpt.config.manager import load_config
from torchgpt.estimation.autosize import _plan, resolve
from torchgpt.estimation.memory import analytic_memory
from torchgpt.estimation.plan import TrainingPlan
from torchgpt.estimation.step import build_module
from torchgpt.estimation.trace import _init_fake_process_group, meshes_made_real, trace_memory
from torchgpt.model.args import num_local_params

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "train_configs" / "debug_model.toml"
RECIPE = ROOT / "train_configs" / "mini_gpt_100m.toml"
TP2 = ["--parallelism.tp=2", "--model.qkv_layout=per_head"]
_spec = importlib.util.spec_from_file_location("memory_estimate", ROOT / "tools/memory_estimate.py")
_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tool)


def plan_for(overrides: list[str], nproc: int) -> TrainingPlan:
    return TrainingPlan.from_config(load_config(DEBUG, TP2 + overrides, world_size=nproc), nproc)


def with_layers(plan: TrainingPlan, n_layers: int) -> TrainingPlan:
    args = dataclasses.replace(plan.args, n_layers=n_layers)
    return dataclasses.replace(plan, step=dataclasses.replace(plan.step, model_args=args))


@pytest.mark.parametrize(
    "overrides,nproc",
    [
        # tp alone (autocast bf16 with accumulation), fp32 with full AC, the modern flavor
        (["--activation_checkpoint.mode=selective"], 2),
        (["--activation_checkpoint.mode=full", "--training.mixed_precision=fp32"], 2),
        (["--model.flavor=debug-modern", "--model.qk_norm=true"], 2),
        # loss parallel (the default) compiled, and the fused loss on logits gathered over the
        # vocabulary; 2 x B*T x Vp/tp fp32 apart
        (["--compile.enable=true"], 2),
        (["--compile.enable=true", "--parallelism.loss_parallel=false"], 2),
        (["--parallelism.loss_parallel=false"], 2),
        # FSDP2 x TP (bf16 params, no-sync accumulation) and HSDP x TP on 8 fake ranks
        (["--parallelism.dp_shard=2", "--training.global_batch_tokens=8192"], 4),
        (["--parallelism.dp_replicate=2", "--training.micro_batch_size=4"], 8),
    ],
)
def test_analytic_matches_trace_at_tp(overrides: list[str], nproc: int) -> None:
    plan = plan_for(overrides, nproc)
    assert plan.tp == 2 and plan.dp_degree == nproc // 2
    analytic, traced = analytic_memory(plan), trace_memory(plan)
    assert analytic.peak_bytes == pytest.approx(traced.peak_bytes, rel=0.01)
    loss = [i.name for i in analytic.items if "loss" in i.name or "cross-entropy" in i.name]
    assert loss and ("loss parallel" in loss[0]) == plan.loss_parallel


@pytest.mark.parametrize(
    "overrides,nproc",
    [
        (["--activation_checkpoint.mode=none"], 2),
        (["--activation_checkpoint.mode=selective"], 2),
        (["--model.flavor=debug-modern", "--activation_checkpoint.mode=none"], 2),
        (["--model.flavor=debug-modern", "--activation_checkpoint.mode=selective"], 2),
        (["--parallelism.dp_shard=2", "--activation_checkpoint.mode=full"], 4),
    ],
)
def test_what_four_more_blocks_cost_matches_the_trace(overrides: list[str], nproc: int) -> None:
    """The loss buffers dominate the debug model's peak; the difference between 6 and 2 layers
    isolates the blocks' activations, weights and states under tp, to 0.1%."""
    plan = plan_for(overrides, nproc)
    four = [
        analytic_memory(with_layers(plan, 6)).peak_bytes
        - analytic_memory(with_layers(plan, 2)).peak_bytes,
        trace_memory(with_layers(plan, 6)).peak_bytes
        - trace_memory(with_layers(plan, 2)).peak_bytes,
    ]
    assert four[0] == pytest.approx(four[1], rel=1e-3)


@pytest.mark.parametrize("overrides", [[], ["--model.flavor=debug-modern", "--model.qk_norm=true"]])
def test_per_rank_parameters_are_the_dtensor_shards(overrides: list[str]) -> None:
    plan = plan_for(overrides, 2)
    _init_fake_process_group(2)
    try:
        mesh = plan.dims.build_mesh("cpu")
        with FakeTensorMode(), meshes_made_real():
            model = build_module(plan, mesh, fake=True).model
            local = sum(
                (p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters()
            )
    finally:
        dist.destroy_process_group()
    assert local == num_local_params(plan.args, 2) < num_local_params(plan.args, 1)


def test_auto_sizing_plans_tp_layouts() -> None:
    """gpt2-774m on 8 x 24 GB: tp 2 halves a rank's weights, states and block activations, so
    FSDP 4 x TP 2 fits micro-batches twice FSDP 8's; each choice is the largest that fits."""
    auto = ["--training.micro_batch_size=auto", "--activation_checkpoint.mode=auto"]
    base = [*auto, "--model.flavor=gpt2-774m", "--model.qkv_layout=per_head"]
    fsdp = load_config(RECIPE, base, world_size=8)
    tp = load_config(RECIPE, [*base, "--parallelism.tp=2"], world_size=8)
    a, b = resolve(fsdp, 8, 24.0), resolve(tp, 8, 24.0)
    for cfg, sizing in ((fsdp, a), (tp, b)):
        plan = _plan(cfg, 8, sizing.micro_batch_size, sizing.ac_mode)
        assert sizing.peak_bytes == analytic_memory(plan).peak_bytes <= sizing.usable_bytes
        bigger = _plan(cfg, 8, 2 * sizing.micro_batch_size, sizing.ac_mode)
        assert analytic_memory(bigger).peak_bytes > sizing.usable_bytes
    assert _plan(tp, 8, b.micro_batch_size, b.ac_mode).dp_degree == 4
    assert (a.micro_batch_size, b.micro_batch_size) == (8, 16)


def test_memory_estimate_tp_2_for_gpt2_xl_says_why_not(capsys) -> None:
    """GPT-2 XL has 25 heads: tp 2 cannot split them, and the tool says so (exit 2) with the
    degrees that could; FSDP alone over the 8 GPUs fits an 80 GB H100."""
    argv = [str(RECIPE), "--model.flavor=gpt2-1558m", "--gpu", "h100", "--nproc", "8"]
    assert _tool.main([*argv, "--tp", "2", "--no-trace"]) == 2
    err = capsys.readouterr().err
    assert "parallelism.tp=2 must divide the model's attention heads (n_heads=25)" in err
    assert "tp degrees that do: 5, 25, or tp = 1" in err
    assert _tool.main([*argv, "--tp", "1", "--no-trace"]) == 0
    assert "FITS" in capsys.readouterr().out


def test_memory_estimate_prints_the_tp_layout(capsys) -> None:
    argv = [str(RECIPE), "--model.flavor=gpt2-774m", "--gpu", "h100", "--nproc", "8", "--tp", "2"]
    assert _tool.main([*argv, "--no-trace"]) == 0
    out = capsys.readouterr().out
    assert "FSDP2 (shard 4) x TP 2 (sequence parallel)" in out
    assert "fp32 master weights / tp 2 / 4" in out
