#!/usr/bin/env python
"""Evaluate torchgpt checkpoints: val loss, lm-eval tasks, fixed-prompt samples -> RUN_DIR/eval/.

python tools/eval.py RUN_DIR --data data/openstax --data-dir ../shared/data/eval       # newest
python tools/eval.py RUN_DIR --all --data data/openstax --data-dir ../shared/data/eval # each one
python tools/eval.py RUN_DIR/checkpoints/step-500 --tasks hellaswag --limit 200 --no-samples
python tools/eval.py model.pt --out results/ --tasks none

Offline, --data-dir points the harness's stock tasks at local files in the hub schema; any other
harness task name works with hub access. The GPT-2 tokenizer files come from --tokenizer-dir,
$TORCHGPT_GPT2_BPE_DIR or $TORCHGPT_SHARED_DIR/tokenizers/gpt2 (else the network); a failure to
fetch them is one error line and exit code 2, found before any checkpoint is loaded. Each
checkpoint's results go to RUN_DIR/eval/step-N.json (or --out DIR); tools/report.py RUN_DIR turns
them into the report.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

import torch

from torchgpt.eval.checkpoint_eval import EvalOptions, evaluate_checkpoint
from torchgpt.eval.loading import is_run_dir, list_checkpoints
from torchgpt.eval.results import EVAL_DIR_NAME, eval_json_path
from torchgpt.utils.hardware import tune_host_malloc
from torchgpt.utils.progress import quiet_bars_off_terminal


def _count(text: str) -> int:
    value = float(text)  # accept 1e6
    if value != int(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="model export file, RUN_DIR/checkpoints/step-N or RUN_DIR")
    p.add_argument("--all", action="store_true", help="every complete checkpoint of RUN_DIR")
    p.add_argument(
        "--which",
        choices=("latest", "best", "export"),
        default="latest",
        help="checkpoint of a run directory without --all (default latest)",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="with --all: skip checkpoints that already have a result JSON",
    )
    val = p.add_argument_group("validation loss")
    val.add_argument("--data", help="prepared token shards with a val split (omit: no val loss)")
    val.add_argument("--val-tokens", type=_count, help="val tokens (default: the run's)")
    val.add_argument("--val-dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    har = p.add_argument_group("lm-evaluation-harness")
    har.add_argument(
        "--tasks",
        default="hellaswag,arc_easy,piqa",
        help="comma-separated harness task (or group) names, or 'none'",
    )
    har.add_argument("--limit", type=_count, help="items per task (default: all)")
    har.add_argument(
        "--data-dir", help="local task data in the hub schema, e.g. ../shared/data/eval"
    )
    har.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="folder of your own task YAMLs, as lm-eval's --include_path (repeatable); their "
        "task names then work in --tasks",
    )
    har.add_argument("--batch-size", type=_count, default=16)
    p.add_argument(
        "--tokenizer-dir",
        metavar="DIR",
        help="GPT-2 BPE files (vocab.bpe, encoder.json); default $TORCHGPT_GPT2_BPE_DIR, else\n"
        "$TORCHGPT_SHARED_DIR/tokenizers/gpt2, else the network",
    )
    smp = p.add_argument_group("samples")
    smp.add_argument("--prompts", help="prompts TOML (default configs/eval_prompts.toml)")
    smp.add_argument("--no-samples", action="store_true")
    p.add_argument("--out", help="folder for the result JSONs (default RUN_DIR/eval)")
    return p


def _options(args: argparse.Namespace, argv: list[str]) -> EvalOptions:
    tasks = [] if args.tasks.strip().lower() in ("", "none") else args.tasks.split(",")
    return EvalOptions(
        data=args.data,
        val_tokens=args.val_tokens,
        val_dtype=args.val_dtype,
        tasks=[t.strip() for t in tasks if t.strip()],
        limit=args.limit,
        data_dir=args.data_dir,
        include_paths=args.include_path,
        batch_size=args.batch_size,
        tokenizer_dir=args.tokenizer_dir,
        prompts_file=args.prompts,
        no_samples=args.no_samples,
        out_dir=args.out,
        command=shlex.join(["python", "tools/eval.py", *argv]),
    )


def _print_summary(record: dict, path: Path) -> None:
    parts = [f"step {record['step']}"]
    if record.get("val_loss") is not None:
        parts.append(f"val_loss {record['val_loss']:.4f} ppl {record['val_ppl']:.2f}")
    for task, scores in (record.get("tasks") or {}).items():
        metrics = " ".join(f"{k} {scores[k]:.4f}" for k in ("acc", "acc_norm") if k in scores)
        parts.append(f"{task}: {metrics}")
    print("  ".join(parts))
    for sample in record.get("samples") or []:
        print(f"  {sample['prompt']!r} -> {sample['greedy']!r}")
    print(f"-> {path}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    quiet_bars_off_terminal()  # in a log file: our sparse progress lines, no redrawn bars
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if args.data_dir:  # local data only: never wait on a network timeout
            os.environ.setdefault(var, "1")
    if not torch.cuda.is_available():
        tune_host_malloc()  # CPU: reuse freed logits buffers (sys time 33% -> 6% of the run)
    options = _options(args, argv)
    target = Path(args.checkpoint)
    try:
        if not args.all:
            record, path = evaluate_checkpoint(target, options, which=args.which)
            _print_summary(record, path)
            return 0
        if not is_run_dir(target):
            raise ValueError(f"--all needs a run directory; {target} is not one")
        ckpts = list_checkpoints(target)
        if not ckpts:
            raise ValueError(f"{target}/checkpoints holds no complete checkpoint")
        out_dir = Path(args.out) if args.out else target / EVAL_DIR_NAME
        for step, folder in ckpts:
            if args.skip_existing and eval_json_path(out_dir, step).is_file():
                print(f"step {step}: result exists, skipped")
                continue
            record, path = evaluate_checkpoint(folder, options)
            _print_summary(record, path)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
