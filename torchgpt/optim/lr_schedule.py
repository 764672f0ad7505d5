"""The warmup + cosine / linear / warmup-stable-decay learning-rate schedule, and what a resume
does to it.

The schedule is a LambdaLR so its state checkpoints like any Stateful; its parameters travel
with it, so a resume that changes training.steps can keep the old decay end (`resume_schedule`,
lr_scheduler.on_steps_change) instead of re-spreading the cosine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_multiplier(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    decay_type: Literal["cosine", "linear", "constant", "geometric", "wsd"] = "cosine",
    min_lr_ratio: float = 0.1,
    decay_steps: int = 0,
    wsd_shape: Literal["linear", "cosine"] = "linear",
) -> float:
    """lr / peak_lr at optimizer step `step` (0-based: the multiplier used *for* step+1).

    Linear warmup from 1/warmup to 1 so the first step is not a zero-lr no-op, then decay to
    min_lr_ratio at the final step (Chinchilla: decaying to ~10% of peak over the run).
    "geometric" is the lr range test's sweep instead: no warmup, a geometric rise from
    min_lr_ratio at the first step to 1 at the last (tools/lr_range_test.py).
    "wsd" (warmup-stable-decay): the peak from the warmup's end until the last `decay_steps`
    steps, which fall (`wsd_shape`, linear or cosine) so that the last step runs at
    min_lr_ratio; a run cut anywhere in its stable part cools down from there alike.
    """
    if decay_type == "geometric":
        return min_lr_ratio ** (1.0 - min(step, total_steps - 1) / max(total_steps - 1, 1))
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay_type == "wsd":
        start = total_steps - decay_steps  # the first step index that decays
        if step < start:
            return 1.0
        progress = min((step - start + 1) / max(decay_steps, 1), 1.0)
        frac = 1.0 - progress if wsd_shape == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return min_lr_ratio + (1.0 - min_lr_ratio) * frac
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    if decay_type == "constant":
        return 1.0
    if decay_type == "linear":
        frac = 1.0 - progress
    else:
        frac = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * frac


def wsd_decay_steps(decay_steps: int, decay_fraction: float, total_steps: int) -> int:
    """The length of a wsd decay: lr_scheduler.decay_steps when > 0, else decay_fraction of
    the run's steps."""
    return decay_steps or round(decay_fraction * total_steps)


@dataclass
class LRSchedule:
    """The lr multiplier of one run: lr_multiplier's arguments, callable as LambdaLR's lambda.

    A callable object rather than a closure, so LambdaLR's state_dict saves its fields with
    every checkpoint: a resume knows the schedule it continues (ScheduledLR, resume_schedule).

    Attributes:
        decay_end: the step where the decay reaches min_lr_ratio (lr_multiplier's total_steps).
        planned_steps: the training.steps this schedule was set up for.
    """

    warmup_steps: int
    decay_end: int
    decay_type: str = "cosine"
    min_lr_ratio: float = 0.1
    planned_steps: int = 0
    decay_steps: int = 0  # wsd: the steps of the decay, ending at decay_end
    wsd_shape: str = "linear"

    def __call__(self, step: int) -> float:
        return lr_multiplier(
            step,
            warmup_steps=self.warmup_steps,
            total_steps=self.decay_end,
            decay_type=self.decay_type,  # type: ignore[arg-type]
            min_lr_ratio=self.min_lr_ratio,
            decay_steps=self.decay_steps,
            wsd_shape=self.wsd_shape,  # type: ignore[arg-type]
        )

    def describe(self) -> str:
        """e.g. 'warmup 4, cosine to 0.1x at step 20, held there to step 40'."""
        if self.decay_type == "constant":
            return f"warmup {self.warmup_steps}, then constant"
        if self.decay_type == "wsd":
            kind = f"stable to step {self.decay_end - self.decay_steps}, {self.wsd_shape} decay"
        else:
            kind = self.decay_type
        text = (
            f"warmup {self.warmup_steps}, {kind} to {self.min_lr_ratio:g}x at step {self.decay_end}"
        )
        if self.decay_type != "geometric" and self.planned_steps > self.decay_end:
            text += f", held there to step {self.planned_steps}"
        return text


_SAVED_SINCE_THE_START = {
    "warmup_steps",
    "decay_end",
    "decay_type",
    "min_lr_ratio",
    "planned_steps",
}


class ScheduledLR(LambdaLR):
    """LambdaLR over one LRSchedule (every param group scales its own peak by it).

    load_state_dict keeps the configured schedule and sets the checkpoint's aside as
    `saved_schedule` (None for a checkpoint from before LRSchedule): the trainer decides what
    a resume follows (resume_schedule) and applies it with `set_schedule`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> None:
        self.saved_schedule: LRSchedule | None = None
        super().__init__(optimizer, schedule)

    @property
    def schedule(self) -> LRSchedule:
        return self.lr_lambdas[0]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("saved_schedule", None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = (state_dict.get("lr_lambdas") or [None])[0]
        names = {f.name for f in fields(LRSchedule)}
        # Fields added later (decay_steps, wsd_shape) take their defaults in older checkpoints.
        self.saved_schedule = (
            LRSchedule(**{k: v for k, v in saved.items() if k in names})
            if isinstance(saved, dict) and _SAVED_SINCE_THE_START <= set(saved)
            else None
        )
        super().load_state_dict({**state_dict, "lr_lambdas": [None] * len(self.lr_lambdas)})

    def set_schedule(self, schedule: LRSchedule) -> None:
        """Follow `schedule` from the current step on, the next step included: the optimizer's
        lr (restored from the checkpoint under the old schedule) is set from it now."""
        for fn in self.lr_lambdas:  # LambdaLR holds the same object once per param group
            fn.__dict__.update(asdict(schedule))
        if self.last_epoch < 0:
            return
        lrs = [base * schedule(self.last_epoch) for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = lrs


def resume_schedule(
    configured: LRSchedule,
    saved: LRSchedule,
    on_steps_change: Literal["stretch", "keep_end"] = "stretch",
) -> LRSchedule:
    """The schedule a resumed run follows: the configured one, with the decay end chosen so.

    With training.steps as saved, the saved decay end (an earlier keep_end included). With
    another training.steps, `stretch` ends the decay at the new last step (the lr at the
    resume step jumps up when the run grows: the cosine is re-spread), `keep_end` keeps the
    saved end and holds the minimum lr for any extra steps (no jump; a shorter run stops
    before the end). warmup, decay type and min_lr_ratio are the configured ones; so is a wsd
    decay length, except that keep_end keeps the saved decay window whole.

    A cooldown branch of a wsd run is a resume with more steps: stretch and a decay of the
    extra steps (lr_scheduler.decay_steps), which starts where the run stood at the peak.
    """
    steps_changed = configured.planned_steps != saved.planned_steps
    keep = not steps_changed or on_steps_change == "keep_end"
    if not keep:
        return replace(configured, decay_end=configured.planned_steps)
    if steps_changed and saved.decay_type == configured.decay_type == "wsd":
        return replace(configured, decay_end=saved.decay_end, decay_steps=saved.decay_steps)
    return replace(configured, decay_end=saved.decay_end)


def schedule_of_config(config: dict[str, Any], default: LRSchedule) -> LRSchedule | None:
    """The schedule a checkpoint's saved config (its `config.to_dict()`) ran, for checkpoints
    saved before LRSchedule: its training.steps was then the decay end. Keys it lacks come
    from `default`; None without a training.steps."""
    steps = (config.get("training") or {}).get("steps")
    if not isinstance(steps, int):
        return None
    s = config.get("lr_scheduler") or {}
    return LRSchedule(
        warmup_steps=s.get("warmup_steps", default.warmup_steps),
        decay_end=steps,
        decay_type=s.get("decay_type", default.decay_type),
        min_lr_ratio=s.get("min_lr_ratio", default.min_lr_ratio),
        planned_steps=steps,
    )


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    decay_type: Literal["cosine", "linear", "constant", "geometric", "wsd"] = "cosine",
    min_lr_ratio: float = 0.1,
    decay_steps: int = 0,
    wsd_shape: Literal["linear", "cosine"] = "linear",
) -> ScheduledLR:
    """The run's ScheduledLR: warmup, then decay to min_lr_ratio at `total_steps` (wsd: over
    its last `decay_steps`)."""
    schedule = LRSchedule(
        warmup_steps=warmup_steps,
        decay_end=total_steps,
        decay_type=decay_type,
        min_lr_ratio=min_lr_ratio,
        planned_steps=total_steps,
        decay_steps=decay_steps if decay_type == "wsd" else 0,
        wsd_shape=wsd_shape,
    )
    return ScheduledLR(optimizer, schedule)


def schedule_change_message(
    saved: LRSchedule,
    new: LRSchedule,
    *,
    step: int,
    lr: float,
    on_steps_change: str,
) -> str | None:
    """The warning a resume at `step` logs when its schedule differs from the checkpoint's:
    both schedules, the lr of the next step under each (peak `lr`), and the alternative.
    None when nothing changed."""
    if new == saved:
        return None
    old_lr, new_lr = lr * saved(step), lr * new(step)
    if new.planned_steps != saved.planned_steps:
        head = (
            f"training.steps {saved.planned_steps} -> {new.planned_steps} "
            f"(lr_scheduler.on_steps_change = {on_steps_change})"
        )
    else:
        head = "changed lr_scheduler keys"
    ratio = f", {new_lr / old_lr:.2g}x" if old_lr > 0 and new_lr != old_lr else ""
    text = (
        f"lr schedule on resume at step {step}: {head}: the schedule was {saved.describe()}, "
        f"now {new.describe()}; the lr of step {step + 1} is {new_lr:.2e} "
        f"({old_lr:.2e} under the old schedule{ratio})"
    )
    if new.planned_steps != saved.planned_steps:
        text += (
            "; to keep the old schedule's end instead (no jump; the minimum lr for the extra "
            "steps), resume with --lr_scheduler.on_steps_change keep_end"
            if on_steps_change == "stretch"
            else "; to re-spread the decay over the new steps instead, resume with "
            "--lr_scheduler.on_steps_change stretch"
        )
    return text


def continue_schedule(
    scheduler: Any,
    saved_config: dict[str, Any],
    *,
    step: int,
    lr: float,
    on_steps_change: Literal["stretch", "keep_end"],
) -> str | None:
    """After a resume at `step`: make a ScheduledLR follow resume_schedule's choice; returns
    the warning to log (schedule_change_message) when it differs from the checkpoint's.

    `saved_config` is the config the checkpoint was saved with: a checkpoint from before
    LRSchedule keeps no schedule of its own, and its config tells it (schedule_of_config).
    """
    if not isinstance(scheduler, ScheduledLR):
        return None
    saved = scheduler.saved_schedule or schedule_of_config(saved_config, scheduler.schedule)
    if saved is None:
        return None
    new = resume_schedule(scheduler.schedule, saved, on_steps_change)
    message = schedule_change_message(saved, new, step=step, lr=lr, on_steps_change=on_steps_change)
    if message is not None:
        scheduler.set_schedule(new)
    return message
