"""Single-process Trainer: accumulation == big batch, AC modes agree, compile ~= eager, NaN."""

import json
import math
import time

import pytest
import torch

from tests.trainer_utils import BASE, read_metrics, run_trainer
from torchgpt.config.manager import load_config
from torchgpt.step.train_module import TrainModule
from torchgpt.train import NonFiniteLossError, Trainer


def _grads_after_one_accumulation(data_dir, tmp_path, overrides):
    cfg = load_config(
        None,
        BASE
        + ["--data.dataset_path", str(data_dir), "--job.dump_folder", str(tmp_path)]
        + overrides,
        world_size=1,
    )
    trainer = Trainer(cfg)
    batches = [next(trainer.train_loader) for _ in range(trainer.grad_accum)]
    loss = trainer.module.forward_backward(batches).item()
    grads = {
        n.replace("_checkpoint_wrapped_module.", ""): p.grad.clone()
        for n, p in trainer.module.model.named_parameters()
    }
    trainer.close()
    return loss, grads


def _assert_grads_close(a, b, atol):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


def test_accumulation_equals_one_big_batch(token_shards, tmp_path):
    # 4 micro-steps of 2 sequences vs 1 micro-step of 8: same 512 tokens, same gradient.
    loss_acc, g_acc = _grads_after_one_accumulation(token_shards, tmp_path / "a", [])
    loss_big, g_big = _grads_after_one_accumulation(
        token_shards, tmp_path / "b", ["--training.micro_batch_size", "8"]
    )
    assert loss_acc == pytest.approx(loss_big, abs=1e-5)
    _assert_grads_close(g_acc, g_big, atol=1e-5)


@pytest.mark.parametrize("mode,option", [("full", "op"), ("selective", "op"), ("selective", "2")])
def test_activation_checkpointing_modes_match_none(token_shards, tmp_path, mode, option):
    loss_ref, g_ref = _grads_after_one_accumulation(token_shards, tmp_path / "none", [])
    loss, grads = _grads_after_one_accumulation(
        token_shards,
        tmp_path / mode,
        ["--activation_checkpoint.mode", mode, "--activation_checkpoint.selective_option", option],
    )
    assert loss == pytest.approx(loss_ref, abs=1e-6)
    _assert_grads_close(grads, g_ref, atol=1e-6)


def test_compiled_matches_eager_in_bf16(token_shards, tmp_path):
    # One 128-token micro-step per step: bf16 matmuls are ~65x slower than fp32 on AVX2 CPUs.
    common = ["--training.mixed_precision", "bf16", "--training.steps", "3"]
    common += ["--training.global_batch_tokens", "128"]
    run_trainer(str(token_shards), str(tmp_path), ["--job.name", "eager"] + common)
    run_trainer(
        str(token_shards),
        str(tmp_path),
        ["--job.name", "compiled", "--compile.enable", "true"] + common,
    )
    eager, compiled = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    assert len(eager) == 3
    # bf16 rounding differs between fused (inductor) and eager kernels: ~1e-2 relative.
    assert compiled == pytest.approx(eager, rel=2e-2)


@pytest.mark.slow
def test_whole_model_compile_matches_eager(token_shards, tmp_path):
    """compile.whole_model: one graph for the model instead of one per block, same math."""
    common = ["--training.steps", "3"]
    run_trainer(str(token_shards), str(tmp_path), ["--job.name", "eager"] + common)
    whole = ["--compile.enable", "true", "--compile.whole_model", "true"]
    run_trainer(str(token_shards), str(tmp_path), ["--job.name", "whole"] + whole + common)
    eager, compiled = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "whole")
    assert len(compiled) == 3
    assert compiled == pytest.approx(eager, rel=1e-5)  # fp32: fused kernels, other sum order


def test_the_rate_counts_the_steps_not_the_validation_between(token_shards, tmp_path, monkeypatch):
    """A validation of 1.5 s after every step stays out of the next record's step time.

    No wall-clock bound: between two step records lie the step and one sleeping
    validation, so a step time that excludes it is at most the gap less the sleep,
    however slow the machine; one that includes it exceeds that by the overhead.
    """
    sleep_s = 1.5
    eval_loss = TrainModule.eval_loss

    def slow_eval_loss(self, batches):
        time.sleep(sleep_s)
        return eval_loss(self, batches)

    monkeypatch.setattr(TrainModule, "eval_loss", slow_eval_loss)
    validate = ["--validation.enable", "true", "--validation.interval", "1"]
    validate += ["--validation.tokens", "256", "--training.steps", "3", "--job.name", "rate"]
    run_trainer(str(token_shards), str(tmp_path), validate)
    lines = (tmp_path / "rate" / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        phases = sum(v for k, v in r.items() if k.startswith("time_"))
        assert r["step_time_s"] == pytest.approx(phases), r
    for before, r in zip(records, records[1:], strict=False):
        assert r["step_time_s"] <= r["time"] - before["time"] - sleep_s, (before, r)


def test_same_config_twice_gives_identical_losses(token_shards, tmp_path):
    run_trainer(str(token_shards), str(tmp_path), ["--job.name", "a", "--training.steps", "3"])
    run_trainer(str(token_shards), str(tmp_path), ["--job.name", "b", "--training.steps", "3"])
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


class NaNAtStep(TrainModule):
    """A TrainModule whose forward's loss is NaN during optimizer step `nan_step` (1-based):
    the NaN enters before backward, so the gradients are NaN too and an applied update would
    make the weights NaN."""

    nan_step = 2

    def forward_backward(self, micro_batches, **kwargs):
        self.calls = getattr(self, "calls", 0) + 1
        return super().forward_backward(micro_batches, **kwargs)

    def loss_fn(self, logits, targets, denom):
        loss = super().loss_fn(logits, targets, denom)
        return loss * float("nan") if self.calls == self.nan_step else loss


def _trainer_with_nan_at_step(data_dir, tmp_path, overrides):
    cfg = load_config(
        None,
        BASE
        + ["--data.dataset_path", str(data_dir), "--job.dump_folder", str(tmp_path)]
        + ["--training.steps", "3"]
        + overrides,
        world_size=1,
    )
    return Trainer(cfg, module_cls=NaNAtStep)


def test_nonfinite_loss_stops_with_the_step(token_shards, tmp_path):
    trainer = _trainer_with_nan_at_step(token_shards, tmp_path, [])
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        trainer.train()
    trainer.close()


def test_nonfinite_loss_can_skip_the_step(token_shards, tmp_path):
    trainer = _trainer_with_nan_at_step(token_shards, tmp_path, ["--training.on_nonfinite", "skip"])
    trainer.train()
    trainer.close()
    losses = read_metrics(tmp_path / "torchgpt")
    assert len(losses) == 3
    assert math.isnan(losses[1]) and math.isfinite(losses[0]) and math.isfinite(losses[2])
    # The skipped step left the weights finite, so training carried on.
    assert all(torch.isfinite(p).all() for p in trainer.module.model.parameters())


def test_in_training_harness_eval_is_logged(token_shards, shared_dir, tmp_path):
    run_trainer(
        str(token_shards),
        str(tmp_path),
        [
            "--training.steps",
            "2",
            "--eval.enable",
            "true",
            "--eval.interval",
            "2",
            "--eval.tasks",
            "piqa,arc_easy",
            "--eval.limit",
            "8",
            "--eval.data_dir",
            str(shared_dir / "data" / "eval"),
        ],
    )
    records = [
        r
        for r in map(json.loads, (tmp_path / "torchgpt" / "metrics.jsonl").open())
        if "eval/piqa/acc" in r
    ]
    assert len(records) == 1 and records[0]["step"] == 2
    for key in (
        "eval/piqa/acc",
        "eval/piqa/acc_norm",
        "eval/arc_easy/acc",
        "eval/arc_easy/acc_norm",
    ):
        assert 0.0 <= records[0][key] <= 1.0
    # 8 items: every accuracy is a multiple of 1/8.
    assert (records[0]["eval/piqa/acc"] * 8) == pytest.approx(
        round(records[0]["eval/piqa/acc"] * 8)
    )
