#!/usr/bin/env python
"""Accuracy of the memory estimates against real training steps on this CPU, and the 100M table.

  python bench/memory_estimate.py                 # both tables (~15-25 min on 2 cores)
  python bench/memory_estimate.py --only cpu      # estimate vs real step only
  python bench/memory_estimate.py --only gpu      # mini_gpt_100m on 1xH100, 4xA100-80G, 2xRTX4090
  python bench/memory_estimate.py --only recipe   # mini_gpt_100m's own real step here (2 procs)
  python bench/memory_estimate.py --only tp       # debug and bench configs at tp 2 (2 procs)
  python bench/memory_estimate.py --with-tracker  # also MemTracker on the real tensors

CPU table: for the debug config and the bench config (gpt2-d384-l6 flavor, seq 512, micro-batch
8, global batch 16,384 tokens) at 1 and 2 processes and AC none / selective / full, the
analytic and traced per-rank peaks against the real peak of a real step, measured as
documented in torchgpt/estimation/realstep.py (exact resident tensor bytes + peak-RSS growth during
the
step, glibc set to unmap freed memory). Real steps run FSDP2 over gloo at 2 processes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchgpt.config.manager import load_config  # noqa: E402
from torchgpt.estimation.autosize import apply, resolve  # noqa: E402
from torchgpt.estimation.memory import analytic_memory  # noqa: E402
from torchgpt.estimation.plan import TrainingPlan  # noqa: E402
from torchgpt.estimation.realstep import measure_real_peak  # noqa: E402
from torchgpt.estimation.report import build_estimate  # noqa: E402
from torchgpt.estimation.trace import trace_memory  # noqa: E402
from torchgpt.utils.hardware import get_gpu  # noqa: E402

MIB, GIB = 2**20, 2**30
DEBUG = ("debug", "train_configs/debug_model.toml", [])
BENCH = (
    "bench",
    "train_configs/debug_model.toml",
    [
        "--model.flavor=gpt2-d384-l6",
        "--training.seq_len=512",
        "--training.micro_batch_size=8",
        "--training.global_batch_tokens=16384",
    ],
)
# The 100M recipe itself, shrunk only in batch (2 x 1024 tokens per rank, one micro-step) so a
# real step fits this machine: its own model, sequence length and AC mode.
RECIPE = (
    "mini_gpt_100m",
    "train_configs/mini_gpt_100m.toml",
    ["--training.micro_batch_size=2", "--training.global_batch_tokens=4096"],
)
GPU_LAYOUTS = (("h100", 1), ("a100-80g", 4), ("rtx4090", 2))
TP2 = ["--parallelism.tp=2", "--model.qkv_layout=per_head"]  # tensor parallel over 2 processes
TP_CASES = [
    (("debug tp2", DEBUG[1], DEBUG[2] + TP2), (2,), ("none", "selective", "full")),
    (("bench tp2", BENCH[1], BENCH[2] + TP2), (2,), ("none", "selective", "full")),
]


def _plan(path: str, overrides: list[str], nproc: int, ac: str) -> TrainingPlan:
    cfg = load_config(
        ROOT / path, [*overrides, f"--activation_checkpoint.mode={ac}"], world_size=nproc
    )
    return TrainingPlan.from_config(cfg, nproc)


def cpu_table(with_tracker: bool, cases=None) -> None:
    """cases: (config, nprocs, AC modes) triples; default debug and bench at 1 and 2 processes."""
    if cases is None:
        modes = ("none", "selective", "full")
        cases = [(DEBUG, (1, 2), modes), (BENCH, (1, 2), modes)]
    head = (
        f"| config | procs | AC | accum | analytic MiB | traced MiB | real MiB | "
        f"traced err | analytic err |{' tracker-on-real MiB |' if with_tracker else ''} "
        "real step s | bench s |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    worst_t = worst_a = 0.0
    for (name, path, overrides), nprocs, modes in cases:
        for nproc in nprocs:
            for ac in modes:
                start = time.perf_counter()
                plan = _plan(path, overrides, nproc, ac)
                analytic = analytic_memory(plan).peak_bytes
                traced = trace_memory(plan).peak_bytes
                ranks = measure_real_peak(plan, with_tracker=with_tracker)
                real = max(r.peak_bytes for r in ranks)
                err_t, err_a = traced / real - 1, analytic / real - 1
                worst_t, worst_a = max(worst_t, abs(err_t)), max(worst_a, abs(err_a))
                tracker = ""
                if with_tracker:
                    tracker = f" {max(r.tracker_peak_bytes or 0 for r in ranks) / MIB:,.1f} |"
                step_s = max(r.step_seconds for r in ranks)
                print(
                    f"| {name} | {nproc} | {ac} | {plan.grad_accum} | {analytic / MIB:,.1f} | "
                    f"{traced / MIB:,.1f} | {real / MIB:,.1f} | {err_t:+.2%} | {err_a:+.2%} |"
                    f"{tracker} {step_s:.1f} | {time.perf_counter() - start:.0f} |",
                    flush=True,
                )
    print(f"\nworst |traced - real| / real = {worst_t:.2%}; worst analytic = {worst_a:.2%}")


def gpu_table() -> None:
    print(
        "\nmini_gpt_100m.toml: python tools/memory_estimate.py train_configs/mini_gpt_100m.toml "
        "--gpu GPU --nproc N\n"
    )
    print(
        "| GPUs | layout | auto: micro-batch, AC | micro-steps/step | per-GPU peak (traced) | "
        "analytic | usable | verdict | MFU assumed (effective) | tokens/s | "
        "time-to-train (1B tokens) | GPU-hours |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for gpu, nproc in GPU_LAYOUTS:
        # The recipe's "auto" sizing, resolved for this GPU as the trainer does at start.
        cfg = load_config(ROOT / "train_configs/mini_gpt_100m.toml", [], world_size=nproc)
        apply(cfg, resolve(cfg, nproc, get_gpu(gpu).memory_gib))
        plan = TrainingPlan.from_config(cfg, nproc)
        est = build_estimate(plan, gpu)
        s, v = est.speed, est.verdict
        traced = est.traced.peak_bytes if est.traced else v.peak_bytes
        hours = s.train_seconds / 3600
        print(
            f"| {nproc}x {gpu} | {plan.layout_text()} | {plan.micro_batch_size}, "
            f"{plan.ac_text()} | {plan.grad_accum} | "
            f"{traced / GIB:.2f} GiB | {est.analytic.peak_bytes / GIB:.2f} GiB | "
            f"{v.usable_bytes / GIB:.1f} GiB | {'fits' if v.fits else 'does not fit'} | "
            f"{s.mfu_assumed:.0%} ({s.mfu_effective:.1%}) | {s.tokens_per_s:,.0f} | "
            f"{hours:.2f} h | {s.gpu_hours:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("cpu", "gpu", "recipe", "tp"))
    parser.add_argument("--with-tracker", action="store_true")
    args = parser.parse_args()
    if args.only == "recipe":  # mini_gpt_100m.toml's real step here against its estimates
        cpu_table(args.with_tracker, [(RECIPE, (2,), ("selective", "none"))])
        return
    if args.only == "tp":  # tensor parallelism: its estimates against its real step here
        cpu_table(args.with_tracker, TP_CASES)
        return
    if args.only != "gpu":
        cpu_table(args.with_tracker)
    if args.only != "cpu":
        gpu_table()


if __name__ == "__main__":
    main()
