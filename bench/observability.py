#!/usr/bin/env python
"""What seeing inside a run costs, and what one CPU profile shows (issue #25).

In one process, on synthetic shards written here, stepping the real Trainer:
(1) the time of a log step with `metrics.layer_stats` on and off (interleaved, A B A B ...,
median of --repeats each, after warm-up steps), the difference per log step and its share of
a run at metrics.log_freq = 10, and the time spent inside the statistics' own calls (a figure
that step-to-step noise does not swamp); the spike guard's check is timed alone (pure Python on two
floats); (2) one training step under torch.profiler: the top ops by self CPU time, the table a
reader wants from a trace (the same ops a `[profiling]` trace holds).

  python bench/observability.py                      # gpt2-d384-l6, seq 256, micro 4, fp32
  python bench/observability.py --flavor debug --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from torchgpt.config.manager import load_config
from torchgpt.testing import write_synthetic_shards
from torchgpt.train import Trainer
from torchgpt.training.spike_guard import SpikeGuard


def build(data: Path, out: Path, args: argparse.Namespace, stats: bool) -> Trainer:
    tokens = args.micro * args.seq_len * args.accum
    overrides = [
        f"--model.flavor={args.flavor}",
        f"--data.dataset_path={data}",
        f"--job.dump_folder={out}",
        f"--job.name=stats_{stats}",
        f"--training.seq_len={args.seq_len}",
        f"--training.micro_batch_size={args.micro}",
        f"--training.global_batch_tokens={tokens}",
        f"--training.mixed_precision={args.precision}",
        "--training.steps=100000",
        "--activation_checkpoint.mode=none",
        "--validation.enable=false",
        "--checkpoint.enable=false",
        "--metrics.enable_tensorboard=false",
        "--metrics.log_freq=1",  # every timed step is a log step
        f"--metrics.layer_stats={str(stats).lower()}",
    ]
    return Trainer(load_config(None, overrides, world_size=1))


def time_inside(stats: object, spent: list[float]) -> None:
    """Add the time of each LayerStats call (residual RMS, norms, weight copy) to `spent`."""
    for name in ("gradients", "weights", "updates", "record"):
        method = getattr(stats, name)

        def timed(*a, _method=method, **k):
            t0 = time.perf_counter()
            try:
                return _method(*a, **k)
            finally:
                spent.append(time.perf_counter() - t0)

        setattr(stats, name, timed)


def timed_step(trainer: Trainer) -> float:
    """One optimizer step as the loop runs it at a log step, its stats record included."""
    t0 = time.perf_counter()
    trainer.train_step()
    trainer.train_state.step += 1
    trainer.layer_stats.record()  # the one host read of the statistics
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--flavor", default="gpt2-d384-l6")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-observability-") as tmp:
        data = write_synthetic_shards(Path(tmp) / "shards", train_tokens=2_000_000)
        trainers = {s: build(data, Path(tmp), args, s) for s in (False, True)}
        n_blocks = len(trainers[True].layer_stats.blocks)
        print(
            f"{args.flavor} ({n_blocks} blocks), {args.accum} micro-steps of {args.micro} x "
            f"{args.seq_len}, {args.precision}, {torch.get_num_threads()} threads"
        )
        inside: list[float] = []
        time_inside(trainers[True].layer_stats, inside)
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.warmup + args.repeats):
            for stats, trainer in trainers.items():
                t = timed_step(trainer)
                if i >= args.warmup:
                    times[stats].append(t)
        off, on = statistics.median(times[False]), statistics.median(times[True])
        extra = on - off
        print(f"log step, layer_stats off: {off * 1e3:8.1f} ms (median of {args.repeats})")
        print(f"log step, layer_stats on:  {on * 1e3:8.1f} ms")
        per_step = sum(inside) / (args.warmup + args.repeats)
        print(
            f"inside LayerStats: {per_step * 1e3:.1f} ms per log step ({per_step / off:.2%} of "
            "it; the residual RMS in the forward is not in this figure)"
        )
        print(
            f"cost per log step: {extra * 1e3:+.1f} ms ({extra / off:+.1%} of that step); at "
            f"metrics.log_freq 10: {extra / 10 / off:+.2%} of the run"
        )
        guard = SpikeGuard(zscore=6.0, window=100, min_steps=20, max_skips=5)
        t0 = time.perf_counter()
        for step in range(1, 1001):
            guard.check(step, 3.0 + (step % 7) * 1e-3, 1.0)
        per_check = (time.perf_counter() - t0) / 1000
        print(f"spike guard check: {per_check * 1e6:.1f} us per step (window 100)")

        trainer = trainers[False]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.train_step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
        print(f"\none step under torch.profiler, top {args.top} ops by self CPU time:")
        print(table)
        for t in trainers.values():
            t.close()


if __name__ == "__main__":
    main()
