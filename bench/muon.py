#!/usr/bin/env python
"""Quality per token on this CPU: gpt2 + AdamW vs modern + AdamW vs modern + Muon, one script.

  python bench/muon.py                          # 3 runs of --tokens each on openstax text
  python bench/muon.py --tokens 1.5e6 --arms modern-muon --out bench_out/muon

Same data (../shared/data/text/openstax, prepared once into OUT/data), same token budget, same
global batch, seed and schedule shape (warmup then cosine to 10%) for every arm; only the
model flavor and the optimizer differ. Each run is `python -m torchgpt.train` with
train_configs/debug_model.toml and the overrides printed; validation every --val-interval steps
on the same held-out tokens. Prints per arm the final val loss, the tokens at which it first
reaches gpt2 + AdamW's final val loss, and the median step time; writes OUT/muon.json and
OUT/muon.png (val loss against tokens and against wall clock). Never asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# (flavor, optimizer overrides). AdamW everywhere has the recipe's betas (0.9, 0.95), eps, weight
# decay 0.1 on matrices, warmup + cosine to 10% and clipping at 1.0; its lr is --adamw-lr.
# Muon: Keller Jordan's defaults (muon_lr 0.02, momentum 0.95), 0.02 also best of a short
# sweep here (0.01 / 0.02 / 0.04, BENCHMARK.md).
ARMS = {
    "gpt2-adamw": ("gpt2-d384-l6", ["--optimizer.name", "adamw"]),
    "modern-adamw": ("modern-d384-l6", ["--optimizer.name", "adamw"]),
    "modern-muon": ("modern-d384-l6", ["--optimizer.name", "muon"]),
}


def prepare(out: Path, max_tokens: float) -> Path:
    data = out / "data"
    if not (data / "manifest.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "tools/prepare_data.py",
                "--out",
                str(data),
                "--input",
                str(SHARED / "data/text/openstax"),
                "--max-tokens",
                str(int(max_tokens)),
                "--tokenizer-dir",
                str(SHARED / "tokenizers/gpt2"),
                "--no-progress",
            ],
            cwd=REPO,
            check=True,
        )
    return data


def arm_overrides(
    name: str, args: argparse.Namespace, data: Path, out: Path, arm: tuple[str, list[str]]
) -> list[str]:
    """The debug_model.toml overrides of arm `name` = (flavor, its own overrides)."""
    flavor, optim = arm
    steps = int(args.tokens) // args.batch_tokens
    return [
        f"--model.flavor={flavor}",
        f"--data.dataset_path={data}",
        f"--job.dump_folder={out}",
        f"--job.name={name}",
        f"--job.seed={args.seed}",
        f"--training.steps={steps}",
        f"--training.seq_len={args.seq_len}",
        f"--training.micro_batch_size={args.micro_batch}",
        f"--training.global_batch_tokens={args.batch_tokens}",
        "--training.mixed_precision=auto",  # bf16 where this CPU runs it fast, else fp32
        f"--lr_scheduler.warmup_steps={max(steps // 20, 1)}",
        "--activation_checkpoint.mode=none",
        "--checkpoint.enable=false",
        "--validation.enable=true",
        f"--validation.interval={args.val_interval}",
        f"--validation.tokens={args.val_tokens}",
        "--metrics.log_freq=10",
        "--metrics.enable_tensorboard=false",
        f"--optimizer.lr={args.adamw_lr}",
        *optim,
        *args.overrides,
    ]


def run_arm(
    name: str,
    args: argparse.Namespace,
    data: Path,
    out: Path,
    arm: tuple[str, list[str]] | None = None,
) -> dict:
    """One training run of arm `name`: (flavor, overrides), ARMS[name] unless given."""
    flavor, optim = arm = arm or ARMS[name]
    steps = int(args.tokens) // args.batch_tokens
    overrides = arm_overrides(name, args, data, out, arm)
    print(f"[{name}] python -m torchgpt.train train_configs/debug_model.toml {' '.join(overrides)}")
    run_dir = out / name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    start = time.time()
    subprocess.run(
        [sys.executable, "-m", "torchgpt.train", "train_configs/debug_model.toml", *overrides],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_loss" in r]
    steps_recs = [r for r in records if "step_time_s" in r and r["step"] > 10]
    return {
        "flavor": flavor,
        "precision": precision(run_dir),
        "overrides": optim,
        "steps": steps,
        "tokens": [r["tokens_seen"] for r in val],
        "wall_s": [r["time"] - start for r in val],
        "val_loss": [r["val_loss"] for r in val],
        "step_time_s": statistics.median(r["step_time_s"] for r in steps_recs),
        "total_s": time.time() - start,
    }


def precision(run_dir: Path) -> str:
    """The trainer's mixed-precision choice and its reason, from the run's launch record."""
    launch = json.loads((run_dir / "run_info.json").read_text())["launches"][-1]
    return launch["mixed_precision"]["reason"]


def tokens_to_reach(result: dict, target: float) -> int | None:
    for tokens, loss in zip(result["tokens"], result["val_loss"], strict=True):
        if loss <= target:
            return tokens
    return None


def plot(results: dict, path: Path, highlight: tuple[str, ...] = ()) -> None:
    """Val loss against tokens and wall clock, one distinct colour per arm (tab20 beyond ten);
    the `highlight` arms drawn thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.get_cmap("tab10" if len(results) <= 10 else "tab20").colors
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, r) in enumerate(results.items()):
        style = dict(color=colours[i % len(colours)], label=name, marker=".")
        style["linewidth"] = 2.5 if name in highlight else 1.0
        a.plot([t / 1e6 for t in r["tokens"]], r["val_loss"], **style)
        b.plot([s / 60 for s in r["wall_s"]], r["val_loss"], **style)
    losses = sorted(v for r in results.values() for v in r["val_loss"])
    a.set_xlabel("tokens (M)")
    b.set_xlabel("wall clock (min, this CPU)")
    for ax in (a, b):
        ax.set_ylabel("validation loss")
        ax.set_ylim(losses[0] - 0.1, losses[int(0.95 * (len(losses) - 1))])  # not the first steps
        ax.grid(alpha=0.3)
    b.legend(fontsize=8, ncol=2 if len(results) > 6 else 1, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add_run_arguments(
    p: argparse.ArgumentParser, *, batch_tokens: int, val_interval: int, val_tokens: int
) -> None:
    """The arguments run_arm reads (bench/speedrun.py shares them, with its own defaults)."""
    p.add_argument("--tokens", type=float, default=1.5e6, help="training tokens per arm")
    p.add_argument("--batch-tokens", type=int, default=batch_tokens)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--val-interval", type=int, default=val_interval)
    p.add_argument("--val-tokens", type=int, default=val_tokens)
    p.add_argument("--seed", type=int, default=1337)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(p, batch_tokens=8192, val_interval=15, val_tokens=65536)
    p.add_argument(
        "--adamw-lr",
        type=float,
        default=3e-3,
        help="AdamW lr of every arm (Muon's AdamW half too): debug_model.toml's, near the lr range "
        "test's 3.77e-3 (WRITEUP.md); the 124M recipe's 6e-4 would undertrain a 30M model here",
    )
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_muon")
    args, args.overrides = p.parse_known_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = prepare(args.out, 4e6)
    results = {name: run_arm(name, args, data, args.out) for name in args.arms.split(",")}
    (args.out / "muon.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "muon.png")
    base = results.get("gpt2-adamw")
    target = base["val_loss"][-1] if base else None
    print(f"\nprecision: {next(iter(results.values()))['precision']}")
    print(f"{'arm':<14} {'final val':>9} {'tokens to gpt2-adamw final':>27} {'step s':>7}")
    for name, r in results.items():
        reach = tokens_to_reach(r, target) if target is not None else None
        share = f"{reach:,} ({reach / r['tokens'][-1]:.0%})" if reach else "not reached"
        print(f"{name:<14} {r['val_loss'][-1]:>9.4f} {share:>27} {r['step_time_s']:>7.3f}")
    if base and "modern-muon" in results and "modern-adamw" in results:
        ratio = results["modern-muon"]["step_time_s"] / results["modern-adamw"]["step_time_s"]
        print(f"Muon step time / AdamW step time (modern): {ratio:.3f}")
    print(f"-> {args.out / 'muon.json'}, {args.out / 'muon.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
