"""The training step the estimates trace and measure: built and run like torchgpt.train.Trainer.

`build_model` / `build_trainer_optimizer` call the trainer's own pieces (GPT, parallelize_gpt,
build_optimizer) with the trainer's arguments; `run_train_step` mirrors Trainer.train_step
(zero_grad -> micro-batches with gradient sync only on the last -> fp32 summed cross-entropy /
tokens -> backward -> clip_grad_norm_ -> AdamW step). torch.compile is always off here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from estimation.plan import TrainingPlan
from torchgpt.model.gpt import GPT
from torchgpt.optim import build_optimizer
from torchgpt.parallel.parallelize import parallelize_gpt

Batch = tuple[torch.Tensor, torch.Tensor]


@contextlib.contextmanager
def _fake_safe_to(model: nn.Module) -> Iterator[None]:
    """Make `model.to()` a no-op while parallelize_gpt runs on fake parameters.

    parallelize_gpt moves unsharded models with `model.to(device)`; for FakeTensor parameters
    torch swaps tensors and refuses ("Cannot swap t1 because it has weakref associated with
    it"). The parameters already live on the traced device, so skipping the move is exact.
    """
    model.to = lambda *args, **kwargs: model  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.to


def build_model(plan: TrainingPlan, mesh: object, *, fake: bool, seed: int = 0) -> nn.Module:
    """GPT built and parallelized as Trainer._build_model does (compile disabled).

    Args:
        plan: the layout.
        mesh: the DeviceMesh from ParallelDims.build_mesh (None on one process).
        fake: the caller is inside FakeTensorMode: build directly (the values are never read)
            instead of meta -> to_empty -> init_weights.
        seed: init seed for a real model.
    """
    if fake:
        model = GPT(plan.args)
    else:
        with torch.device("meta"):
            model = GPT(plan.args)
        model.to_empty(device="cpu")
        model.init_weights(seed=seed)
    ctx = _fake_safe_to(model) if fake else contextlib.nullcontext()
    with ctx:
        return parallelize_gpt(
            model,
            plan.dims,
            mesh,  # type: ignore[arg-type]
            device=torch.device("cpu"),
            ac_mode=plan.ac_mode,
            ac_selective_option=plan.ac_selective_option,
            compile_enable=False,
            param_dtype=torch.bfloat16 if plan.mixed_precision == "bf16" else torch.float32,
            reshard_after_forward=plan.reshard_after_forward,
        )


def build_trainer_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW with the trainer's parameter groups and default kernel choice (foreach on CPU)."""
    return build_optimizer(model, lr=1e-4, device_type="cpu")


def random_batch(plan: TrainingPlan, generator: torch.Generator | None = None) -> Batch:
    """(inputs, targets) of one micro-batch; memory does not depend on the token values."""
    shape = (plan.micro_batch_size, plan.seq_len)
    vocab = plan.args.vocab_size
    return (
        torch.randint(0, vocab, shape, generator=generator),
        torch.randint(0, vocab, shape, generator=generator),
    )


def run_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    plan: TrainingPlan,
    *,
    num_micro: int | None = None,
    make_batch: Callable[[int], Batch] | None = None,
    before_micro: Callable[[int], None] | None = None,
    around_clip: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> None:
    """One optimizer step exactly as Trainer.train_step runs it (minus logging and data).

    Args:
        model: from `build_model`.
        optimizer: from `build_trainer_optimizer`.
        plan: the layout (accumulation, precision).
        num_micro: micro-batches to run; default plan.grad_accum. Gradient sync is enabled on
            the last one only, like the trainer.
        make_batch: micro-step index -> (inputs, targets); default random tokens.
        before_micro: called before each micro-step (the tracer resets module stats there).
        around_clip: context manager factory wrapped around clip_grad_norm_ (the tracer
            pauses tracking there, see estimation.trace).
    """
    n = plan.grad_accum if num_micro is None else num_micro
    denom = plan.tokens_per_micro_batch * plan.grad_accum
    autocast = plan.precision_mode == "autocast-bf16"
    optimizer.zero_grad(set_to_none=True)
    for micro in range(n):
        if before_micro is not None:
            before_micro(micro)
        inputs, targets = make_batch(micro) if make_batch else random_batch(plan)
        last = micro == n - 1
        sync: contextlib.AbstractContextManager = contextlib.nullcontext()
        if plan.fsdp:
            model.set_requires_gradient_sync(last)  # type: ignore[operator]
        elif plan.ddp and not last:
            sync = model.no_sync()  # type: ignore[operator]
        with sync:
            cast = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if autocast
                else contextlib.nullcontext()
            )
            with cast:
                logits = model(inputs)
            # Trainer.loss_fn: fp32 summed cross-entropy over the step's tokens per rank.
            loss = (
                F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
                / denom
            )
            loss.backward()
    # Like the trainer, `logits` stays referenced until the next micro-step reassigns it (and
    # through the optimizer step after the last one): part of the real peak.
    with around_clip() if around_clip else contextlib.nullcontext():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    optimizer.step()


def prime_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Allocate AdamW state with one step on zero gradients, then drop the gradients.

    Leaves exactly the steady-state residents (parameters + exp_avg + exp_avg_sq + step)
    that every step after the first starts from.
    """
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
