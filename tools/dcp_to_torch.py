#!/usr/bin/env python
"""Convert a DCP checkpoint (any number of ranks) into one torch.save file, optionally also HF.

The file holds {"model": plain state dict, "model_args", "config", "step", "val_loss"} and
loads with torch.load(path, weights_only=True) on any machine, no process group needed.

python tools/dcp_to_torch.py outputs/debug/checkpoints/step-60 model.pt
python tools/dcp_to_torch.py outputs/debug model.pt --which best --dtype bfloat16 --hf hf_out/

With --hf the GPT-2 tokenizer is found first (offline: --tokenizer-dir, $TORCHGPT_GPT2_BPE_DIR or
$TORCHGPT_SHARED_DIR; else the hub): a failure is one error line and exit code 2, and nothing is
written; the .pt file and the folder appear only once both are complete.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from torchgpt.checkpoint import dcp_to_torch, resolve_checkpoint
from torchgpt.checkpoint.layout import INFO_NAME, read_json

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="RUN_DIR/checkpoints/step-N, or a run directory")
    p.add_argument("out", help="the .pt file to write")
    p.add_argument(
        "--which",
        choices=("latest", "best"),
        default="latest",
        help="checkpoint of a run directory: newest complete, or lowest validation loss",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(_DTYPES),
        default=None,
        help="cast floating-point weights (default: keep the checkpoint's, float32)",
    )
    p.add_argument(
        "--hf",
        metavar="OUT_DIR",
        help="also write a complete transformers folder here (weights, config, generation\n"
        "config, GPT-2 tokenizer, README.md): AutoTokenizer / AutoModelForCausalLM and\n"
        "`lm_eval --model hf --model_args pretrained=OUT_DIR` load it as is",
    )
    p.add_argument(
        "--tokenizer-dir",
        metavar="DIR",
        help="GPT-2 BPE files (vocab.bpe, encoder.json) for --hf; default the run's\n"
        "data.tokenizer_dir (when that folder exists here), else $TORCHGPT_GPT2_BPE_DIR,\n"
        "else $TORCHGPT_SHARED_DIR/tokenizers/gpt2, else the hub's gpt2",
    )
    return p


def run_tokenizer_dir(checkpoint: str, which: str) -> str | None:
    """The checkpoint's data.tokenizer_dir when it names a folder on this machine.

    Read from checkpoint_info.json without loading any weights; a folder of the machine that
    trained (absent here) is skipped, so the environment's offline folder still serves.
    """
    source = resolve_checkpoint(checkpoint, which, allow_export=False)
    info = (read_json(source / INFO_NAME) or {}) if source.is_dir() else {}
    config = (info.get("extra") or {}).get("config") or {}
    folder = (config.get("data") or {}).get("tokenizer_dir")
    return folder if folder and Path(folder).is_dir() else None


def convert(args: argparse.Namespace, dtype: torch.dtype | None) -> None:
    """Write args.out (and args.hf): the tokenizer first, the .pt renamed in last."""
    if not args.hf:
        path, _ = dcp_to_torch(args.checkpoint, args.out, which=args.which, dtype=dtype)
        print(f"wrote {path}")
        return
    from torchgpt.eval.hf_export import load_gpt2_tokenizer, minimal_card, write_hf_folder

    tokenizer = load_gpt2_tokenizer(
        args.tokenizer_dir or run_tokenizer_dir(args.checkpoint, args.which)
    )
    out = Path(args.out)
    staged = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        staged, model = dcp_to_torch(args.checkpoint, staged, which=args.which, dtype=dtype)
        step = torch.load(staged, map_location="cpu", weights_only=True).get("step")
        hf_dir = write_hf_folder(
            model,
            args.hf,
            dtype=dtype or torch.float32,
            tokenizer=tokenizer,
            card=minimal_card(model, source=args.checkpoint, step=step),
        )
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    print(f"wrote {out}")
    print(f"wrote {hf_dir} (transformers folder with tokenizer)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dtype = _DTYPES[args.dtype] if args.dtype else None
    try:
        convert(args, dtype)
    except ValueError as e:  # bad paths, no transformers equivalent, TokenizerUnavailable
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
