"""build_train_module: a TrainModuleConfig -> the TrainModule, through the model's TrainSpec and
the optimizer's OptimizerSpec (the one builder the Trainer, the estimator and the benchmarks
call)."""

from __future__ import annotations

import torch

from torchgpt.optim.lr_schedule import build_lr_scheduler, wsd_decay_steps
from torchgpt.optim.registry import optimizer_spec
from torchgpt.parallel.dims import ParallelDims
from torchgpt.step.config import TrainModuleConfig
from torchgpt.step.train_module import TrainModule


def build_train_module(
    step: TrainModuleConfig,
    dims: ParallelDims,
    mesh,
    *,
    device: torch.device,
    init_on_meta: bool = True,
    compile_enable: bool | None = None,
    module_cls: type[TrainModule] | None = None,
) -> TrainModule:
    """Build the model (meta -> CPU -> init -> parallelize), optimizer and schedule of `step`.

    Every layout (1 process, FSDP2, HSDP, DDP) starts from bit-identical weights: the full model
    is materialized on CPU and initialized with `step.seed` *before* sharding (for a ~124M
    model the transient full copy per rank is 0.5 GB of host memory). `init_on_meta=False`
    builds it directly, for callers inside FakeTensorMode (the estimator's trace), which also
    pass `compile_enable=False` (inductor cannot run there; the fused loss choice stays the
    step's). `module_cls` is a TrainModule subclass to build instead (tests inject faults).
    """
    spec = step.spec
    if init_on_meta:
        with torch.device("meta"):
            model = spec.build_model(step.model_args)
        model.to_empty(device="cpu")
        torch.manual_seed(step.seed)
        model.init_weights(seed=step.seed)
    else:
        model = spec.build_model(step.model_args)
    model = spec.parallelize(
        model,
        dims,
        mesh,
        device=device,
        ac_mode=step.ac_mode,
        ac_selective_option=step.ac_selective_option,
        compile_enable=step.compile_enable if compile_enable is None else compile_enable,
        compile_whole_model=step.compile_whole_model,
        param_dtype=torch.bfloat16 if step.bf16 else torch.float32,
        reshard_after_forward=step.reshard_after_forward,
    )
    optimizer = optimizer_spec(step.optimizer.name).build(model, step.optimizer, device.type)
    s = step.lr_scheduler
    lr_scheduler = build_lr_scheduler(
        optimizer,
        warmup_steps=s.warmup_steps,
        total_steps=step.total_steps,
        decay_type=s.decay_type,
        min_lr_ratio=s.min_lr_ratio,
        decay_steps=wsd_decay_steps(s.decay_steps, s.decay_fraction, step.total_steps),
        wsd_shape=s.wsd_shape,
    )
    return (module_cls or TrainModule)(
        model,
        optimizer,
        lr_scheduler,
        dims=dims,
        device=device,
        vocab_size=step.model_args.vocab_size,
        bf16=step.bf16,
        fused_loss=step.compile_enable,
        max_norm=step.max_norm,
    )
