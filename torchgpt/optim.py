"""AdamW with decay / no-decay parameter groups, and the warmup + cosine learning-rate schedule.

Weight decay applies to >= 2-D weights only (matmuls, embeddings); biases and norm gains are not
decayed (nanoGPT, GPT-3). The schedule is a LambdaLR so its state checkpoints like any Stateful.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = "auto",
    device_type: str = "cpu",
    muon: dict[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """AdamW over the model's trainable parameters, decaying only those with dim >= 2; with
    `muon` (MuonWithAdamW's muon_* keyword arguments), Muon for the blocks' matrices and this
    AdamW for the rest (torchgpt/muon.py).

    `auto` picks the fused kernel on CUDA and CPU (one pass over each parameter and its state;
    on CPU about 7x faster than foreach, which makes ~10 passes: bench/train_throughput.py) and
    foreach elsewhere. Tied parameters appear once (named_parameters de-duplicates them).
    """
    if implementation == "auto":
        implementation = "fused" if device_type in ("cuda", "cpu") else "foreach"
    kwargs = {
        "fused": {"fused": True},
        "foreach": {"foreach": True},
        "for-loop": {"foreach": False},
    }[implementation]
    if muon is not None:
        from torchgpt.muon import MuonWithAdamW

        return MuonWithAdamW(
            model,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            adamw_kwargs=kwargs,
            **muon,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def muon_options(cfg: Any) -> dict[str, Any] | None:
    """build_optimizer's `muon` argument from the [optimizer] config section (None for AdamW)."""
    if cfg.name != "muon":
        return None
    return {
        "muon_lr": cfg.muon_lr,
        "muon_momentum": cfg.muon_momentum,
        "muon_weight_decay": cfg.muon_weight_decay,
        "muon_ns_steps": cfg.muon_ns_steps,
        "muon_adjust_lr": cfg.muon_adjust_lr,
    }


def lr_multiplier(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    decay_type: Literal["cosine", "linear", "constant", "geometric"] = "cosine",
    min_lr_ratio: float = 0.1,
) -> float:
    """lr / peak_lr at optimizer step `step` (0-based: the multiplier used *for* step+1).

    Linear warmup from 1/warmup to 1 so the first step is not a zero-lr no-op, then decay to
    min_lr_ratio at the final step (Chinchilla: decaying to ~10% of peak over the run).
    "geometric" is the lr range test's sweep instead: no warmup, a geometric rise from
    min_lr_ratio at the first step to 1 at the last (tools/lr_range_test.py).
    """
    if decay_type == "geometric":
        return min_lr_ratio ** (1.0 - min(step, total_steps - 1) / max(total_steps - 1, 1))
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    if decay_type == "constant":
        return 1.0
    if decay_type == "linear":
        frac = 1.0 - progress
    else:
        frac = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * frac


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_steps: int,
    total_steps: int,
    decay_type: Literal["cosine", "linear", "constant", "geometric"] = "cosine",
    min_lr_ratio: float = 0.1,
) -> LambdaLR:
    def fn(step: int) -> float:
        return lr_multiplier(
            step,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            decay_type=decay_type,
            min_lr_ratio=min_lr_ratio,
        )

    return LambdaLR(optimizer, fn)
