#!/usr/bin/env python
"""Quality per token of each block option alone, and of their combination, on this CPU.

  python bench/speedrun.py                                  # every arm, --tokens each
  python bench/speedrun.py --arms base,relu2 --tokens 5e5   # a subset
  python bench/speedrun.py --step-time --rounds 5           # each arm's step cost, interleaved

The baseline is modern + Muon (bench/muon.py's winner). Each other arm changes one thing on
top of it (a [model] block option, document-aligned windows, the warmup-stable-decay
schedule); `speedrun` combines the options chosen for the speedrun recipe. Every arm runs
`python -m torchgpt.train train_configs/debug_model.toml` on the same openstax shards (held-out
validation tokens from whole documents the training split never sees), the same token budget,
global batch, seed and warmup; bench/muon.py's run_arm does the run. Prints per arm the final
validation loss, the tokens at which it first reaches the baseline's final loss (the share of
the budget) and the median step time against the baseline's; writes OUT/speedrun.json and
OUT/speedrun.png (the arms of earlier invocations with the same OUT are kept, so a subset can
be rerun; --fresh forgets them). The runs' step times see whatever the machine did meanwhile;
--step-time measures the arms' costs instead: one process builds every arm's Trainer and times
their real steps in turn, round after round, and prints each arm's step against the baseline's
of the same round (OUT/step_time.json). Never asserts: the figures and their caveats go to
BENCHMARK.md / WRITEUP.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import muon  # noqa: E402  (bench/muon.py: prepare, run_arm, plot, tokens_to_reach)

FLAVOR = "modern-d384-l6"
BASE = ["--optimizer.name", "muon"]
# One change each on top of modern + Muon.
OPTIONS = {
    "relu2": ["--model.mlp_type", "relu2"],
    "softcap30": ["--model.logit_softcap", "30"],
    "untied": ["--model.tie_embeddings", "false"],
    "zero-init": ["--model.zero_init_proj", "true"],
    "unet": ["--model.unet_skips", "true"],
    "value-embeds": ["--model.value_embeds", "2"],  # 6 layers: blocks 0, 1, 4, 5
    "qk-norm": ["--model.qk_norm", "true"],
    "align-bos": ["--data.align", "bos"],
    "docmask": ["--model.attn_mask", "block_causal"],
    "bos+docmask": ["--data.align", "bos", "--model.attn_mask", "block_causal"],
    "wsd": ["--lr_scheduler.decay_type", "wsd", "--lr_scheduler.decay_fraction", "0.2"],
}
# The speedrun arm: the speedrun flavor of this size (modern + SPEEDRUN_OPTIONS of
# torchgpt/model/args.py, the block options that won the table above) with the schedule of
# train_configs/speedrun_124m.toml (tests/unit/test_speedrun.py checks both agree).
SPEEDRUN_FLAVOR = "speedrun-d384-l6"
SPEEDRUN_RUN = OPTIONS["wsd"]
ARMS = {"base": (FLAVOR, BASE)}
ARMS.update({name: (FLAVOR, BASE + extra) for name, extra in OPTIONS.items()})
ARMS["speedrun"] = (SPEEDRUN_FLAVOR, BASE + SPEEDRUN_RUN)


def step_times(names: list[str], args: argparse.Namespace, data: Path) -> dict[str, dict]:
    """Wall time of one real training step per arm, the arms interleaved in one process
    (A, B, C, A, B, C, ...) so that all see the same machine: this 2-core VM's speed drifts
    by up to ~30% between runs minutes apart, more than the options cost. Per arm: the median
    step and the median over rounds of its step / base's step of the same round. Keep a set
    small (2-5 arms): with ten Trainers in one process the VM's memory reclaim made it noise."""
    from torchgpt.config.manager import load_config
    from torchgpt.train import Trainer

    toml = muon.REPO / "train_configs" / "debug_model.toml"
    out = args.out / "step_time"
    trainers = {}
    for n in names:
        overrides = muon.arm_overrides(n, args, data, out, ARMS[n])
        trainers[n] = Trainer(load_config(toml, overrides, world_size=1))
    for trainer in trainers.values():
        trainer.train_step()  # warm-up: allocator, oneDNN primitives
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train_step()
            seconds[n].append(time.perf_counter() - start)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {seconds[n][-1]:.2f} s" for n in names))
    for trainer in trainers.values():
        trainer.close()
    base = seconds.get("base")
    return {
        n: {
            "step_s": statistics.median(t),
            "vs_base": statistics.median(a / b for a, b in zip(t, base, strict=True))
            if base
            else None,
            "rounds_s": t,
            "precision": trainers[n].precision.reason,  # the trainer's own choice
        }
        for n, t in seconds.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    muon.add_run_arguments(p, batch_tokens=16384, val_interval=6, val_tokens=32768)
    p.add_argument("--adamw-lr", type=float, default=3e-3, help="as bench/muon.py")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--out", type=Path, default=muon.REPO / "outputs" / "bench_speedrun")
    p.add_argument("--fresh", action="store_true", help="forget OUT/speedrun.json's other arms")
    p.add_argument(
        "--step-time",
        action="store_true",
        help="no training runs: time each arm's real step, interleaved (OUT/step_time.json)",
    )
    p.add_argument("--rounds", type=int, default=5, help="--step-time: steps timed per arm")
    args, args.overrides = p.parse_known_args(argv)
    names = args.arms.split(",")
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        p.error(f"--arms: unknown {unknown}; known: {', '.join(ARMS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    data = muon.prepare(args.out, 4e6)
    if args.step_time:
        return report_step_times(step_times(names, args, data), args.out / "step_time.json")
    record = args.out / "speedrun.json"  # arms of earlier invocations stay unless rerun
    results = json.loads(record.read_text()) if record.is_file() and not args.fresh else {}
    for n in names:
        results[n] = muon.run_arm(n, args, data, args.out, arm=ARMS[n])
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(record)
    muon.plot(results, args.out / "speedrun.png", highlight=("base", "speedrun"))
    base = results.get("base")
    target = base["val_loss"][-1] if base else None
    print(f"\nprecision: {results[names[0]]['precision']}")
    print(f"{'arm':<10} {'final val':>9} {'tokens to base final':>22} {'step s':>7} {'vs base':>7}")
    for name, r in results.items():
        reach = muon.tokens_to_reach(r, target) if target is not None else None
        share = f"{reach:,} ({reach / r['tokens'][-1]:.0%})" if reach else "not reached"
        ratio = f"{r['step_time_s'] / base['step_time_s']:.3f}" if base else "-"
        print(
            f"{name:<10} {r['val_loss'][-1]:>9.4f} {share:>22} {r['step_time_s']:>7.3f} {ratio:>7}"
        )
    print(f"-> {args.out / 'speedrun.json'}, {args.out / 'speedrun.png'}")
    return 0


def report_step_times(times: dict[str, dict], path: Path) -> int:
    print(f"\nprecision: {next(iter(times.values()))['precision']}")
    print(f"{'arm':<12} {'median step s':>13} {'vs base (paired)':>17}")
    for name, t in times.items():
        ratio = f"{t['vs_base']:.3f}" if t["vs_base"] is not None else "-"
        print(f"{name:<12} {t['step_s']:>13.3f} {ratio:>17}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(times, indent=2) + "\n")
    tmp.replace(path)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
