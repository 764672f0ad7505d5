"""The loss-spike guard (issue #25): an injected spike is skipped with the weights untouched and
the run goes on; spikes in a row stop it naming their steps; a resume keeps the rolling window."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.trainer_utils import BASE, train_restoring_signals
from torchgpt.config.manager import load_config
from torchgpt.step.train_module import TrainModule
from torchgpt.train import Trainer
from torchgpt.training.spike_guard import LossSpikeError, SpikeGuard

GUARD = ["--training.spike_zscore", "4", "--training.spike_window", "6"]
GUARD += ["--training.spike_min_steps", "4", "--training.spike_max_skips", "3"]


def test_the_zscore_needs_history_and_only_a_rise_is_a_spike():
    guard = SpikeGuard(zscore=3.0, window=4, min_steps=3, max_skips=3)
    assert guard.check(1, 100.0, 1.0) and guard.check(2, 5.0, 1.0)  # no history yet: applied
    assert guard.check(3, 5.1, 1.1) and guard.check(4, 0.1, 0.1)  # a fall is never a spike
    assert not guard.check(5, 500.0, 1.0)  # loss z far above 3
    assert not guard.check(6, 5.0, 1e6)  # grad norm alone
    assert guard.skipped_total == 2 and guard.skipped_in_a_row == [5, 6]
    assert list(guard.losses) == [100.0, 5.0, 5.1, 0.1]  # spikes stay out of the window
    copy = SpikeGuard(zscore=3.0, window=4, min_steps=3, max_skips=3)
    copy.load_state_dict(guard.state_dict())
    with pytest.raises(LossSpikeError, match=r"3 loss spikes in a row \(steps 5, 6, 7;"):
        copy.check(7, 1e4, 1.0)
    assert guard.check(7, 4.0, 0.5) and guard.skipped_in_a_row == []  # a normal step resets
    off = SpikeGuard(zscore=0.0, window=4, min_steps=2, max_skips=1)
    assert all(off.check(s, 1e9 * s, 1.0) for s in range(1, 10)) and not off.losses


class SpikeAt(TrainModule):
    """Loss and gradients x100 during the optimizer steps in `spikes` (1-based, from the
    lr schedule's count, so a resumed run sees the same steps); records what each step did."""

    spikes: tuple[int, ...] = ()
    log: list[dict] = []

    def forward_backward(self, micro_batches, **kwargs):
        self.step_no = self.lr_scheduler.last_epoch + 1
        loss = super().forward_backward(micro_batches, **kwargs)
        if self.step_no in self.spikes:
            for p in self.model.parameters():
                p.grad.mul_(100.0)
            loss = loss * 100.0
        return loss

    def step(self, *, apply: bool = True) -> None:
        before = [p.detach().clone() for p in self.model.parameters()]
        super().step(apply=apply)
        same = all(torch.equal(a, p) for a, p in zip(before, self.model.parameters(), strict=True))
        self.log.append({"step": self.step_no, "applied": apply, "weights_unchanged": same})


def _run(data, tmp_path, spikes, extra=()):
    SpikeAt.spikes, SpikeAt.log = spikes, []
    args = ["--data.dataset_path", str(data), "--job.dump_folder", str(tmp_path)]
    args += ["--training.steps", "12", *GUARD, *extra]
    trainer = Trainer(load_config(None, BASE + args, world_size=1), module_cls=SpikeAt)
    train_restoring_signals(trainer)
    return trainer, list(SpikeAt.log)


def test_an_injected_spike_is_skipped_the_weights_untouched_and_the_run_goes_on(
    token_shards, tmp_path
):
    trainer, log = _run(token_shards, tmp_path, spikes=(8,))
    assert [r["step"] for r in log] == list(range(1, 13))  # the run went on to the end
    assert log[7] == {"step": 8, "applied": False, "weights_unchanged": True}
    assert all(r["applied"] and not r["weights_unchanged"] for i, r in enumerate(log) if i != 7)
    assert trainer.spike_guard.skipped_total == 1
    records = [json.loads(x) for x in (tmp_path / "torchgpt" / "metrics.jsonl").open()]
    assert records[-1]["skipped_updates"] == 1 and records[7]["loss"] > 100 * records[6]["loss"] / 2


def test_spikes_in_a_row_stop_the_run_naming_the_steps(token_shards, tmp_path):
    with pytest.raises(LossSpikeError, match=r"steps 7, 8, 9; training.spike_max_skips=3"):
        _run(token_shards, tmp_path, spikes=(7, 8, 9, 10))
    assert [r["applied"] for r in SpikeAt.log] == [True] * 6 + [False, False]  # 9 raised


def test_a_resume_keeps_the_rolling_window(token_shards, tmp_path):
    ckpt = ["--checkpoint.enable", "true", "--checkpoint.interval", "6"]
    ckpt += ["--checkpoint.keep_latest_k", "0"]
    full, full_log = _run(token_shards, tmp_path / "a", spikes=(8,), extra=ckpt)
    # Resume at step 6: step 8 is guarded only if the window of steps 1-6 came back (min 4).
    resumed, log = _run(
        token_shards, tmp_path / "a", spikes=(8,), extra=[*ckpt, "--checkpoint.load_step", "6"]
    )
    assert [r["step"] for r in log] == list(range(7, 13))
    assert log[1] == {"step": 8, "applied": False, "weights_unchanged": True}
    assert resumed.spike_guard.state_dict() == full.spike_guard.state_dict()
    assert all(math.isfinite(x) for x in resumed.spike_guard.losses)


def test_a_checkpoint_from_before_the_guard_loads_with_an_empty_window():
    from torchgpt.checkpoint.states import TrainState

    state = TrainState()
    state.extras["spike_guard"] = guard = SpikeGuard(4.0, 6, 4, 3)
    state.load_state_dict({"step": 7, "tokens_seen": 70, "best_val_loss": 2.5})  # old blob
    assert state.step == 7 and not guard.losses and guard.skipped_total == 0
