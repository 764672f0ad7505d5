"""Warmup-stable-decay (issue #26): the multiplier's three phases, and a cooldown branched from
a stable-phase checkpoint of another run (the usual way to get several final models from one
run): it continues the run exactly, then decays over the steps it adds."""

from __future__ import annotations

import json

import pytest

from tests.trainer_utils import BASE, train_restoring_signals
from torchgpt.config.job_config import ConfigError
from torchgpt.config.manager import load_config
from torchgpt.optim.lr_schedule import lr_multiplier
from torchgpt.step.train_module import TrainModule
from torchgpt.train import Trainer


def test_warmup_then_the_peak_then_a_decay_that_ends_at_the_minimum():
    def m(step, shape="linear"):
        return lr_multiplier(
            step,
            warmup_steps=2,
            total_steps=10,
            decay_type="wsd",
            min_lr_ratio=0.1,
            decay_steps=4,
            wsd_shape=shape,
        )

    assert [m(s) for s in range(6)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert [m(s) for s in range(6, 10)] == pytest.approx([0.775, 0.55, 0.325, 0.1])
    cosine = [m(s, "cosine") for s in range(6, 10)]
    assert cosine[-1] == pytest.approx(0.1) and cosine[0] > 0.775  # cosine falls later
    assert m(15) == pytest.approx(0.1)  # held at the minimum past the end


def test_a_wsd_decay_that_does_not_fit_is_refused():
    with pytest.raises(ConfigError, match="wsd decays over 9 steps"):
        load_config(
            None,
            ["--training.steps", "10", "--lr_scheduler.warmup_steps", "2"]
            + ["--lr_scheduler.decay_type", "wsd", "--lr_scheduler.decay_steps", "9"],
        )


class LrLog(TrainModule):
    """The lr each optimizer step really used."""

    used: list[float] = []

    def step(self, *, apply: bool = True) -> None:
        LrLog.used.append(self.optimizer.param_groups[0]["lr"])
        super().step(apply=apply)


def _train(args):
    LrLog.used = []
    trainer = Trainer(load_config(None, BASE + args, world_size=1), module_cls=LrLog)
    train_restoring_signals(trainer)
    run_dir = trainer.cfg.run_dir
    losses = [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").open() if '"loss"' in x]
    return list(LrLog.used), losses


def test_a_cooldown_from_a_stable_checkpoint_continues_then_decays(token_shards, tmp_path):
    common = ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
    common += ["--lr_scheduler.decay_type", "wsd", "--lr_scheduler.min_lr_ratio", "0.0"]
    common += ["--lr_scheduler.decay_fraction", "0.25"]  # the run's own config: 9 stable steps
    main_lr, main_loss = _train(
        common
        + ["--job.name", "main", "--training.steps", "12"]
        + ["--checkpoint.enable", "true", "--checkpoint.interval", "6"]
    )
    peak = 3e-3
    assert main_lr[1:9] == [peak] * 8 and main_lr[9:] == pytest.approx([peak * 2 / 3, peak / 3, 0])
    cool_lr, cool_loss = _train(
        common
        + ["--job.name", "cool-6", "--training.steps", "9", "--lr_scheduler.decay_steps", "3"]
        + ["--checkpoint.load_path", str(tmp_path / "main" / "checkpoints" / "step-6")]
        + ["--checkpoint.allow_change", "training.steps,lr_scheduler.decay_steps"]
    )
    assert cool_lr == pytest.approx([peak * 2 / 3, peak / 3, 0.0])  # steps 7-9 decay to 0
    assert cool_loss[0] == main_loss[6]  # step 7 from the same weights and data: bitwise
    assert cool_loss[1] != main_loss[7]  # then the lower lr shows
