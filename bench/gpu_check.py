#!/usr/bin/env python
"""One command that says how the 124M recipe runs on this GPU, in a few minutes.

  python bench/gpu_check.py                 # one GPU: the recipe with its auto sizing
  python bench/gpu_check.py --smoke         # the same code path on CPU, debug model (CI)
  python bench/gpu_check.py --steps 60 --json gpu_check.json

It trains `train_configs/mini_gpt_100m.toml` in this process with the real Trainer (auto
micro-batch / activation checkpointing, bf16, per-block torch.compile, AdamW) on synthetic
token shards written to a temporary folder (no dataset needed), then prints:
- the auto sizing the trainer chose, and the memory estimator's peak for that layout beside
  the measured peak (CUDA: allocated and reserved; CPU: peak RSS);
- tokens/s and MFU over the steps after warm-up (the first `--warmup` steps hold the compile);
- torch.compile health: graphs compiled, graph breaks, graphs compiled after the first step;
- the time of one checkpoint save (DCP, model + optimizer);
- the projected time for 1B tokens, beside llm.c's ~468k tokens/s per H100 for the same
  model and the project's target (520k tokens/s on one H100-class GPU).
Default (GPU): 40 steps of 524,288 tokens, ~1 min of compile plus ~1 s per step on an H100.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchgpt.config.manager import load_config  # noqa: E402
from torchgpt.estimation.memory import analytic_memory  # noqa: E402
from torchgpt.estimation.plan import TrainingPlan  # noqa: E402
from torchgpt.testing import write_synthetic_shards  # noqa: E402
from torchgpt.train import Trainer  # noqa: E402

RECIPE = ROOT / "train_configs" / "mini_gpt_100m.toml"
# llm.c's GPT-2 (124M) reproduction: 8xH100 SXM, 524,288-token steps in ~140 ms.
LLMC_TOKENS_PER_S_PER_H100 = 468_000
TARGET_TOKENS_PER_S = 520_000
GIB = 2**30


def _overrides(args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    common = [
        f"--data.dataset_path={data}",
        f"--job.dump_folder={out}",
        "--job.name=gpu_check",
        f"--training.steps={args.steps}",
        f"--lr_scheduler.warmup_steps={min(10, args.steps)}",
        "--validation.enable=false",
        f"--checkpoint.interval={args.steps}",
        "--checkpoint.keep_latest_k=1",
        f"--metrics.log_freq={args.log_freq}",
        "--metrics.enable_tensorboard=false",
        "--metrics.enable_wandb=false",
    ]
    if args.smoke:  # the debug model, small batches: a minute or two on 2 CPU cores
        common += [
            "--model.flavor=debug",
            "--training.seq_len=128",
            "--training.global_batch_tokens=4096",
            "--data.num_workers=0",
        ]
    return common + args.overrides


def _compile_counts() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def run(args: argparse.Namespace) -> dict:
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    with tempfile.TemporaryDirectory(prefix="torchgpt-gpu-check-") as tmp:
        tokens = args.steps * (4096 if args.smoke else 524_288)
        data = write_synthetic_shards(
            Path(tmp) / "data", train_tokens=min(max(tokens, 600_000), 50_000_000)
        )
        cfg = load_config(RECIPE, _overrides(args, data, Path(tmp) / "out"), world_size=1)
        torch._dynamo.reset()
        trainer = Trainer(cfg)  # resolves the recipe's "auto" sizing for this device
        plan = TrainingPlan.from_config(cfg, 1)
        timings: dict[str, float] = {}
        after_first: dict[str, int] = {}
        train_step, save = trainer.train_step, trainer.checkpointer.save

        def timed_step():
            out = train_step()
            if not after_first:
                after_first.update(_compile_counts())
            return out

        def timed_save(*a, **kw):
            start = time.perf_counter()
            path = save(*a, **kw)
            trainer.checkpointer.wait()
            timings["checkpoint_save_s"] = time.perf_counter() - start
            return path

        trainer.train_step, trainer.checkpointer.save = timed_step, timed_save
        start = time.perf_counter()
        try:
            trainer.train()
        finally:
            trainer.close()
        wall = time.perf_counter() - start
        records = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tokens_per_s" in r]
    steady = [r for r in steps if r["step"] > args.warmup] or steps[-1:]
    rate = statistics.median(r["tokens_per_s"] for r in steady)
    mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
    final = _compile_counts()
    memory = {
        "estimated_peak_gib": analytic_memory(plan).peak_bytes / GIB,
        "allocated_peak_gib": (
            torch.cuda.max_memory_allocated() / GIB
            if device == "cuda"
            else steps[-1]["peak_memory_gib"]
        ),
        "reserved_peak_gib": torch.cuda.max_memory_reserved() / GIB if device == "cuda" else None,
    }
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "flavor": cfg.model.flavor,
        "auto_sizing": trainer.auto_sizing.text() if trainer.auto_sizing else None,
        "micro_batch_size": cfg.training.micro_batch_size,
        "activation_checkpoint": cfg.activation_checkpoint.mode,
        "grad_accum": plan.grad_accum,
        "steps": args.steps,
        "steady_steps": [steady[0]["step"], steady[-1]["step"]],
        "tokens_per_s": rate,
        "mfu": statistics.median(mfu) if mfu else None,
        "memory": memory,
        "compile": {**final, "graphs_after_first_step": final["graphs"] - after_first["graphs"]},
        "checkpoint_save_s": timings.get("checkpoint_save_s"),
        "wall_s": wall,
        "hours_per_1b_tokens": 1e9 / rate / 3600,
        "llmc_tokens_per_s_per_h100": LLMC_TOKENS_PER_S_PER_H100,
        "target_tokens_per_s": TARGET_TOKENS_PER_S,
    }


def render(r: dict) -> str:
    m, c = r["memory"], r["compile"]
    if m["reserved_peak_gib"] is not None:
        measured = (
            f"measured peak allocated {m['allocated_peak_gib']:.2f} GiB, "
            f"reserved {m['reserved_peak_gib']:.2f} GiB"
        )
    else:
        measured = f"measured peak RSS {m['allocated_peak_gib']:.2f} GiB (CPU)"
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (no known peak for this device)"
    save = r["checkpoint_save_s"]
    return "\n".join(
        [
            f"== gpu_check: {r['flavor']} on {r['device']} (torch {r['torch']}) ==",
            f"sizing       {r['auto_sizing'] or 'fixed in the config'}",
            f"layout       micro-batch {r['micro_batch_size']}, AC {r['activation_checkpoint']}, "
            f"{r['grad_accum']} micro-steps per step",
            f"throughput   {r['tokens_per_s']:,.0f} tokens/s (median of log intervals over steps "
            f"{r['steady_steps'][0]}-{r['steady_steps'][1]}), MFU {mfu}",
            f"memory       {measured}; estimator {m['estimated_peak_gib']:.2f} GiB",
            f"compile      {c['graphs']} graphs, {c['graph_breaks']} graph breaks, "
            f"{c['graphs_after_first_step']} compiled after the first step",
            "checkpoint   " + (f"one save {save:.2f} s" if save is not None else "no save"),
            f"1B tokens    {r['hours_per_1b_tokens'] * 60:.1f} min at this rate "
            f"(llm.c ~{r['llmc_tokens_per_s_per_h100']:,} tokens/s per H100 = "
            f"{1e9 / r['llmc_tokens_per_s_per_h100'] / 60:.1f} min; target "
            f"{r['target_tokens_per_s']:,} = {1e9 / r['target_tokens_per_s'] / 60:.1f} min); "
            f"this run {r['tokens_per_s'] / r['llmc_tokens_per_s_per_h100']:.2f}x llm.c",
            f"wall         {r['wall_s']:.0f} s for {r['steps']} steps",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, debug model: the code path only")
    p.add_argument("--steps", type=int, help="optimizer steps (default 40 GPU, 12 smoke)")
    p.add_argument("--warmup", type=int, help="steps left out of the rate (default 10 / 4)")
    p.add_argument("--log-freq", type=int, help="steps per measured interval (default 5 / 2)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args, args.overrides = p.parse_known_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA device here; --smoke runs the same code on CPU", file=sys.stderr)
        return 2
    args.steps = args.steps or (12 if args.smoke else 40)
    args.warmup = args.warmup if args.warmup is not None else (4 if args.smoke else 10)
    args.log_freq = args.log_freq or (2 if args.smoke else 5)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(args)
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
