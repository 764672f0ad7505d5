#!/usr/bin/env python
"""Training throughput of the real Trainer against this machine's measured matmul ceilings.

In one process and one run: (1) the bf16 matmul ceiling (large square torch.matmul) and the
ceiling of the model's own matmul shapes (every Linear of a step in forward, input-grad and
weight-grad layout, the lm-head, the attention products), (2) training tokens/s of each setting,
stepping a real `torchgpt.train.Trainer` (model built on meta -> parallelize_gpt -> AdamW from
build_optimizer, Trainer.loss_fn) on real token shards, (3) MFU (tokens/s x flops_per_token /
ceiling, PaLM appendix B), speedup over eager fp32 and the per-step time split.

Settings run interleaved (A, B, A, B, ...) and the best step of each is reported, so all see
the same machine load; the load average and this process's CPU share are printed with them.

Unless --no-malloc-tuning, glibc is told to serve large blocks from its heap instead of fresh
mmaps (mallopt): otherwise every step's logits and gradients (~1.7 GB) are new pages that the
kernel must fault in and zero, ~10% of the CPU time of a bf16 step. That is a process setting
(like the thread count), not part of the Trainer; it applies to every setting alike.

  python bench/train_throughput.py                      # gpt2-d384-l6, seq 512, micro-batch 8
  python bench/train_throughput.py --settings eager-fp32,eager-bf16,compile-bf16 --profile
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from torchgpt.config.manager import load_config
from torchgpt.model.args import ModelArgs, num_matmul_params
from torchgpt.train import Trainer
from torchgpt.utils.hardware import tune_host_malloc

REPO = Path(__file__).resolve().parents[1]

# Named settings: config overrides on top of the bench config.
SETTINGS: dict[str, list[str]] = {
    "eager-fp32": ["--training.mixed_precision", "fp32", "--compile.enable", "false"],
    "eager-bf16": ["--training.mixed_precision", "bf16", "--compile.enable", "false"],
    "compile-bf16": ["--training.mixed_precision", "bf16", "--compile.enable", "true"],
    "compile-bf16-whole": [
        "--training.mixed_precision",
        "bf16",
        "--compile.enable",
        "true",
        "--compile.whole_model",
        "true",
    ],
}
BASELINE, TARGET_MFU, TARGET_SPEEDUP = "eager-fp32", 0.55, 3.5


# ---- ceilings -----------------------------------------------------------------------------
def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN primitive creation, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def square_ceiling(dtype: torch.dtype, sizes: tuple[int, ...], repeats: int) -> float:
    """Best FLOP/s of a square torch.matmul over `sizes` (the machine's matmul limit)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        best = max(best, 2 * n**3 / _best_seconds(lambda a=a, b=b: torch.matmul(a, b), repeats))
    return best


def model_matmuls(args: ModelArgs, tokens: int, batch: int, seq_len: int) -> list[tuple]:
    """(name, count per step, a shape, b shape, b transposed, batched) of one training step.

    Every Linear runs forward x @ W^T, input-grad g @ W and weight-grad g^T @ x; attention
    runs Q K^T and P V forward and two products each backward (full, not causal, FLOPs as in
    flops_per_token). Their FLOPs add up to flops_per_token(args, seq_len) * tokens.
    """
    d, h, m, n_layers = args.dim, args.hidden_dim, tokens, args.n_layers
    n_mlp = 3 if args.mlp_type == "swiglu" else 2
    linears = [("qkv", d, 3 * d, 1), ("attn.proj", d, d, 1), ("mlp.in", d, h, n_mlp - 1)]
    linears += [("mlp.proj", h, d, 1)]
    ops = []
    for name, fan_in, fan_out, count in linears:
        c = count * n_layers
        ops.append((f"{name} fwd", c, (m, fan_in), (fan_out, fan_in), True))
        ops.append((f"{name} dgrad", c, (m, fan_out), (fan_out, fan_in), False))
        ops.append((f"{name} wgrad", c, (fan_out, m), (m, fan_in), False))
    v = args.padded_vocab_size
    ops.append(("lm-head fwd", 1, (m, d), (v, d), True))
    ops.append(("lm-head dgrad", 1, (m, v), (v, d), False))
    ops.append(("lm-head wgrad", 1, (v, m), (m, d), False))
    bh, hd = batch * args.n_heads, args.head_dim
    # Forward S = Q K^T and O = P V; backward dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q.
    ops.append(("attn T x hd x T", 2 * n_layers, (bh, seq_len, hd), (bh, hd, seq_len), False))
    ops.append(("attn T x T x hd", 4 * n_layers, (bh, seq_len, seq_len), (bh, seq_len, hd), False))
    return ops


def shape_ceiling(args: ModelArgs, batch: int, seq_len: int, repeats: int) -> tuple[float, float]:
    """(FLOP/s, FLOPs) of one step's matmuls in bf16, each timed alone: what the shapes allow."""
    total_flops, total_s = 0.0, 0.0
    for _, count, a_shape, b_shape, transpose_b in model_matmuls(
        args, batch * seq_len, batch, seq_len
    ):
        a = torch.randn(*a_shape, dtype=torch.bfloat16)
        b = torch.randn(*b_shape, dtype=torch.bfloat16)
        b = b.t() if transpose_b else b
        flops = 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.dim() == 3 else 1)
        total_flops += count * flops
        total_s += count * _best_seconds(lambda a=a, b=b: torch.matmul(a, b), repeats)
    return total_flops / total_s, total_flops


# ---- training -----------------------------------------------------------------------------
def build_trainer(name: str, data: str, out: str, cli: argparse.Namespace) -> Trainer:
    overrides = [
        *("--model.flavor", cli.flavor, "--training.seq_len", str(cli.seq_len)),
        *("--training.micro_batch_size", str(cli.micro_batch_size)),
        *("--training.global_batch_tokens", str(cli.micro_batch_size * cli.seq_len)),
        *("--training.steps", "100000", "--activation_checkpoint.mode", "none"),
        *("--validation.enable", "false", "--checkpoint.enable", "false"),
        *("--metrics.enable_tensorboard", "false", "--metrics.log_freq", "100000"),
        *("--data.dataset_path", data, "--job.dump_folder", out, "--job.name", name),
    ]
    cfg = load_config(None, overrides + SETTINGS[name] + cli.override, world_size=1)
    return Trainer(cfg)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_step(trainer: Trainer) -> dict[str, float]:
    """One step of the trainer's TrainModule (one micro-batch, as the bench configures it):
    wall time, CPU time of this process, and the data / forward / backward / optimizer split."""
    module, timer = trainer.module, trainer.timer
    timer.pop()
    cpu, start = cpu_seconds(), time.perf_counter()
    timer.start()
    batches = [next(trainer.data_iter) for _ in range(trainer.grad_accum)]
    timer.lap("data")
    loss = module.forward_backward(batches, after_forward=lambda: timer.lap("forward"))
    timer.lap("backward")
    module.clip_grad_norm()
    module.step()
    timer.lap("optimizer")
    wall = time.perf_counter() - start
    return {"wall": wall, "cpu": cpu_seconds() - cpu, "loss": loss.item(), **timer.pop()}


def prepare_data(tmp: Path) -> str:
    shared = Path(os.environ.get("TORCHGPT_SHARED_DIR", REPO.parent / "shared"))
    text = shared / "data" / "text" / "openstax_jsonl" / "astronomy.jsonl"
    out = tmp / "data"
    cmd = [sys.executable, str(REPO / "tools" / "prepare_data.py"), "--out", str(out)]
    cmd += ["--input", str(text), "--val-tokens", "40000", "--no-progress"]
    bpe = shared / "tokenizers" / "gpt2"
    if bpe.is_dir():
        cmd += ["--tokenizer-dir", str(bpe)]
    subprocess.run(cmd, check=True, capture_output=True)
    return str(out)


def profile_steps(trainer: Trainer, steps: int, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.train_step()
    trainer.timer.pop()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


# ---- report -------------------------------------------------------------------------------
def report(results: dict, fpt: int, tokens: int, peaks: dict[str, float]) -> None:
    bf16_peak, shape_peak = peaks["bf16"], peaks["shapes"]
    base = min(s["wall"] for s in results[BASELINE]) if BASELINE in results else None
    print(
        f"\n{'setting':<20}{'tok/s':>8}{'step ms':>9}{'GFLOP/s':>9}{'MFU':>7}{'MFU shp':>8}"
        f"{'vs fp32':>8}  split: data / forward / backward / optimizer ms  (cpu share)"
    )
    for name, steps in results.items():
        best = min(steps, key=lambda s: s["wall"])
        tps = tokens / best["wall"]
        flops = tps * fpt
        speed = f"{base / best['wall']:.2f}x" if base else "-"
        split = " / ".join(
            f"{1e3 * best.get(k, 0.0):.0f}" for k in ("data", "forward", "backward", "optimizer")
        )
        print(
            f"{name:<20}{tps:>8.0f}{1e3 * best['wall']:>9.0f}{flops / 1e9:>9.0f}"
            f"{100 * flops / bf16_peak:>6.1f}%{100 * flops / shape_peak:>7.1f}%{speed:>8}  "
            f"{split}  ({best['cpu'] / best['wall']:.2f} cores)"
        )
    best_name = max(results, key=lambda n: tokens / min(s["wall"] for s in results[n]))
    best_wall = min(s["wall"] for s in results[best_name])
    mfu = tokens / best_wall * fpt / bf16_peak
    print(
        f"\nbest setting {best_name}: MFU {100 * mfu:.1f}% of the square bf16 ceiling "
        f"(target >= {100 * TARGET_MFU:.0f}%: {'met' if mfu >= TARGET_MFU else 'NOT met'})",
        end="",
    )
    if base:
        speedup = base / best_wall
        print(
            f", {speedup:.2f}x eager fp32 (target >= {TARGET_SPEEDUP}x: "
            f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'})"
        )
        # Even at 100% of the bf16 ceiling a step could not beat eager fp32 by more than this.
        fp32_flops = tokens / base * fpt
        print(
            f"eager fp32 runs at {fp32_flops / 1e9:.0f} GFLOP/s = "
            f"{100 * fp32_flops / peaks['fp32']:.0f}% of the fp32 square ceiling; "
            f"speedup bound at 100% bf16 MFU: {bf16_peak / fp32_flops:.2f}x"
        )
    else:
        print()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data",
        help="token shards from tools/prepare_data.py (default: tokenize "
        "the shared astronomy textbook into a temporary folder)",
    )
    p.add_argument("--flavor", default="gpt2-d384-l6")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument(
        "--settings",
        default=f"{BASELINE},compile-bf16",
        help=f"comma-separated, from {sorted(SETTINGS)}",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per setting (compile)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=2, help="timed steps per setting and round")
    p.add_argument("--matmul-repeats", type=int, default=3)
    p.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's defaults")
    p.add_argument(
        "--profile", action="store_true", help="torch.profiler table of the last setting"
    )
    p.add_argument("--override", nargs="*", default=[], help="extra --section.key value pairs")
    return p.parse_args()


def main() -> None:
    cli = parse_args()
    logging.basicConfig(level=logging.WARNING)
    names = cli.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; known: {sorted(SETTINGS)}")
    malloc = "glibc defaults" if cli.no_malloc_tuning or not tune_host_malloc() else "no mmap/trim"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
        f"malloc {malloc}, load average {os.getloadavg()[0]:.1f} at start"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = cli.data or prepare_data(Path(tmp))
        trainers = {n: build_trainer(n, data, tmp, cli) for n in names}
        first = next(iter(trainers.values()))
        args, fpt = first.model_args, first.flops_per_token
        tokens = cli.micro_batch_size * cli.seq_len
        print(
            f"model {cli.flavor}: {num_matmul_params(args):,} matmul params, "
            f"{fpt / 1e6:.1f} MFLOP/token at seq {cli.seq_len}; step = {cli.micro_batch_size} x "
            f"{cli.seq_len} tokens"
        )
        for name, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(cli.warmup):
                trainer.train_step()
            trainer.timer.pop()
            print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s for {cli.warmup} steps")
        results, peaks = run_rounds(trainers, cli, fpt * tokens)
        print(
            f"matmul ceilings, best of {cli.rounds} rounds: bf16 square 2048/4096 "
            f"{peaks['bf16'] / 1e9:.0f} GFLOP/s, bf16 model shapes {peaks['shapes'] / 1e9:.0f}, "
            f"fp32 square {peaks['fp32'] / 1e9:.0f}; load average {os.getloadavg()[0]:.1f} at end"
        )
        report(results, fpt, tokens, peaks)
        if cli.profile:
            profile_steps(trainers[names[-1]], 2, 30)
        for trainer in trainers.values():
            trainer.close()


def run_rounds(
    trainers: dict[str, Trainer], cli: argparse.Namespace, step_flops: float
) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """Interleave the settings' steps and both ceilings; (step records, best ceilings)."""
    args, mb, seq = next(iter(trainers.values())).model_args, cli.micro_batch_size, cli.seq_len
    results: dict[str, list[dict]] = {n: [] for n in trainers}
    peaks = {"bf16": 0.0, "shapes": 0.0, "fp32": 0.0}
    for r in range(cli.rounds):
        # The ceilings in every round too, so they see the same load as the steps; the best
        # of all rounds is the denominator (the conservative choice for MFU).
        for key, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            square = square_ceiling(dtype, (2048, 4096), cli.matmul_repeats)
            peaks[key] = max(peaks[key], square)
        peak, flops = shape_ceiling(args, mb, seq, cli.matmul_repeats)
        assert abs(flops - step_flops) < 1e-6 * flops, (flops, step_flops)
        peaks["shapes"] = max(peaks["shapes"], peak)
        for name, trainer in trainers.items():
            results[name] += [timed_step(trainer) for _ in range(cli.steps)]
        walls = [f"{n} {min(s['wall'] for s in results[n][-cli.steps :]):.2f} s" for n in trainers]
        print(
            f"  round {r + 1}: {', '.join(walls)}; bf16 ceilings {peaks['bf16'] / 1e9:.0f} / "
            f"{peaks['shapes'] / 1e9:.0f} GFLOP/s; load average {os.getloadavg()[0]:.1f}"
        )
    return results, peaks


if __name__ == "__main__":
    main()
