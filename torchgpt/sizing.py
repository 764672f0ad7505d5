"""Resolve `"auto"` micro-batch / activation checkpointing at start, the same on every rank.

Each rank measures its device (torchgpt.hardware.device_memory_gib) unless
`training.device_memory_gib` gives the figure; the smallest over all ranks is what every rank
sizes for, so a job on mixed GPUs still agrees on one layout. The choice itself is
estimation.autosize (the memory estimator's analytic model, as tools/memory_estimate.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from estimation.autosize import AutoSizing, apply, resolve
from torchgpt.config import ConfigError, JobConfig
from torchgpt.hardware import device_memory_gib


def smallest_device_memory_gib(device: torch.device) -> float:
    """This rank's device memory, reduced to the minimum over every rank."""
    gib = device_memory_gib(device.type, device.index or 0)
    if not dist.is_initialized():
        return gib
    box = torch.tensor([gib], dtype=torch.float64, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MIN)
    return float(box.item())


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
