"""A resume that changes training.steps (issue #27): the schedule it follows and what it logs.

`lr_scheduler.on_steps_change = "stretch"` (default) re-spreads the decay to the new last step,
so a longer run's lr jumps back up; `"keep_end"` keeps the checkpoint's decay end and holds the
minimum lr for the extra steps. Either way the old and new schedule and the lr of the next step
under each are logged, and the schedule's own fields travel with the checkpoint.
"""

from __future__ import annotations

import logging

import pytest
import torch

from tests.trainer_utils import read_metrics, run_trainer
from torchgpt.optim.adamw import build_adamw
from torchgpt.optim.lr_schedule import (
    LRSchedule,
    build_lr_scheduler,
    lr_multiplier,
    resume_schedule,
    schedule_change_message,
)

PEAK = 3e-3  # tests.trainer_utils.BASE's optimizer.lr (warmup 2, cosine, min_lr_ratio 0.1)


def test_keep_end_holds_the_minimum_and_stretch_respreads_the_cosine():
    saved = LRSchedule(warmup_steps=4, decay_end=20, planned_steps=20)
    configured = LRSchedule(warmup_steps=4, decay_end=40, planned_steps=40)
    keep = resume_schedule(configured, saved, "keep_end")
    stretch = resume_schedule(configured, saved, "stretch")
    assert (keep.decay_end, keep.planned_steps) == (20, 40)
    assert (stretch.decay_end, stretch.planned_steps) == (40, 40)
    # Multiplier k is the lr of step k + 1 (metrics log it at step k). The numbers:
    # 3.0e-4 at step 20, then 1.3e-3 at step 25 after stretching 20 -> 40 steps.
    assert PEAK * saved(20) == pytest.approx(3e-4)
    assert PEAK * stretch(25) == pytest.approx(1.30e-3, rel=0.01)
    assert [PEAK * keep(k) for k in (20, 25, 39)] == pytest.approx([3e-4] * 3)
    assert [keep(k) for k in range(21)] == [saved(k) for k in range(21)]  # the same up to 20
    assert PEAK * stretch(39) == pytest.approx(3e-4, rel=0.02)


def test_an_unchanged_step_count_keeps_the_saved_decay_end():
    """A keep_end resume saved decay_end 20 with planned_steps 40: relaunching the same 40-step
    run (either policy) continues that schedule; only another step count applies the policy."""
    saved = LRSchedule(warmup_steps=4, decay_end=20, planned_steps=40)
    configured = LRSchedule(warmup_steps=4, decay_end=40, planned_steps=40)
    assert resume_schedule(configured, saved, "stretch") == saved
    more = LRSchedule(warmup_steps=4, decay_end=60, planned_steps=60)
    assert resume_schedule(more, saved, "keep_end").decay_end == 20
    assert resume_schedule(more, saved, "stretch").decay_end == 60


def test_the_message_names_both_schedules_the_lr_jump_and_the_alternative():
    saved = LRSchedule(warmup_steps=4, decay_end=20, planned_steps=20)
    configured = LRSchedule(warmup_steps=4, decay_end=40, planned_steps=40)
    stretch = resume_schedule(configured, saved, "stretch")
    text = schedule_change_message(saved, stretch, step=20, lr=PEAK, on_steps_change="stretch")
    assert "training.steps 20 -> 40 (lr_scheduler.on_steps_change = stretch)" in text
    assert (
        "was warmup 4, cosine to 0.1x at step 20, now warmup 4, cosine to 0.1x at step 40" in text
    )
    assert (
        f"the lr of step 21 is {PEAK * stretch(20):.2e} (3.00e-04 under the old schedule, 6.3x)"
        in (text)
    )
    assert "--lr_scheduler.on_steps_change keep_end" in text
    keep = resume_schedule(configured, saved, "keep_end")
    text = schedule_change_message(saved, keep, step=20, lr=PEAK, on_steps_change="keep_end")
    assert "now warmup 4, cosine to 0.1x at step 20, held there to step 40" in text
    assert "the lr of step 21 is 3.00e-04 (3.00e-04 under the old schedule)" in text
    assert "--lr_scheduler.on_steps_change stretch" in text
    assert schedule_change_message(saved, saved, step=20, lr=PEAK, on_steps_change="x") is None


def test_the_schedule_travels_with_the_state_and_set_schedule_moves_the_next_lr():
    model = torch.nn.Linear(4, 4)
    opt = build_adamw(model, lr=1.0)
    sched = build_lr_scheduler(opt, warmup_steps=2, total_steps=10)
    for _ in range(6):
        opt.step()
        sched.step()
    state = sched.state_dict()
    twin_opt = build_adamw(model, lr=1.0)
    twin_opt.load_state_dict(opt.state_dict())  # the lr of step 7 under the 10-step schedule
    twin = build_lr_scheduler(twin_opt, warmup_steps=2, total_steps=20)
    twin.load_state_dict(state)
    assert twin.saved_schedule == LRSchedule(2, 10, "cosine", 0.1, 10)
    assert twin.schedule.decay_end == 20  # the configured one is kept until the trainer decides
    new = resume_schedule(twin.schedule, twin.saved_schedule, "stretch")
    twin.set_schedule(new)
    expected = lr_multiplier(6, warmup_steps=2, total_steps=20)
    assert [g["lr"] for g in twin_opt.param_groups] == [expected] * 2
    twin_opt.step()
    twin.step()
    assert twin.get_last_lr() == [lr_multiplier(7, warmup_steps=2, total_steps=20)] * 2
    # A checkpoint from before LRSchedule (a plain function's None) has no saved schedule.
    old = build_lr_scheduler(build_adamw(model, lr=1.0), warmup_steps=2, total_steps=20)
    old.load_state_dict({**state, "lr_lambdas": [None, None]})
    assert old.saved_schedule is None


@pytest.mark.parametrize("policy", ["stretch", "keep_end"])
def test_a_resume_with_more_steps_logs_and_follows_the_schedule(
    token_shards, tmp_path, caplog, policy
):
    ckpt = ["--checkpoint.enable", "true", "--checkpoint.interval", "4"]
    run_trainer(str(token_shards), str(tmp_path), [*ckpt, "--training.steps", "4"])
    more = [*ckpt, "--training.steps", "8", "--checkpoint.allow_change", "training.steps"]
    with caplog.at_level(logging.WARNING, logger="torchgpt"):
        run_trainer(
            str(token_shards), str(tmp_path), [*more, "--lr_scheduler.on_steps_change", policy]
        )
    (message,) = [
        r.getMessage() for r in caplog.records if "lr schedule on resume" in r.getMessage()
    ]
    old = LRSchedule(warmup_steps=2, decay_end=4, planned_steps=4)
    new = LRSchedule(warmup_steps=2, decay_end=4 if policy == "keep_end" else 8, planned_steps=8)
    assert f"training.steps 4 -> 8 (lr_scheduler.on_steps_change = {policy})" in message
    assert f"the schedule was {old.describe()}, now {new.describe()}" in message
    assert f"the lr of step 5 is {PEAK * new(4):.2e} ({PEAK * old(4):.2e} under the old" in message
    lrs = read_metrics(tmp_path / "torchgpt", "lr")
    assert lrs[:4] == pytest.approx([PEAK * old(k) for k in range(1, 5)])
    assert lrs[4:] == pytest.approx([PEAK * new(k) for k in range(5, 9)])
    if policy == "keep_end":
        assert lrs[3:] == pytest.approx([PEAK * 0.1] * 5)  # no jump: the minimum, held
    else:
        assert lrs[4] > 3 * lrs[3]  # the re-spread cosine climbs back up
