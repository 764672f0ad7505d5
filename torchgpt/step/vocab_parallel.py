"""Loss parallel: the cross-entropy of logits split over the vocabulary, on the shards.

With `parallelism.loss_parallel` (tp > 1) the lm-head leaves each tensor-parallel rank the
(B, T, Vp/tp) columns of its vocabulary slice (torchgpt.parallel.parallelize.apply_tp). The loss
needs, per token, the log-sum-exp over all columns and the target's logit: three all-reduces of
B*T numbers (max, sum of exponentials, target logit) over the tp group, never the (B*T, V)
matrix. Like torchgpt.step.train_module's fused loss, it saves the logits as they are (their
compute dtype) plus an fp32 log-sum-exp, and works in place on one fp32 copy of the slice, so
a rank holds (2 x compute + 4) bytes per token and column of its slice at the backward's peak
(8 / tp at bf16), where torch's loss_parallel() keeps four fp32 copies (16 / tp).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


class _VocabParallelCrossEntropySum(torch.autograd.Function):
    """Summed cross-entropy of (N, W) logits holding columns [start, start + W) of the padded
    vocabulary; columns >= vocab_size are padding (-inf). The same value on every rank of
    `group`; the gradient of each rank's columns stays on that rank (no backward collective)."""

    @staticmethod
    def forward(ctx, logits, targets, vocab_size: int, start: int, group) -> torch.Tensor:
        width = logits.shape[1]
        cols = torch.arange(start, start + width, device=logits.device)
        pad = cols >= vocab_size  # (W,)
        local = targets - start
        mine = (local >= 0) & (local < width)  # (N,): the target column lies in this slice
        local = local.clamp(0, width - 1)[:, None]
        x = logits.to(torch.float32, copy=True).masked_fill_(pad, float("-inf"))  # one copy
        target_logit = x.gather(1, local).squeeze(1).masked_fill_(~mine, 0.0)
        row_max = x.amax(dim=1)
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        sum_exp = x.sub_(row_max[:, None]).exp_().sum(dim=1)
        del x
        dist.all_reduce(sum_exp, group=group)
        dist.all_reduce(target_logit, group=group)
        lse = row_max + sum_exp.log()  # (N,) fp32
        ctx.save_for_backward(logits, lse, pad, local, mine)
        return (lse - target_logit).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, lse, pad, local, mine = ctx.saved_tensors
        p = logits.to(torch.float32, copy=True).masked_fill_(pad, float("-inf"))
        p.sub_(lse[:, None]).exp_()  # the softmax of the slice
        p.scatter_add_(1, local, -mine.to(p.dtype)[:, None])  # minus the one-hot target
        return p.mul_(grad).to(logits.dtype), None, None, None, None


def vocab_parallel_cross_entropy_sum(
    logits: DTensor, targets: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """Summed fp32 cross-entropy of (B, T, Vp) logits sharded over the vocabulary (Shard(-1) on a
    1-D tp mesh, Vp divisible by its size) against (B, T) targets; a plain 0-d tensor, the
    same on every tp rank."""
    mesh = logits.device_mesh
    local = logits.to_local()  # (B, T, Vp/tp), differentiable: its gradient is the DTensor's
    start = mesh.get_local_rank() * local.shape[-1]
    return _VocabParallelCrossEntropySum.apply(
        local.flatten(0, 1), targets.flatten(), vocab_size, start, mesh.get_group()
    )
