#!/usr/bin/env python
"""Tensor parallelism's cost on this CPU: the same model, batch and steps through run_train.sh on
2 processes, as FSDP2 (dp_shard 2) and as TP 2 (tp 2, per_head qkv; with loss parallel, the
default, and with the logits gathered for the loss), interleaved (A B C A B C ...),
fp32, on synthetic shards written here. Prints the median tokens/s of each (the step records
after the first, which holds start-up) and TP's time per step relative to FSDP2's.

On 2 CPU cores gloo's collectives are memory copies between processes, so this measures the
extra communication and the smaller per-rank matmuls of TP, not what NVLink gives on a GPU.

  python bench/tp.py                       # debug flavor, seq 256, micro-batch 8, 12 steps
  python bench/tp.py --flavor gpt2-d384-l6 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from torchgpt.testing import write_synthetic_shards

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = {
    "fsdp2": ["--parallelism.dp_shard", "2"],
    "tp2": ["--parallelism.tp", "2", "--parallelism.dp_shard", "1"],  # loss parallel (default)
    "tp2-gathered-loss": [
        "--parallelism.tp",
        "2",
        "--parallelism.dp_shard",
        "1",
        "--parallelism.loss_parallel",
        "false",
    ],
}


def run(layout: str, data: Path, out: Path, args: argparse.Namespace, i: int) -> float:
    name = f"{layout}_{i}"
    cmd = ["./run_train.sh", "train_configs/debug_model.toml"]
    cmd += ["--model.flavor", args.flavor, "--model.qkv_layout", "per_head"]
    cmd += ["--data.dataset_path", str(data), "--job.dump_folder", str(out), "--job.name", name]
    cmd += ["--training.steps", str(args.steps), "--training.mixed_precision", "fp32"]
    cmd += ["--training.seq_len", str(args.seq_len), "--training.micro_batch_size", str(args.micro)]
    cmd += ["--training.global_batch_tokens", str(args.micro * args.seq_len * 2)]
    cmd += [
        "--metrics.log_freq",
        "1",
        "--validation.enable",
        "false",
        "--checkpoint.enable",
        "false",
    ]
    cmd += ["--metrics.enable_tensorboard", "false", "--data.verify_checksums", "false"]
    cmd += ["--lr_scheduler.warmup_steps", "2", *LAYOUTS[layout]]
    env = {**os.environ, "NGPU": "2", "PYTHON": sys.executable}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    records = [json.loads(x) for x in (out / name / "metrics.jsonl").open()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--flavor", default="debug")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tp-") as tmp:
        data = write_synthetic_shards(Path(tmp) / "shards", train_tokens=2_000_000)
        rates: dict[str, list[float]] = {k: [] for k in LAYOUTS}
        for i in range(args.repeats):
            for layout in LAYOUTS:
                rates[layout].append(run(layout, data, Path(tmp), args, i))
    print(
        f"{args.flavor}, 2 processes, micro-batch {args.micro} x {args.seq_len}, fp32, "
        f"{args.steps} steps, {args.repeats} interleaved runs each"
    )
    best = {k: statistics.median(v) for k, v in rates.items()}
    for layout, value in best.items():
        runs = ", ".join(f"{r:,.0f}" for r in rates[layout])
        print(f"{layout:>17}: {value:8,.0f} tokens/s (runs: {runs})")
    for layout in ("tp2", "tp2-gathered-loss"):
        print(f"{layout} time per step: {best['fsdp2'] / best[layout]:.2f}x FSDP2's")


if __name__ == "__main__":
    main()
