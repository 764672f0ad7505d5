"""Export a GPT for the harness's own `hf` backend with no hub access: weights + GPT-2 tokenizer.

`export_for_hf_backend` writes export_hf's config.json + model.safetensors and a GPT2TokenizerFast
built from the local BPE files into one folder, so `lm_eval --model hf --model_args
pretrained=DIR` (or `HFLM(pretrained=DIR)`) loads everything from there. Used by the parity test
and bench/eval.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchgpt.data.tokenizer import BPE_DIR_ENV
from torchgpt.model import GPT


def export_for_hf_backend(
    model: GPT, out_dir: str | os.PathLike, bpe_dir: str | os.PathLike | None = None
) -> Path:
    """Write `model` and the GPT-2 tokenizer to `out_dir` for transformers / lm-eval's `hf`.

    Args:
        model: an unsharded GPT with GPT-2, Llama or Qwen3-style options (see export_hf).
        out_dir: folder to create or overwrite.
        bpe_dir: folder with vocab.bpe and encoder.json; default $TORCHGPT_GPT2_BPE_DIR.

    Raises:
        ValueError: no BPE folder, or the tokenizer does not reproduce GPT-2's ids.
    """
    from transformers import GPT2TokenizerFast

    from torchgpt.model.hf import export_hf

    bpe_dir = Path(bpe_dir or os.environ.get(BPE_DIR_ENV, ""))
    if not (bpe_dir / "vocab.bpe").is_file() or not (bpe_dir / "encoder.json").is_file():
        raise ValueError(
            f"GPT-2 BPE files not found in {bpe_dir!s}; pass bpe_dir or set {BPE_DIR_ENV} to a "
            "folder with vocab.bpe and encoder.json (e.g. ../shared/tokenizers/gpt2)"
        )
    out = export_hf(model, out_dir)
    # transformers 5.x takes vocab=/merges=; the old vocab_file=/merges_file= names are silently
    # ignored and give an empty vocabulary (ENVIRONMENT_NOTES.md).
    tok = GPT2TokenizerFast(vocab=str(bpe_dir / "encoder.json"), merges=str(bpe_dir / "vocab.bpe"))
    if tok("Hello world")["input_ids"] != [15496, 995]:
        raise ValueError(f"the tokenizer built from {bpe_dir} does not reproduce GPT-2's ids")
    tok.save_pretrained(out)
    return out
