"""Per-block statistics (issue #25) against the same quantities computed here another way:
forward hooks on the blocks, whole-tensor norms of the gradients before clipping, and the
weights before and after the optimizer step."""

from __future__ import annotations

import json

import pytest
import torch

from tests.trainer_utils import BASE, train_restoring_signals
from torchgpt.config.manager import load_config
from torchgpt.step.train_module import TrainModule
from torchgpt.train import Trainer
from torchgpt.training.layer_stats import STATS

REFERENCE_STEP = 2


def _norm(tensors) -> float:
    return torch.linalg.vector_norm(torch.cat([t.detach().flatten() for t in tensors])).item()


class Reference(TrainModule):
    """Records the four statistics of step REFERENCE_STEP without the model's residual_ms."""

    ref: dict[str, list[float]] = {}

    def _now(self) -> bool:
        return self.lr_scheduler.last_epoch + 1 == REFERENCE_STEP

    def forward_backward(self, micro_batches, **kwargs):
        if not self._now():
            return super().forward_backward(micro_batches, **kwargs)
        blocks = list(self.model.layers)
        ms = [[] for _ in blocks]
        hooks = [
            b.register_forward_hook(lambda m, a, out, i=i: ms[i].append(out.pow(2).mean().item()))
            for i, b in enumerate(blocks)
        ]
        try:
            loss = super().forward_backward(micro_batches, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        Reference.ref["act_rms"] = [(sum(v) / len(v)) ** 0.5 for v in ms]
        Reference.ref["grad_norm"] = [_norm(p.grad for p in b.parameters()) for b in blocks]
        return loss

    def step(self, *, apply: bool = True) -> None:
        if not self._now():
            return super().step(apply=apply)
        blocks = list(self.model.layers)
        before = [[p.detach().clone() for p in b.parameters()] for b in blocks]
        super().step(apply=apply)
        Reference.ref["weight_norm"] = [_norm(ps) for ps in before]
        Reference.ref["update_ratio"] = [
            _norm(p - old for p, old in zip(b.parameters(), olds, strict=True)) / _norm(olds)
            for b, olds in zip(blocks, before, strict=True)
        ]


def _records(data, tmp_path, extra=()):
    args = ["--data.dataset_path", str(data), "--job.dump_folder", str(tmp_path)]
    args += ["--training.steps", "3", "--metrics.layer_stats", "true", *extra]
    Reference.ref = {}
    trainer = Trainer(load_config(None, BASE + args, world_size=1), module_cls=Reference)
    train_restoring_signals(trainer)
    return [json.loads(x) for x in (tmp_path / "torchgpt" / "metrics.jsonl").open()]


def test_every_statistic_of_every_block_matches_the_direct_computation(token_shards, tmp_path):
    records = _records(token_shards, tmp_path)
    step2 = next(r for r in records if r.get("step") == REFERENCE_STEP and "loss" in r)
    n_blocks = len(Reference.ref["grad_norm"])
    assert n_blocks >= 2
    for name in STATS:
        got = [step2[f"layer_{name}/{i:02d}"] for i in range(n_blocks)]
        assert got == pytest.approx(Reference.ref[name], rel=1e-5), name
    # Clipping (max_norm 0.5) came after: the block norms are the raw ones, above the clip.
    assert sum(g**2 for g in Reference.ref["grad_norm"]) ** 0.5 <= step2["grad_norm"] + 1e-6
    assert all(0 < r < 1 for r in Reference.ref["update_ratio"])


def test_off_by_default_and_only_at_log_steps(token_shards, tmp_path):
    records = _records(token_shards, tmp_path / "a", ["--metrics.log_freq", "2"])
    with_stats = [r["step"] for r in records if "layer_grad_norm/00" in r]
    assert with_stats == [1, 2, 3]  # 1 and the last always log; 2 by log_freq
    args = ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path / "b")]
    trainer = Trainer(load_config(None, BASE + args + ["--training.steps", "2"], world_size=1))
    train_restoring_signals(trainer)
    lines = (tmp_path / "b" / "torchgpt" / "metrics.jsonl").read_text()
    assert "layer_" not in lines and trainer.model.residual_ms is None
