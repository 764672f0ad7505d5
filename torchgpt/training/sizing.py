"""Resolve `"auto"` micro-batch / activation checkpointing at start, the same on every rank.

Each rank measures its device (torchgpt.utils.hardware.device_memory_gib) unless
`training.device_memory_gib` gives the figure; the smallest over all ranks is what every rank
sizes for, so a job on mixed GPUs still agrees on one layout. The choice itself is
torchgpt.estimation.autosize (the memory estimator's analytic model, as tools/memory_estimate.py).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from torchgpt.config.job_config import ConfigError, JobConfig
from torchgpt.estimation.autosize import AutoSizing, apply, resolve
from torchgpt.utils.hardware import PrecisionChoice, device_memory_gib, resolve_mixed_precision

logger = logging.getLogger("torchgpt")


def smallest_device_memory_gib(device: torch.device) -> float:
    """This rank's device memory, reduced to the minimum over every rank."""
    gib = device_memory_gib(device.type, device.index or 0)
    if not dist.is_initialized():
        return gib
    box = torch.tensor([gib], dtype=torch.float64, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MIN)
    return float(box.item())


def agree_on_precision(choice: PrecisionChoice, device: torch.device) -> PrecisionChoice:
    """fp32 on every rank if any rank resolved fp32 (setup-time, one all-reduce): ranks on
    mixed hardware must still run one precision."""
    if not dist.is_initialized():
        return choice
    box = torch.tensor([choice.value == "bf16"], dtype=torch.float64, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MIN)
    if box.item() == 0 and choice.value == "bf16":
        return PrecisionChoice("fp32", f"another rank resolved fp32 (here: {choice.reason})")
    return choice


def resolve_precision(cfg: JobConfig, device: torch.device) -> PrecisionChoice:
    """Resolve training.mixed_precision (in place; "auto" by the hardware, the same on every
    rank) before anything sizes or builds the step; config.json then records the value.

    A resumed "auto" run keeps the precision of the checkpoint it continues: auto never changes
    a run's math (a probe on a busy CPU, or a move to other hardware, could otherwise flip it
    between launches); the log says what this hardware alone would have chosen."""
    from torchgpt.run.preflight import saved_config

    requested = cfg.training.mixed_precision
    choice = agree_on_precision(resolve_mixed_precision(requested, device.type), device)
    kept = (saved_config(cfg).get("training") or {}).get("mixed_precision")
    if requested == "auto" and kept in ("bf16", "fp32") and kept != choice.value:
        logger.warning(
            "mixed precision auto: keeping the resumed checkpoint's %s; on its own this device "
            "would run %s (%s). Set training.mixed_precision (with --checkpoint.allow_change "
            "training.mixed_precision) to change it",
            kept,
            choice.value,
            choice.reason,
        )
        choice = PrecisionChoice(kept, f"auto: kept the resumed checkpoint's {kept}")
    cfg.training.mixed_precision = choice.value
    return choice


def resolve_auto_sizing(cfg: JobConfig, device: torch.device, world_size: int) -> AutoSizing | None:
    """Replace the config's "auto" values by the estimator's choice (in place) and return it;
    None when nothing is "auto". A choice that cannot fit raises ConfigError (exit 2)."""
    if not cfg.sizing_is_auto:
        return None
    gib = cfg.training.device_memory_gib or smallest_device_memory_gib(device)
    try:
        sizing = resolve(cfg, world_size, gib)
    except ValueError as e:
        raise ConfigError([str(e)]) from None
    apply(cfg, sizing)
    return sizing
