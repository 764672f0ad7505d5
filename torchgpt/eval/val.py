"""Validation loss of a checkpoint on the prepared val shards, defined exactly as the trainer's.

`compute_val_loss` is the mean token cross-entropy in fp32 over the fixed val windows (summed in
float64, divided by the token count): torchgpt.step.train_module.mean_token_loss, the function
the
trainer validates with, on one process.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable

import torch
from torch import nn

from torchgpt.step.train_module import mean_token_loss, perplexity

Batch = tuple[torch.Tensor, torch.Tensor]


def compute_val_loss(
    model: nn.Module, batches: Iterable[Batch], autocast_dtype: torch.dtype | None = None
) -> float:
    """Mean token cross-entropy of `model` over (inputs, targets) batches, on one process.

    Args:
        model: maps (B, T) token ids to (B, T, vocab) logits; put in eval mode for the call and
            restored after.
        batches: e.g. `build_val_batches(...)` with dp_world_size=1 (every val window).
        autocast_dtype: run the forward under autocast (torch.bfloat16 matches a bf16 training
            run); None runs in the parameters' dtype. The loss is always taken in fp32.

    Returns:
        Sum of per-token losses divided by the number of target tokens (the trainer's
        definition: torchgpt.step.train_module.mean_token_loss).

    Raises:
        ValueError: `batches` is empty.
    """
    device_type = next(model.parameters()).device.type
    autocast = None
    if autocast_dtype is not None:
        autocast = functools.partial(torch.autocast, device_type, dtype=autocast_dtype)
    return mean_token_loss(model, batches, autocast=autocast)


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
