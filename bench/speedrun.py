#!/usr/bin/env python
"""Quality per token of each block option alone, and of their combination, on this CPU.

  python bench/speedrun.py                                  # every arm, --tokens each
  python bench/speedrun.py --arms base,relu2 --tokens 5e5   # a subset

The baseline is modern + Muon (bench/muon.py's winner). Each other arm changes one thing on
top of it (a [model] block option, document-aligned windows, the warmup-stable-decay
schedule); `speedrun` combines the options chosen for the speedrun recipe. Every arm runs
`python -m torchgpt.train train_configs/debug_model.toml` on the same openstax shards (held-out
validation tokens from whole documents the training split never sees), the same token budget,
global batch, seed and warmup; bench/muon.py's run_arm does the run. Prints per arm the final
validation loss, the tokens at which it first reaches the baseline's final loss (the share of
the budget) and the median step time against the baseline's; writes OUT/speedrun.json and
OUT/speedrun.png (the arms of earlier invocations with the same OUT are kept, so a subset can
be rerun; --fresh forgets them). Never asserts: the figures and their caveats go to
BENCHMARK.md / WRITEUP.md.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    muon.add_run_arguments(p, batch_tokens=16384, val_interval=6, val_tokens=32768)
    p.add_argument("--adamw-lr", type=float, default=3e-3, help="as bench/muon.py")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--out", type=Path, default=muon.REPO / "outputs" / "bench_speedrun")
    p.add_argument("--fresh", action="store_true", help="forget OUT/speedrun.json's other arms")
    args, args.overrides = p.parse_known_args(argv)
    names = args.arms.split(",")
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        p.error(f"--arms: unknown {unknown}; known: {', '.join(ARMS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    data = muon.prepare(args.out, 4e6)
    record = args.out / "speedrun.json"  # arms of earlier invocations stay unless rerun
    results = json.loads(record.read_text()) if record.is_file() and not args.fresh else {}
    for n in names:
        results[n] = muon.run_arm(n, args, data, args.out, arm=ARMS[n])
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(record)
    muon.plot(results, args.out / "speedrun.png")
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


if __name__ == "__main__":
    sys.exit(main())
