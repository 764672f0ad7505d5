#!/usr/bin/env python
"""Convert a DCP checkpoint (any number of ranks) into one torch.save file, optionally also HF.

The file holds {"model": plain state dict, "model_args", "config", "step", "val_loss"} and
loads with torch.load(path, weights_only=True) on any machine, no process group needed.

python tools/dcp_to_torch.py outputs/debug/checkpoints/step-60 model.pt
python tools/dcp_to_torch.py outputs/debug model.pt --which best --dtype bfloat16 --hf hf_out/
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from torchgpt.checkpoint import dcp_to_torch

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
        "data.tokenizer_dir, else $TORCHGPT_GPT2_BPE_DIR, else the hub's gpt2",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dtype = _DTYPES[args.dtype] if args.dtype else None
    try:
        path, model = dcp_to_torch(args.checkpoint, args.out, which=args.which, dtype=dtype)
        print(f"wrote {path}")
        if args.hf:
            from torchgpt.eval.hf_export import minimal_card, write_hf_folder  # transformers

            saved = torch.load(path, map_location="cpu", weights_only=True)
            run_bpe = ((saved.get("config") or {}).get("data") or {}).get("tokenizer_dir")
            hf_dir = write_hf_folder(
                model,
                args.hf,
                dtype=dtype or torch.float32,
                bpe_dir=args.tokenizer_dir or run_bpe or None,
                card=minimal_card(model, source=args.checkpoint, step=saved.get("step")),
            )
            print(f"wrote {hf_dir} (transformers folder with tokenizer)")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
