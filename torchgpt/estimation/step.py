"""The training step the estimates trace and measure: torchgpt's own TrainModule.

`build_module` calls the Trainer's builder (torchgpt.step.build.build_train_module) with the
plan's TrainModuleConfig, so the model, parallelization, optimizer and clipping are the
trainer's;
`run_train_step` drives that module's forward_backward -> clip_grad_norm -> step over random
micro-batches. Nothing here runs a backward or an optimizer update of its own. A real module
is compiled as the plan says (the Trainer's per-block compile and fused loss); a fake one for
the tracer is not (FakeTensorMode cannot run inductor) and takes `fused_loss_stand_in`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from torchgpt.estimation.plan import TrainingPlan
from torchgpt.step.build import build_train_module
from torchgpt.step.train_module import TrainModule

Batch = tuple[torch.Tensor, torch.Tensor]


def build_module(plan: TrainingPlan, mesh: object, *, fake: bool, seed: int = 0) -> TrainModule:
    """The TrainModule the Trainer would build for `plan` (compiled when real and the plan
    compiles; a fake one keeps the plan's loss choice but runs eagerly).

    Args:
        plan: the layout.
        mesh: the DeviceMesh from ParallelDims.build_mesh (None on one process).
        fake: the caller is inside FakeTensorMode: build directly (the values are never read)
            instead of meta -> to_empty -> init_weights, and without torch.compile.
        seed: init seed for a real model.
    """
    step = plan.step.replace(seed=seed)
    module = build_train_module(
        step,
        plan.dims,
        mesh,
        device=torch.device("cpu"),
        init_on_meta=not fake,
        compile_enable=False if fake else None,  # a fake one: fused_loss_stand_in stands in
    )
    return module


class _FusedLossAllocations(torch.autograd.Function):
    """What the compiled fused cross-entropy allocates, for the tracer: it saves the logits as
    they are, keeps a (B*T,) fp32 log-sum-exp, and its backward writes one gradient of the
    logits' shape and dtype. Values are never read (FakeTensorMode)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
        lse = logits.new_empty(logits.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(logits, targets, lse)
        return lse.sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, _, _ = ctx.saved_tensors
        return torch.empty_like(logits), None, None


@contextlib.contextmanager
def fused_loss_stand_in():
    """Inside FakeTensorMode, where inductor cannot run: the fused loss's allocations
    (_FusedLossAllocations) in place of the compiled kernel, so a trace of a compiled plan
    sees the loss memory the compiled step has, not the eager kernel's fp32 temporaries."""
    from torchgpt.step import train_module

    compiled = train_module._compiled_cross_entropy_sum
    train_module._compiled_cross_entropy_sum = _FusedLossAllocations.apply
    try:
        yield
    finally:
        train_module._compiled_cross_entropy_sum = compiled


def random_batch(plan: TrainingPlan, generator: torch.Generator | None = None) -> Batch:
    """(inputs, targets) of one micro-batch; memory does not depend on the token values."""
    shape = (plan.micro_batch_size, plan.seq_len)
    vocab = plan.args.vocab_size
    return (
        torch.randint(0, vocab, shape, generator=generator),
        torch.randint(0, vocab, shape, generator=generator),
    )


def run_train_step(
    module: TrainModule,
    plan: TrainingPlan,
    *,
    num_micro: int | None = None,
    make_batch: Callable[[int], Batch] | None = None,
    before_micro: Callable[[int], None] | None = None,
    around_clip: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> None:
    """One optimizer step of `module`, exactly as the Trainer runs it (minus logging and data).

    Args:
        module: from `build_module`.
        plan: the layout (accumulation).
        num_micro: micro-batches to run; default plan.grad_accum. Gradient sync is enabled on
            the last one only, as in the trainer.
        make_batch: micro-step index -> (inputs, targets); default random tokens.
        before_micro: called before each micro-step (the tracer resets module stats there).
        around_clip: context manager factory wrapped around the clipping (the tracer pauses
            tracking there, see torchgpt.estimation.trace).
    """
    n = plan.grad_accum if num_micro is None else num_micro
    batches = [make_batch(m) if make_batch else random_batch(plan) for m in range(n)]
    module.forward_backward(batches, before_micro=before_micro)
    with around_clip() if around_clip else contextlib.nullcontext():
        module.clip_grad_norm()
    module.step()


def prime_optimizer_state(module: TrainModule) -> None:
    """Allocate the optimizer state with one update on zero gradients, then drop the gradients.

    Leaves exactly the steady-state residents (parameters + the optimizer state: AdamW's
    exp_avg + exp_avg_sq + step, or Muon's momentum buffers for its matrices)
    that every step after the first starts from.
    """
    for p in module.model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    module.step()
    module.optimizer.zero_grad(set_to_none=True)
