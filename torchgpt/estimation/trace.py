"""Measured estimate: trace one real training step under FakeTensorMode and read the peak.

The step is the trainer's own TrainModule (torchgpt.estimation.step), built and parallelized inside
FakeTensorMode, with a fake process group of the requested world size when it is > 1, so
FSDP2 shards, all-gathers and reduce-scatters exactly as on that many GPUs while this single
process allocates no tensor memory. PyTorch's FSDPMemTracker (FSDP2) or MemTracker (one device)
records every storage created and freed and reports the peak with its categories.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator

import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack, _pop_mode_temporarily

from torchgpt.estimation.memory import MemoryEstimate, MemoryItem
from torchgpt.estimation.plan import TrainingPlan
from torchgpt.estimation.step import (
    build_module,
    fused_loss_stand_in,
    prime_optimizer_state,
    run_train_step,
)

logger = logging.getLogger(__name__)

# Micro-steps traced: the first (no gradients yet), one middle (accumulated gradients present,
# no sync) and the last (gradient sync). Later middle steps repeat the middle one exactly.
_MAX_TRACED_MICRO = 3


def _init_fake_process_group(world_size: int) -> None:
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)


@contextlib.contextmanager
def sharding_propagation_untracked() -> Iterator[None]:
    """Keeps DTensor's sharding propagation out of a MemTracker on top of the mode stack.

    To learn an op's output shape, DTensor runs it on fake tensors of the global shapes
    (ShardingPropagator._propagate_tensor_meta_non_cached): no memory of the step, but a tracker
    on the stack counts them. Whether that runs inside a step depends on torch's sharding cache:
    torch 2.11 re-propagates the optimizer step's _fused_adamw_ (and Muon's add_ when its alpha
    changed), and its trackers then took global-shape fake copies of every parameter, gradient
    and moment for a peak (98 MiB over the debug model's 0.66 MiB Muon step); 2.13 finds them
    cached. The propagation runs with the tracker popped, on every torch that has the method.
    """
    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    name = "_propagate_tensor_meta_non_cached"
    propagate = getattr(ShardingPropagator, name, None)
    if propagate is None:
        yield
        return

    def untracked(self, op_schema):
        stack = _get_current_dispatch_mode_stack()
        if not stack or not isinstance(stack[-1], MemTracker):
            return propagate(self, op_schema)
        with _pop_mode_temporarily():
            return propagate(self, op_schema)

    setattr(ShardingPropagator, name, untracked)
    try:
        yield
    finally:
        setattr(ShardingPropagator, name, propagate)


@contextlib.contextmanager
def meshes_made_real() -> Iterator[None]:
    """Every DeviceMesh made inside the trace is made with the fake mode off: a mesh computes
    its rank coordinates from a small int tensor (with nonzero(), which FakeTensorMode cannot
    run), and building the model makes new ones (the flattened batch mesh of HSDP x TP, and
    FSDP2's join of the data-parallel and tensor-parallel meshes for every DTensor
    parameter). No tensor of the step is made there."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.distributed.device_mesh import DeviceMesh

    init = DeviceMesh.__init__

    def real_init(self, *args, **kwargs):
        with unset_fake_temporarily():
            init(self, *args, **kwargs)

    DeviceMesh.__init__ = real_init
    try:
        yield
    finally:
        DeviceMesh.__init__ = init


def _peak_items(tracker: MemTracker) -> tuple[int, list[MemoryItem]]:
    """Peak total and the tracker's categories at the peak, summed over devices."""
    snapshot = tracker.get_tracker_snapshot("peak")
    total, by_kind = 0, {}
    for dev_snap in snapshot.values():
        for key, nbytes in dev_snap.items():
            if key == "Total":
                total += nbytes
            elif nbytes:
                name = getattr(key, "value", str(key))
                by_kind[name] = by_kind.get(name, 0) + nbytes
    return total, [MemoryItem(name, name, nbytes) for name, nbytes in by_kind.items()]


def trace_memory(plan: TrainingPlan) -> MemoryEstimate:
    """Per-rank peak memory of one steady-state training step, traced without allocating.

    Args:
        plan: the layout; `plan.world_size` ranks are simulated with a fake process group.

    Returns:
        A MemoryEstimate whose items are the tracker's categories at the peak.

    Raises:
        ValueError: a process group is already initialized in this process, or the layout is
            DDP (DDP's constructor reads parameter data, which fake tensors do not have).
    """
    if plan.ddp:
        raise ValueError(
            "data_parallel='ddp' cannot be traced under FakeTensorMode (DDP reads parameter "
            "data when it is built); use the analytic estimate or data_parallel='fsdp'"
        )
    if plan.world_size > 1 and dist.is_initialized():
        raise ValueError(
            "trace_memory needs a process without a process group: it creates a fake one of "
            f"world size {plan.world_size}"
        )
    start = time.perf_counter()
    if plan.world_size > 1:
        _init_fake_process_group(plan.world_size)
    try:
        with warnings.catch_warnings():
            # FSDP2 warns that the root returns a view (the vocab slice): expected, harmless.
            warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
            peak, items = _trace(plan)
    finally:
        if plan.world_size > 1:
            dist.destroy_process_group()
    n_micro = min(plan.grad_accum, _MAX_TRACED_MICRO)
    notes = [
        f"traced {n_micro} of {plan.grad_accum} micro-batches (first, middle, last; "
        "the others repeat the middle one)",
        "traced eagerly (no inductor under fake tensors); with compile on, the fused loss's "
        "allocations stand in for its kernel",
        "CPU kernels traced; GPU attention/autocast kernels save nearly the same tensors",
    ]
    logger.info("traced %s in %.1f s", plan.flavor, time.perf_counter() - start)
    return MemoryEstimate("traced", peak, "tracker peak", items, notes)


def _trace(plan: TrainingPlan) -> tuple[int, list[MemoryItem]]:
    mesh = plan.dims.build_mesh("cpu")
    with FakeTensorMode(), fused_loss_stand_in(), meshes_made_real():
        module = build_module(plan, mesh, fake=True)
        prime_optimizer_state(module)
        if plan.fsdp:
            tracker: MemTracker = FSDPMemTracker(module.model, module.optimizer)
        else:
            tracker = MemTracker()
            # Parameters and AdamW state exist before the step: register them up front.
            tracker.track_external(module.model, module.optimizer)

        def before_micro(micro: int) -> None:
            if micro > 0:
                # The trackers refuse a second root forward unless per-module stats are reset;
                # the global peak is kept.
                tracker.reset_mod_stats()

        n_micro = min(plan.grad_accum, _MAX_TRACED_MICRO)
        with sharding_propagation_untracked(), tracker:
            run_train_step(
                module,
                plan,
                num_micro=n_micro,
                before_micro=before_micro,
                around_clip=_pop_mode_temporarily if plan.fsdp else None,
            )
        return _peak_items(tracker)
