#!/usr/bin/env python
"""Tokenize a corpus into GPT-2 token shards for torchgpt, or verify a shard folder.

python tools/prepare_data.py --out data/fineweb_edu --max-tokens 1e9          # hub, streamed
python tools/prepare_data.py --out data/openstax --input ../shared/data/text/openstax
python tools/prepare_data.py --verify data/openstax

Offline, the GPT-2 BPE files come from --tokenizer-dir, $TORCHGPT_GPT2_BPE_DIR or
$TORCHGPT_SHARED_DIR/tokenizers/gpt2; a failure to fetch them (or to reach the hub dataset) is
one error line and exit code 2, and a failed first run leaves no --out folder behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

from torchgpt.data.prepare import DEFAULT_VAL_FRACTION, STATE_FILE, PrepareConfig, prepare
from torchgpt.data.shards import verify_shards
from torchgpt.data.tokenizer import hub_unreachable


def _count(text: str) -> int:
    value = float(text)  # accept 1e9 and 100_000_000
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text} is not a whole number")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", help="output folder for the shards and manifest.json")
    p.add_argument("--verify", metavar="DIR", help="check every shard of DIR and exit")
    src = p.add_argument_group("source (local --input, otherwise the hub dataset is streamed)")
    src.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="PATH",
        help="file, folder or glob of .parquet/.jsonl/.jsonl.gz/.txt (repeatable)",
    )
    src.add_argument("--hf-dataset", default="HuggingFaceFW/fineweb-edu")
    src.add_argument("--hf-config", default="sample-10BT")
    src.add_argument("--hf-split", default="train")
    src.add_argument("--text-field", default="text", help="parquet column / jsonl field")
    out = p.add_argument_group("output")
    out.add_argument("--shard-size", type=_count, default=100_000_000, help="tokens per shard")
    out.add_argument("--max-tokens", type=_count, help="cap on all tokens written (train + val)")
    val = out.add_mutually_exclusive_group()
    val.add_argument(
        "--val-fraction",
        type=float,
        help=f"share of documents held out, by a hash of the text (default {DEFAULT_VAL_FRACTION})",
    )
    val.add_argument(
        "--val-tokens", type=_count, help="hold out the first documents up to N tokens"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="tokenizer processes (0: tokenize in this process)",
    )
    p.add_argument(
        "--tokenizer-dir",
        metavar="DIR",
        help="folder with GPT-2 vocab.bpe + encoder.json (default $TORCHGPT_GPT2_BPE_DIR, else\n"
        "$TORCHGPT_SHARED_DIR/tokenizers/gpt2, else tiktoken's cache or download)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.verify:
        problems = verify_shards(args.verify)
        for problem in problems:
            print(f"BAD: {problem}", file=sys.stderr)
        if problems:
            print(f"{args.verify}: {len(problems)} problem(s)", file=sys.stderr)
            return 1
        print(f"{args.verify}: every shard matches its header and manifest.json")
        return 0
    if not args.out:
        build_parser().error("--out is required (or --verify DIR)")
    script = sys.argv[0] if argv is None else "tools/prepare_data.py"
    command = shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])
    cfg = PrepareConfig(
        out_dir=args.out,
        inputs=args.input,
        hf_dataset=args.hf_dataset,
        hf_config=args.hf_config or None,
        hf_split=args.hf_split,
        text_field=args.text_field,
        workers=args.workers,
        shard_size=args.shard_size,
        max_tokens=args.max_tokens,
        val_fraction=args.val_fraction,
        val_tokens=args.val_tokens,
        tokenizer_dir=args.tokenizer_dir,
        progress=not args.no_progress,
        command=command,
    )
    out = Path(args.out)
    created = not out.exists()
    try:
        if not args.input and (unreachable := hub_unreachable()):
            # datasets would first retry for about 25 s
            raise RuntimeError(
                f"cannot stream dataset {args.hf_dataset!r} from the hub ({unreachable}); "
                "without network access, prepare local files with --input instead"
            )
        prepare(cfg)
    except (ValueError, RuntimeError) as err:  # TokenizerUnavailable is a ValueError
        if created and not (out / STATE_FILE).exists():
            shutil.rmtree(out, ignore_errors=True)  # a failed first run: nothing to resume
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
