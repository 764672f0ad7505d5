"""AdamW with decay / no-decay parameter groups (nanoGPT, GPT-3): optimizer.name = adamw.

Weight decay applies to >= 2-D weights only (matmuls, embeddings); biases and norm gains are not
decayed. Its memory model: exp_avg + exp_avg_sq in fp32 per parameter (sharded under FSDP2), and
foreach's sqrt(exp_avg_sq) temporary at the update (the fused kernel updates in place).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from torchgpt.model.args import ModelArgs, num_local_params
from torchgpt.optim.registry import MemoryRows, OptimizerSpec


def kernel_kwargs(implementation: str, device_type: str) -> dict[str, bool]:
    """torch.optim.AdamW's kernel choice. `auto` picks the fused kernel on CUDA and CPU (one
    pass over each parameter and its state; on CPU about 7x faster than foreach, which makes ~10
    passes: bench/train_throughput.py) and foreach elsewhere."""
    if implementation == "auto":
        implementation = "fused" if device_type in ("cuda", "cpu") else "foreach"
    return {
        "fused": {"fused": True},
        "foreach": {"foreach": True},
        "for-loop": {"foreach": False},
    }[implementation]


def build_adamw(
    model: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = "auto",
    device_type: str = "cpu",
) -> torch.optim.Optimizer:
    """AdamW over the model's trainable parameters, decaying only those with dim >= 2. Tied
    parameters appear once (named_parameters de-duplicates them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    kwargs = kernel_kwargs(implementation, device_type)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def adamw_args(section: Any) -> dict[str, Any]:
    """AdamW's hyperparameters from the [optimizer] section (Muon's AdamW part takes them too)."""
    return {
        "lr": section.lr,
        "betas": (section.beta1, section.beta2),
        "eps": section.eps,
        "weight_decay": section.weight_decay,
    }


def _build(model: nn.Module, section: Any, device_type: str) -> torch.optim.Optimizer:
    return build_adamw(
        model, **adamw_args(section), implementation=section.implementation, device_type=device_type
    )


def local_params(args: ModelArgs, shard_degree: int, tp: int = 1) -> int:
    """Parameters one rank holds (the padded vocabulary included): its tensor-parallel slice
    (torchgpt.model.args.num_local_params), sharded `shard_degree` ways by FSDP2."""
    return math.ceil(num_local_params(args, tp) / shard_degree)


def _shard(shard_degree: int, tp: int = 1) -> str:
    """The label's divisors: " / tp T" under tensor parallelism, " / N" under FSDP2."""
    return (f" / tp {tp}" if tp > 1 else "") + (f" / {shard_degree}" if shard_degree > 1 else "")


def _state_rows(args: ModelArgs, shard_degree: int, tp: int) -> MemoryRows:
    label = f"AdamW exp_avg + exp_avg_sq (fp32){_shard(shard_degree, tp)}"
    return [(label, "optimizer state", 8 * local_params(args, shard_degree, tp))]


def step_rows(
    args: ModelArgs, shard_degree: int, sharded: bool, section: Any, tp: int
) -> MemoryRows:
    """foreach's temporary of one fp32 tensor per parameter (none for fused / for-loop)."""
    if section.implementation != "foreach":
        return []
    return [("foreach AdamW temporary", "transient", 4 * local_params(args, shard_degree, tp))]


SPEC = OptimizerSpec(
    build=_build,
    state_rows=_state_rows,
    step_rows=step_rows,
    doc="AdamW everywhere (lr, beta1, beta2, eps, weight_decay, implementation)",
)
