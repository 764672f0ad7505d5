#!/usr/bin/env python
"""Checkpoint save/load time and throughput of the bench model with its AdamW state.

One process, the real CheckpointManager (DCP FileSystemWriter, fsync on, atomic rename): a
sync save blocks training for the whole write; an async save blocks only while the state is
staged into CPU memory, and the write goes on in a background thread. "blocked" is the time
`save()` kept the training loop waiting; "total" is until the checkpoint is COMPLETE on disk.
Loads read a checkpoint that was just written, so they come from a warm page cache. Sizes are
the bytes of the step folder; MB/s = size / time. Median (and min) of --repeats saves after
one warm-up save. The blocked figure of an async save is its staging rate (a memory copy).
Every save ends with CRC-32 checksums of its files and every load starts by verifying them
(torchgpt.checkpoint.integrity): both are shown as part of their totals.

--threads defaults to 1, what torchrun gives each rank: with more threads than free cores,
every one of the ~300 per-tensor copies waits on an OpenMP barrier and staging gets several
times slower (1.3 s instead of 0.1-0.5 s for 443 MB on a loaded 2-core machine).

  python bench/checkpoint.py --flavor gpt2-d384-l6 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from torchgpt.checkpoint import CheckpointManager, ModelState, OptimizerState, RNGState, integrity
from torchgpt.config.manager import load_config
from torchgpt.model import num_params
from torchgpt.parallel.dims import ParallelDims
from torchgpt.step.build import build_train_module
from torchgpt.step.config import TrainModuleConfig


def build(flavor: str, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The trainer's model and AdamW, whose moments exist after one step on random tokens."""
    overrides = [f"--model.flavor={flavor}", f"--job.seed={seed}", "--optimizer.lr=1e-4"]
    cfg = load_config(None, overrides + ["--training.mixed_precision=fp32"])
    step = TrainModuleConfig.from_job(cfg)
    module = build_train_module(step, ParallelDims(1, 1, 1), None, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, module.vocab_size, (2, 129), generator=gen)
    module.forward_backward([(tokens[:, :-1], tokens[:, 1:])])
    module.step()
    module.optimizer.zero_grad(set_to_none=True)
    return module.model, module.optimizer


def manager(run_dir: Path, model: torch.nn.Module, optimizer, async_mode: str) -> CheckpointManager:
    states = {
        "model": ModelState(model),
        "optimizer": OptimizerState(model, optimizer),
        "rng": RNGState(),
    }
    return CheckpointManager(
        run_dir, states=states, interval=1, keep_latest_k=1, async_mode=async_mode
    )


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


def time_saves(run_dir: Path, model, optimizer, async_mode: str, repeats: int, first_step: int):
    """[(blocked s, total s, MB, checksum s)] of `repeats` saves, after a warm-up save."""
    mgr = manager(run_dir, model, optimizer, async_mode)
    mgr.save(first_step - 1)  # first-call costs (imports, thread pool) are not per-checkpoint
    mgr.wait()
    results = []
    for i in range(repeats):
        step = first_step + i
        start = time.perf_counter()
        path = mgr.save(step)
        blocked = time.perf_counter() - start
        mgr.wait()
        total = time.perf_counter() - start
        results.append((blocked, total, folder_mb(path), mgr.last_checksum_seconds))
    return results


def time_verify(run_dir: Path, repeats: int) -> list[float]:
    """Seconds to check the newest checkpoint against its checksums (part of every load)."""
    path = CheckpointManager(run_dir, states={"rng": RNGState()}, interval=1).list_complete()[-1]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        assert integrity.verify(path[1]) is None
        times.append(time.perf_counter() - start)
    return times


def time_loads(run_dir: Path, flavor: str, repeats: int) -> list[float]:
    times = []
    for i in range(repeats):
        model, optimizer = build(flavor, seed=100 + i)  # other weights, same structure
        mgr = manager(run_dir, model, optimizer, "disabled")
        start = time.perf_counter()
        assert mgr.load() is not None
        times.append(time.perf_counter() - start)
    return times


def _row(name: str, seconds: list[float], mb: float) -> str:
    med, best = statistics.median(seconds), min(seconds)
    return f"{name:<28} {med:8.3f} s  (min {best:.3f})  {mb / med:8.1f} MB/s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--flavor", default="gpt2-d384-l6")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (torchrun: 1 per rank)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, optimizer = build(args.flavor, seed=0)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_ckpt_") as tmp:
        run_dir = Path(tmp)
        sync = time_saves(run_dir, model, optimizer, "disabled", args.repeats, first_step=2)
        loads = time_loads(run_dir, args.flavor, args.repeats)
        verifies = time_verify(run_dir, args.repeats)
        asy = time_saves(run_dir, model, optimizer, "async", args.repeats, first_step=100)
    mb = sync[0][2]
    print(
        f"{args.flavor}: {num_params(model.args):,} parameters; checkpoint (fp32 model + AdamW "
        f"moments + RNG) {mb:.1f} MB; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(_row("sync save (blocked=total)", [b for b, *_ in sync], mb))
    print(_row("  of which CRC-32 checksums", [c for *_, c in sync], mb))
    print(_row("async save: blocked", [b for b, *_ in asy], mb))
    print(_row("async save: until COMPLETE", [t for _, t, *_ in asy], mb))
    print(_row("load (model + optimizer)", loads, mb))
    print(_row("  of which verification", verifies, mb))


if __name__ == "__main__":
    main()
