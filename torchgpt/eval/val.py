"""Validation loss of a checkpoint on the prepared val shards, defined exactly as the trainer's.

`compute_val_loss` is the mean token cross-entropy in fp32 over the fixed val windows (summed in
float64, divided by the token count), the trainer's `validate()` on one process.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


@torch.no_grad()
def compute_val_loss(
    model: nn.Module, batches: Iterable[Batch], autocast_dtype: torch.dtype | None = None
) -> float:
    """Mean token cross-entropy of `model` over (inputs, targets) batches.

    Args:
        model: maps (B, T) token ids to (B, T, vocab) logits; put in eval mode for the call and
            restored after.
        batches: e.g. `build_val_batches(...)` with dp_world_size=1 (every val window).
        autocast_dtype: run the forward under autocast (torch.bfloat16 matches a bf16 training
            run); None runs in the parameters' dtype. The loss is always taken in fp32.

    Returns:
        Sum of per-token losses divided by the number of target tokens.

    Raises:
        ValueError: `batches` is empty.
    """
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    num_tokens = 0
    was_training = model.training
    model.eval()
    try:
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            ctx = (
                torch.autocast(device.type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with ctx:
                logits = model(inputs)  # (B, T, vocab)
            # Same reduction as Trainer.loss_fn: fp32 sum over tokens, float64 accumulation.
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
            total += loss.double()
            num_tokens += targets.numel()
    finally:
        model.train(was_training)
    if num_tokens == 0:
        raise ValueError("no validation batches: check the val shards and --val-tokens")
    return (total / num_tokens).item()


def perplexity(loss: float) -> float:
    """exp(loss), capped like the trainer's val_ppl so a diverged run stays finite."""
    return math.exp(min(loss, 50.0))


def evaluate_val(
    model: nn.Module,
    data_dir: str | os.PathLike,
    *,
    seq_len: int,
    num_tokens: int,
    micro_batch_size: int,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float | int]:
    """Val loss and perplexity over the first `num_tokens` of the val shards of `data_dir`.

    The windows are the trainer's validation set (`build_val_batches`) taken on one process, so
    the figure equals the trainer's val_loss for the same seq_len and token count.

    Returns:
        {"val_loss", "val_ppl", "val_tokens"}.
    """
    from torchgpt.data.loader import build_val_batches

    batches = build_val_batches(
        data_dir,
        seq_len=seq_len,
        micro_batch_size=micro_batch_size,
        num_tokens=num_tokens,
        dp_rank=0,
        dp_world_size=1,
        vocab_size=getattr(getattr(model, "args", None), "vocab_size", 50257),
    )
    loss = compute_val_loss(model, batches, autocast_dtype)
    used = sum(t.numel() for _, t in batches)
    return {"val_loss": loss, "val_ppl": perplexity(loss), "val_tokens": used}
