"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates", section 3.3).

Trains the configured model for a short run while the learning rate grows geometrically from
--min-lr to --max-lr, records the loss at every step, plots loss against lr (log axis) and
suggests a peak lr. Uses the real Trainer (same model, parallelism, precision, data), so it runs
under torchrun too:

    python tools/lr_range_test.py train_configs/debug_model.toml --steps 100 --out outputs/lr_range
    torchrun --nproc_per_node 2 tools/lr_range_test.py CONFIG --data.dataset_path data/x

The suggestion is the lr of steepest loss descent on the smoothed curve, capped at a tenth of
the lr where the loss is lowest (the common "min-loss / 10" rule), since the steepest point
alone can sit close to divergence.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import torch.distributed as dist

from torchgpt.config.job_config import ConfigError
from torchgpt.config.manager import load_config
from torchgpt.optim.lr_schedule import lr_multiplier
from torchgpt.parallel.dims import init_distributed
from torchgpt.train import Trainer

logger = logging.getLogger("lr_range_test")


def geometric_lrs(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """The lr of each step under the trainer's "geometric" schedule (what the sweep runs)."""
    return [
        max_lr
        * lr_multiplier(
            i,
            warmup_steps=0,
            total_steps=steps,
            decay_type="geometric",
            min_lr_ratio=min_lr / max_lr,
        )
        for i in range(steps)
    ]


def smooth(values: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as in fastai's lr finder)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def suggest_lr(lrs: list[float], losses: list[float]) -> dict[str, float]:
    """Steepest descent of the smoothed loss in log-lr, capped at min-loss lr / 10."""
    sm = smooth(losses)
    # Ignore the diverged tail: stop at the first point 4x above the best smoothed loss.
    best = min(sm)
    end = next((i for i, v in enumerate(sm) if v > 4 * best and i > sm.index(best)), len(sm))
    sm, lrs = sm[:end], lrs[:end]
    i_min = sm.index(min(sm))
    slopes = [
        (sm[i + 1] - sm[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
        for i in range(1, i_min)
    ]
    i_steep = 1 + slopes.index(min(slopes)) if slopes else 0
    return {
        "lr_min_loss": lrs[i_min],
        "lr_steepest": lrs[i_steep],
        "suggested_lr_max": min(lrs[i_steep], lrs[i_min] / 10) if slopes else lrs[i_min] / 10,
    }


def plot(lrs: list[float], losses: list[float], result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot(lrs, losses, color="0.75", lw=1, label="loss")
    ax.plot(lrs, smooth(losses), color="C0", lw=2, label="loss (EMA 0.9)")
    ax.axvline(
        result["suggested_lr_max"],
        color="C3",
        ls="--",
        label=f"suggested lr_max {result['suggested_lr_max']:.2g}",
    )
    ax.axvline(
        result["lr_min_loss"], color="0.4", ls=":", label=f"min loss at {result['lr_min_loss']:.2g}"
    )
    ax.set_xscale("log")
    finite = [x for x in losses if math.isfinite(x)]
    ax.set_ylim(min(finite) - 0.2, min(max(finite), 2.5 * min(finite)) + 0.2)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("Learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", help="training TOML (its model, data, batch and precision are used)")
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--max-lr", type=float, default=1e-2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default="outputs/lr_range_test", help="folder for the plot and JSON")
    args, overrides = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not 0 < args.min_lr < args.max_lr:
        p.error(f"need 0 < --min-lr < --max-lr, got {args.min_lr} and {args.max_lr}")
    out = Path(args.out)
    fixed = [
        "--training.steps",
        str(args.steps),
        "--optimizer.lr",
        str(args.max_lr),
        "--lr_scheduler.decay_type",
        "geometric",
        "--lr_scheduler.min_lr_ratio",
        str(args.min_lr / args.max_lr),
        "--lr_scheduler.warmup_steps",
        "0",
        "--checkpoint.enable",
        "false",
        "--validation.enable",
        "false",
        "--metrics.log_freq",
        "1",
        "--job.dump_folder",
        str(out.parent),
        "--job.name",
        out.name,
        "--training.on_nonfinite",
        "skip",
    ]
    try:
        cfg = load_config(
            args.config, overrides + fixed, world_size=int(os.environ.get("WORLD_SIZE", 1))
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    init_distributed(cfg.parallelism.collective_timeout_s)
    lrs = geometric_lrs(args.min_lr, args.max_lr, args.steps)
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()
    if not dist.is_initialized() or dist.get_rank() == 0:
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if "loss" in r][-args.steps :]
        losses = [x if math.isfinite(x) else float("inf") for x in losses]
        result = suggest_lr(lrs, losses)
        result.update(
            min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps, lrs=lrs, losses=losses
        )
        (out / "lr_range_test.json").write_text(json.dumps(result, indent=2))
        plot(lrs, losses, result, out / "lr_range_test.png")
        print(
            f"lr at min loss {result['lr_min_loss']:.3g}, "
            f"steepest descent {result['lr_steepest']:.3g}"
            f" -> suggested lr_max {result['suggested_lr_max']:.3g}  ({out / 'lr_range_test.png'})"
        )
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
