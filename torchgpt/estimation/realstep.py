"""Ground truth for the estimates: the peak memory of a REAL training step on this CPU.

Method (per rank; see `measure_in_this_process`):
  1. glibc malloc is told to serve every allocation >= 64 KiB with its own mmap and to trim
     freed heap memory at once (mallopt M_MMAP_THRESHOLD / M_TRIM_THRESHOLD), so a freed
     tensor leaves the resident set immediately instead of being reused later from a cache;
     torch's CPU allocator is plain malloc/free, with no caching layer of its own.
  2. The trainer's own TrainModule is built (meta -> to_empty -> init_weights ->
     parallelize_gpt, the trainer's optimizer and clipping) and one warm-up step runs, so
     kernels and libraries are loaded and the
     AdamW state exists (the steady state of every later step); gradients are then dropped.
  3. The bytes of every storage alive at that point (parameters or their FSDP shards,
     buffers, AdamW state) are summed exactly from the tensors.
  4. The kernel's peak-RSS counter is reset (/proc/self/clear_refs, value 5), one full step
     (all micro-batches) runs, and the growth of peak RSS over the RSS before the step is
     the step's transient memory, measured by the OS, not by any PyTorch tool.
  real peak = resident tensor bytes (3) + peak RSS growth during the step (4).
The Python/torch runtime (~300 MB of RSS) cancels out because only growth is measured.
With 2+ ranks each process is measured separately (gloo, via torchgpt.testing).
"""

from __future__ import annotations

import base64
import ctypes
import gc
import json
import multiprocessing
import pickle
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from torchgpt.estimation.plan import TrainingPlan
from torchgpt.estimation.step import build_module, random_batch, run_train_step

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@dataclass
class RealPeak:
    """Real per-rank peak of one training step.

    Attributes:
        rank: process rank.
        resident_bytes: parameters + buffers + AdamW state before the step (exact).
        step_growth_bytes: growth of peak RSS during the step.
        peak_bytes: resident_bytes + step_growth_bytes.
        tracker_peak_bytes: PyTorch MemTracker on the real tensors of a further step, when
            requested (a cross-check that counts live tensors, not the OS view); else None.
        step_seconds: wall time of the measured step.
    """

    rank: int
    resident_bytes: int
    step_growth_bytes: int
    peak_bytes: int
    tracker_peak_bytes: int | None
    step_seconds: float


def _status_bytes(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}; the RSS method needs Linux")
    return int(match.group(1)) * 1024


def _reset_peak_rss() -> None:
    # Writing 5 resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0, proc(5)).
    Path("/proc/self/clear_refs").write_text("5")


def _unmap_freed_memory() -> None:
    libc = ctypes.CDLL("libc.so.6")
    if not (
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024) and libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
    ):
        raise RuntimeError("mallopt failed: the RSS method needs glibc")


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (DTensors counted by local shard)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        storage = local.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _resident_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list:
    tensors = list(model.parameters()) + list(model.buffers())
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


def _tracker_peak(module, plan: TrainingPlan) -> int:
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker

    from torchgpt.estimation.trace import sharding_propagation_untracked

    if plan.fsdp:
        tracker = FSDPMemTracker(module.model, module.optimizer)
    else:
        tracker = MemTracker()
        tracker.track_external(module.model, module.optimizer)
    with sharding_propagation_untracked(), tracker:
        run_train_step(
            module,
            plan,
            before_micro=lambda m: tracker.reset_mod_stats() if m else None,
        )
    module.optimizer.zero_grad(set_to_none=True)
    return sum(s["Total"] for s in tracker.get_tracker_snapshot("peak").values())


def measure_in_this_process(plan: TrainingPlan, *, with_tracker: bool = False) -> RealPeak:
    """Build, warm up and measure one real step in this process (see the module docstring).

    Changes this process's malloc settings and peak-RSS counter: run it in a child process
    (`measure_real_peak` does). With a process group initialized, it must span
    plan.world_size ranks.
    """
    _unmap_freed_memory()
    mesh = plan.dims.build_mesh("cpu")
    module = build_module(plan, mesh, fake=False)
    gen = torch.Generator().manual_seed(dist.get_rank() if dist.is_initialized() else 0)
    run_train_step(module, plan, num_micro=1, make_batch=lambda m: random_batch(plan, gen))
    module.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    resident = _storage_bytes(_resident_tensors(module.model, module.optimizer))
    before = _status_bytes("VmRSS")
    _reset_peak_rss()
    start = time.perf_counter()
    run_train_step(module, plan, make_batch=lambda m: random_batch(plan, gen))
    seconds = time.perf_counter() - start
    growth = _status_bytes("VmHWM") - before
    module.optimizer.zero_grad(set_to_none=True)
    tracked = _tracker_peak(module, plan) if with_tracker else None
    rank = dist.get_rank() if dist.is_initialized() else 0
    return RealPeak(rank, resident, growth, resident + growth, tracked, seconds)


def _rank_worker(plan_json: str, out_dir: str, with_tracker: bool) -> None:
    # FSDP2 warns that the root returns a view (the vocab slice): expected, harmless.
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
    plan = _plan_from_json(plan_json)
    result = measure_in_this_process(plan, with_tracker=with_tracker)
    Path(out_dir, f"rank{result.rank}.json").write_text(json.dumps(asdict(result)))


def _plan_to_json(plan: TrainingPlan) -> str:
    """The plan as text for the rank processes (pickled: it holds config dataclasses)."""
    return base64.b64encode(pickle.dumps(plan)).decode()


def _plan_from_json(text: str) -> TrainingPlan:
    return pickle.loads(base64.b64decode(text))


def measure_real_peak(plan: TrainingPlan, *, with_tracker: bool = False) -> list[RealPeak]:
    """Real peak of one step at plan.world_size processes, one result per rank.

    Every rank runs in a fresh spawned process, so this process is left untouched: 2+ ranks
    through torchgpt.testing.run_distributed_test (gloo, one thread per rank as torchrun
    sets), a single rank in one plain child process using all cores.
    """
    from torchgpt.testing import run_distributed_test

    with tempfile.TemporaryDirectory(prefix="torchgpt_realstep_") as out_dir:
        args = (_plan_to_json(plan), out_dir, with_tracker)
        if plan.world_size == 1:
            child = multiprocessing.get_context("spawn").Process(target=_rank_worker, args=args)
            child.start()
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(f"real-step measurement failed (exit code {child.exitcode})")
        else:
            run_distributed_test(_rank_worker, plan.world_size, args)
        results = [
            RealPeak(**json.loads(Path(out_dir, f"rank{r}.json").read_text()))
            for r in range(plan.world_size)
        ]
    return results


__all__ = ["RealPeak", "measure_in_this_process", "measure_real_peak"]
