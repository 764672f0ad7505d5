"""`training.micro_batch_size = "auto"` and `activation_checkpoint.mode = "auto"`, resolved.

The choice is made by the analytic memory model (microseconds; within 0.03% of a real step in
BENCHMARK.md) against the device's memory minus the estimator's stated headroom (1 GiB for the
CUDA context and workspaces, then 10% for allocator fragmentation: torchgpt.estimation.verdict). The
trainer resolves it at start for the detected device memory and world size; memory_estimate
resolves it the same way for the GPU it is given, so both print the same choice.

Rule: the lightest activation checkpointing (none, then selective, then full) whose largest
fitting micro-batch holds at least MIN_MICRO_TOKENS tokens (or every sequence a rank sees per
step, when the global batch is smaller), with that largest micro-batch. Recompute costs FLOPs
(selective ~8%, full ~33%), while a micro-batch past ~8k tokens buys little more GPU
utilisation for a 124M model, so lighter AC wins unless it would starve the GPU. When no mode
reaches the floor, the largest micro-batch that fits wins (lighter AC on a tie). A knob the
config fixes is kept as given; only "auto" ones are chosen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torchgpt.config.job_config import JobConfig
from torchgpt.estimation.memory import analytic_memory
from torchgpt.estimation.plan import TrainingPlan
from torchgpt.estimation.verdict import headroom_text, usable_bytes
from torchgpt.parallel.dims import ParallelDims
from torchgpt.utils.hardware import GPUSpec

AUTO = "auto"
MIN_MICRO_TOKENS = 8192
AC_LIGHTEST_FIRST = ("none", "selective", "full")
GIB = 2**30


@dataclass(frozen=True)
class AutoSizing:
    """What "auto" became, and the numbers the choice rests on.

    Attributes:
        micro_batch_size: sequences per rank per micro-step.
        ac_mode: activation checkpointing mode.
        grad_accum: micro-steps per optimizer step with that micro-batch.
        peak_bytes: analytic per-rank peak of the chosen layout.
        usable_bytes: the budget (device memory minus headroom).
        device_memory_gib: the device memory sized for.
        auto_keys: the config keys that were "auto".
        headroom: the headroom rule, in words.
    """

    micro_batch_size: int
    ac_mode: str
    grad_accum: int
    peak_bytes: int
    usable_bytes: int
    device_memory_gib: float
    auto_keys: tuple[str, ...]
    headroom: str

    def text(self) -> str:
        return (
            f"auto sizing ({', '.join(self.auto_keys)}): micro_batch_size {self.micro_batch_size} "
            f"(accumulation {self.grad_accum}), activation checkpointing {self.ac_mode}; "
            f"estimated peak {self.peak_bytes / GIB:.2f} GiB of {self.usable_bytes / GIB:.2f} GiB "
            f"usable ({headroom_note(self.headroom)})"
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def headroom_note(text: str) -> str:
    """The headroom rule without its result (printed beside it already)."""
    return text.split(" = ")[0]


def micro_batch_candidates(cfg: JobConfig, dp_degree: int) -> list[int]:
    """Micro-batches that split the global batch into whole micro-steps, largest first."""
    t = cfg.training
    per_rank = t.global_batch_tokens // (t.seq_len * dp_degree)
    if t.micro_batch_size != AUTO:
        return [t.micro_batch_size]
    return [
        mb
        for mb in range(per_rank, 0, -1)
        if t.global_batch_tokens % (mb * t.seq_len * dp_degree) == 0
    ]


def _plan(cfg: JobConfig, world_size: int, micro: int, ac_mode: str) -> TrainingPlan:
    fixed = dataclasses.replace(
        cfg,
        training=dataclasses.replace(cfg.training, micro_batch_size=micro),
        activation_checkpoint=dataclasses.replace(cfg.activation_checkpoint, mode=ac_mode),
    )
    return TrainingPlan.from_config(fixed, world_size)


def _largest_fitting(
    cfg: JobConfig, world_size: int, micros: list[int], ac_mode: str, budget: int
) -> tuple[int, int] | None:
    """(micro-batch, peak) of the largest micro-batch that fits with `ac_mode`, or None."""
    for micro in micros:  # largest first; peak grows with the micro-batch
        peak = analytic_memory(_plan(cfg, world_size, micro, ac_mode)).peak_bytes
        if peak <= budget:
            return micro, peak
    return None


def resolve(cfg: JobConfig, world_size: int, device_memory_gib: float) -> AutoSizing | None:
    """The auto choice for `world_size` processes on devices of `device_memory_gib` each.

    Returns None when neither key is "auto". Raises ValueError (naming the keys and the
    budget) when no candidate fits.
    """
    t, ac = cfg.training, cfg.activation_checkpoint
    auto_keys = tuple(
        key
        for key, value in (
            ("training.micro_batch_size", t.micro_batch_size),
            ("activation_checkpoint.mode", ac.mode),
        )
        if value == AUTO
    )
    if not auto_keys:
        return None
    spec = GPUSpec("device", 0.0, device_memory_gib, "")
    budget = usable_bytes(spec)
    dp_degree = ParallelDims.from_config(cfg.parallelism, world_size).dp_degree
    micros = micro_batch_candidates(cfg, dp_degree)
    modes = AC_LIGHTEST_FIRST if ac.mode == AUTO else (ac.mode,)
    floor = min(MIN_MICRO_TOKENS, micros[0] * t.seq_len)
    fitting: list[tuple[str, int, int]] = []
    for mode in modes:
        found = _largest_fitting(cfg, world_size, micros, mode, budget)
        if found is not None:
            fitting.append((mode, *found))
            if found[0] * t.seq_len >= floor:
                break
    if not fitting:
        raise ValueError(
            f"{' and '.join(auto_keys)} = auto: nothing fits {device_memory_gib:g} GiB per "
            f"device ({headroom_text(spec)}), not even micro_batch_size {micros[-1]} with "
            f"activation checkpointing {modes[-1]}; use more devices (FSDP shards the states), "
            "a shorter training.seq_len, or set training.device_memory_gib if the detected "
            "memory is wrong"
        )
    mode, micro, peak = fitting[-1]
    if fitting[-1][1] * t.seq_len < floor:  # no mode reached the floor: the largest micro wins
        mode, micro, peak = max(fitting, key=lambda f: f[1])
    plan = _plan(cfg, world_size, micro, mode)
    return AutoSizing(
        micro_batch_size=micro,
        ac_mode=mode,
        grad_accum=plan.grad_accum,
        peak_bytes=peak,
        usable_bytes=budget,
        device_memory_gib=device_memory_gib,
        auto_keys=auto_keys,
        headroom=headroom_text(spec),
    )


def apply(cfg: JobConfig, sizing: AutoSizing | None) -> JobConfig:
    """`cfg` with the auto keys replaced by the choice (in place; returned for chaining)."""
    if sizing is not None:
        cfg.training.micro_batch_size = sizing.micro_batch_size
        cfg.activation_checkpoint.mode = sizing.ac_mode  # type: ignore[assignment]
    return cfg
