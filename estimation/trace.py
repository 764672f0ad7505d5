"""Measured estimate: trace one real training step under FakeTensorMode and read the peak.

The step is the trainer's own TrainModule (estimation.step), built and parallelized inside
FakeTensorMode, with a fake process group of the requested world size when it is > 1, so
FSDP2 shards, all-gathers and reduce-scatters exactly as on that many GPUs while this single
process allocates no tensor memory. PyTorch's FSDPMemTracker (FSDP2) or MemTracker (one device)
records every storage created and freed and reports the peak with its categories.
"""

from __future__ import annotations

import logging
import time
import warnings

import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils._python_dispatch import _pop_mode_temporarily

from estimation.memory import MemoryEstimate, MemoryItem
from estimation.plan import TrainingPlan
from estimation.step import build_module, prime_optimizer_state, run_train_step

logger = logging.getLogger(__name__)

# Micro-steps traced: the first (no gradients yet), one middle (accumulated gradients present,
# no sync) and the last (gradient sync). Later middle steps repeat the middle one exactly.
_MAX_TRACED_MICRO = 3


def _init_fake_process_group(world_size: int) -> None:
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)


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
        "torch.compile disabled for the trace (compile changes activation memory)",
        "CPU kernels traced; GPU attention/autocast kernels save nearly the same tensors",
    ]
    logger.info("traced %s in %.1f s", plan.flavor, time.perf_counter() - start)
    return MemoryEstimate("traced", peak, "tracker peak", items, notes)


def _trace(plan: TrainingPlan) -> tuple[int, list[MemoryItem]]:
    mesh = plan.dims.build_mesh("cpu")
    with FakeTensorMode():
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
        with tracker:
            run_train_step(
                module,
                plan,
                num_micro=n_micro,
                before_micro=before_micro,
                around_clip=_pop_mode_temporarily if plan.fsdp else None,
            )
        return _peak_items(tracker)
