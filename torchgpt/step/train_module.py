"""The training step as one unit: model, optimizer, lr schedule, loss, precision and grad sync.

`TrainModule` (OLMo-core's TrainModule shape) owns everything a step touches and exposes the step
in three calls: `forward_backward(micro_batches)`, `clip_grad_norm()`, `step()`; plus
`eval_loss(batches)`. The Trainer keeps the loop, cadence, preemption and logging; the estimator,
the benchmarks, tools/lr_range_test.py and the tests drive the same object with batches they
choose, so every measurement of "the step" measures this code.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from torchgpt.parallel.dims import ParallelDims
from torchgpt.parallel.parallelize import reduce_partial_grads
from torchgpt.step.vocab_parallel import vocab_parallel_cross_entropy_sum

Batch = tuple[torch.Tensor, torch.Tensor]


def token_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed fp32 cross-entropy of (B, T, V) logits against (B, T) targets."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")


class _CrossEntropySum(torch.autograd.Function):
    """token_cross_entropy_sum over the first `vocab_size` columns, gradient (softmax - onehot) * g.

    Meant to be compiled: inductor fuses each direction into one pass over the logits in their
    own dtype with fp32 math, never materializing an fp32 (B*T, V) copy. Columns >= vocab_size
    (the padded vocabulary) are masked out of the softmax and get an exact zero gradient, so
    the model can hand over its padded logits and skip the zero-padding copy of the slice's
    backward. Compiling F.cross_entropy instead also fuses, but its NLL backward becomes a
    one-hot row sum over all V columns per token. Targets must be ids < vocab_size.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
        x, t = logits.flatten(0, 1), targets.flatten()  # (B*T, V), (B*T,)
        col = torch.arange(x.size(1), device=x.device)
        xf = torch.where(col < vocab_size, x.float(), float("-inf"))
        lse = torch.logsumexp(xf, dim=-1)  # (B*T,)
        picked = x.gather(1, t[:, None]).squeeze(1).float()  # logit of the target, (B*T,)
        ctx.save_for_backward(logits, targets, lse)
        ctx.vocab_size = vocab_size
        return (lse - picked).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, targets, lse = ctx.saved_tensors
        x, t = logits.flatten(0, 1), targets.flatten()
        col = torch.arange(x.size(1), device=x.device)[None, :]
        p = torch.where(col < ctx.vocab_size, torch.exp(x.float() - lse[:, None]), 0.0)
        dx = torch.where(col == t[:, None], p - 1.0, p) * grad
        return dx.to(logits.dtype).view_as(logits), None, None


@torch.compile
def _compiled_cross_entropy_sum(
    logits: torch.Tensor, targets: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    # Compiled, the loss and its backward are one fused pass each over the bf16 logits instead
    # of ~10 eager passes over an fp32 (B*T, V) copy: with a 50K vocab these were the largest
    # non-matmul cost of a step (bench/train_throughput.py).
    return _CrossEntropySum.apply(logits, targets, vocab_size)


def precision_mode(bf16: bool, *, fsdp: bool) -> Literal["fp32", "fsdp-bf16", "autocast-bf16"]:
    """How bf16 is applied: FSDP2's MixedPrecisionPolicy when sharded (it casts the parameters
    itself), autocast otherwise (one device or DDP); nothing in fp32."""
    if not bf16:
        return "fp32"
    return "fsdp-bf16" if fsdp else "autocast-bf16"


def token_loss(
    logits: torch.Tensor, targets: torch.Tensor, denom: int, *, vocab_size: int, fused: bool
) -> torch.Tensor:
    """Summed token cross-entropy in fp32 over the first `vocab_size` logit columns, / denom.

    `fused` takes the compiled single-pass kernel (no fp32 copy of the logits); otherwise the
    padded columns are sliced off and F.cross_entropy runs eagerly. Both give the same value.
    """
    if isinstance(logits, DTensor):  # loss parallel: split over the vocabulary
        return vocab_parallel_cross_entropy_sum(logits, targets, vocab_size) / denom
    if fused:
        return _compiled_cross_entropy_sum(logits, targets, vocab_size) / denom
    return token_cross_entropy_sum(logits[..., :vocab_size], targets) / denom


class TrainModule:
    """Model, optimizer and lr schedule with the loss and the precision / gradient-sync policy.

    Args:
        model: The parallelized model (parallelize_gpt's result).
        optimizer: Its optimizer.
        lr_scheduler: Stepped once per optimizer step (also when a step is skipped).
        dims: The data-parallel layout the model was parallelized for.
        device: Where the model computes; batches are moved there.
        vocab_size: Real vocabulary; the model's padded logit columns are masked out.
        bf16: bf16 compute (FSDP2 casts parameters itself; otherwise autocast).
        fused_loss: Use the compiled fused cross-entropy (set with torch.compile).
        max_norm: Gradient clipping norm; <= 0 turns clipping off (the norm is still computed).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        dims: ParallelDims,
        device: torch.device,
        vocab_size: int,
        bf16: bool,
        fused_loss: bool,
        max_norm: float,
    ) -> None:
        self.model, self.optimizer, self.lr_scheduler = model, optimizer, lr_scheduler
        self.dims, self.vocab_size, self.bf16 = dims, vocab_size, bf16
        self.fused_loss, self.max_norm, self.device = fused_loss, max_norm, device

    # ---- policies ------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if precision_mode(self.bf16, fsdp=self.dims.fsdp_enabled) == "autocast-bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def grad_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        """Reduce gradients only on the last micro-step of an accumulation window."""
        if self.dims.fsdp_enabled:
            self.model.set_requires_gradient_sync(enabled)
            return contextlib.nullcontext()
        if self.dims.ddp_enabled and not enabled:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def loss_fn(self, logits: torch.Tensor, targets: torch.Tensor, denom: int) -> torch.Tensor:
        """Summed token cross-entropy in fp32 divided by the step's token count per rank.

        Dividing by the same denominator on every micro-step (not a per-micro-batch mean) makes
        accumulation exact; FSDP/DDP then average over ranks -> the mean over the global batch.
        """
        return token_loss(logits, targets, denom, vocab_size=self.vocab_size, fused=self.fused_loss)

    # ---- the step ------------------------------------------------------------------------
    def micro_step(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        denom: int,
        sync_grads: bool,
        after_forward: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its (detached) share of the loss.

        `after_forward` runs between the loss and the backward (bench/ times the two there).
        """
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        with self.grad_sync(sync_grads):
            with self.autocast():
                logits = self.model(inputs, padded_vocab=True)  # loss_fn masks the padding
            loss = self.loss_fn(logits, targets, denom)
            # Drop the logits before backward: autograd keeps what it needs, and holding this
            # reference kept a (B, T, V) tensor alive through backward (~1.5 GiB at the recipe's
            # micro-batch, found by estimation/).
            del logits
            if after_forward is not None:
                after_forward()
            loss.backward()
        return loss.detach()

    def forward_backward(
        self,
        micro_batches: Sequence[Batch],
        *,
        before_micro: Callable[[int], None] | None = None,
        after_forward: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Zero the gradients, then forward/backward over the micro-batches of one step.

        Gradients are reduced across ranks only on the last micro-batch. Returns this rank's
        loss summed over the micro-batches (a 0-d tensor, no host sync).

        Args:
            micro_batches: (inputs, targets) pairs, all of the same shape.
            before_micro: Called with the index before each micro-batch (the memory tracer
                resets its per-module statistics there).
            after_forward: Called after each micro-batch's loss, before its backward.
        """
        self.optimizer.zero_grad(set_to_none=True)
        n = len(micro_batches)
        denom = micro_batches[0][1].numel() * n
        loss_sum = torch.zeros((), device=self.device)
        for micro, (inputs, targets) in enumerate(micro_batches):
            if before_micro is not None:
                before_micro(micro)
            last = micro == n - 1
            loss_sum += self.micro_step(
                inputs, targets, denom=denom, sync_grads=last, after_forward=after_forward
            )
        if self.dims.tp_enabled:  # whole gradients for clipping, statistics and the optimizer
            reduce_partial_grads(self.model)
        return loss_sum

    def clip_grad_norm(self) -> torch.Tensor:
        """Clip to max_norm (when > 0); returns the global gradient norm as a plain tensor."""
        max_norm = self.max_norm if self.max_norm > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm, foreach=True)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2: materialize the global norm
            norm = norm.full_tensor()
        return norm

    def step(self, *, apply: bool = True) -> None:
        """Apply the optimizer update (or drop the gradients when `apply` is False), then
        advance the lr schedule."""
        if apply:
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()

    def eval_loss(self, batches: Sequence[Batch]) -> float:
        """Mean token cross-entropy over `batches` of every rank (all-reduced)."""
        return mean_token_loss(
            self.model,
            batches,
            autocast=self.autocast,
            loss_sum=lambda logits, targets: self.loss_fn(logits, targets, 1),
            all_reduce=True,
            group=self.dims.loss_group(),
        )


def perplexity(loss: float) -> float:
    """exp(loss), capped at exp(50) so that a diverged run still logs a finite number."""
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def mean_token_loss(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = token_cross_entropy_sum,
    all_reduce: bool = False,
    group: dist.ProcessGroup | None = None,
) -> float:
    """The validation loss: summed fp32 token cross-entropy / target tokens, in float64.

    The one definition of validation, used by the Trainer (through TrainModule.eval_loss,
    across ranks) and by the evaluation tools (torchgpt.eval.val, one process).

    Args:
        model: (B, T) ids -> (B, T, vocab) logits; in eval mode for the call, restored after.
        batches: (inputs, targets) pairs.
        autocast: context-manager factory around each forward (None: parameters' dtype).
        loss_sum: summed loss of one batch's logits and targets.
        all_reduce: sum over the ranks of `group` (the loss mesh's; None: the default
            group) before dividing.

    Raises:
        ValueError: no target tokens at all.
    """
    device = next(model.parameters()).device
    total = torch.zeros(2, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = model(inputs)  # (B, T, vocab)
            total[0] += loss_sum(logits, targets).double()
            total[1] += targets.numel()
    finally:
        model.train(was_training)
    if all_reduce and dist.is_initialized():
        dist.all_reduce(total, group=group)
    if total[1].item() == 0:
        raise ValueError("no validation batches: check the val shards and validation.tokens")
    return (total[0] / total[1]).item()
