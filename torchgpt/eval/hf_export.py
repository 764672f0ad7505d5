"""A complete transformers folder for a GPT: weights, config, generation config, GPT-2 tokenizer
and a model card, so `AutoTokenizer` / `AutoModelForCausalLM.from_pretrained(DIR)` and
`lm_eval --model hf --model_args pretrained=DIR` need nothing else.

`write_hf_folder` is the one writer (tools/dcp_to_torch.py --hf, tools/push_to_hub.py, the
parity test and bench/eval.py use it). The tokenizer is built offline from GPT-2's own BPE files
(vocab.bpe + encoder.json) found by torchgpt.data.tokenizer.resolve_bpe_dir (bpe_dir, else
$TORCHGPT_GPT2_BPE_DIR, else $TORCHGPT_SHARED_DIR/tokenizers/gpt2), else taken from the hub's
`gpt2`; a hub that cannot serve it is one `TokenizerUnavailable` line, without retries.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from torchgpt.data.tokenizer import (
    OFFLINE_HINT,
    TokenizerUnavailable,
    check_bpe_dir,
    hub_unreachable,
    resolve_bpe_source,
)
from torchgpt.model import GPT
from torchgpt.model.args import num_params

EOT = "<|endoftext|>"
CHECK = ("Hello world", [15496, 995])


def load_gpt2_tokenizer(bpe_dir: str | os.PathLike | None = None) -> Any:
    """GPT-2's tokenizer as a transformers `PreTrainedTokenizerFast`, from local files if any.

    With a BPE folder (see `resolve_bpe_dir`) it is built with the `tokenizers` library directly
    (byte-level BPE, no prefix space, no added BOS; <|endoftext|> as bos / eos / unk), whose API
    is the same in transformers 4 and 5. Without one, the hub's `gpt2` tokenizer is loaded
    (network or the HF cache).

    Raises:
        ValueError: the chosen BPE folder lacks vocab.bpe / encoder.json or holds other files.
        TokenizerUnavailable: no BPE folder and the hub cannot serve `gpt2`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder, origin = resolve_bpe_source(bpe_dir)
    if folder is None:
        return _hub_gpt2_tokenizer()
    files = check_bpe_dir(folder, origin)
    vocab = json.loads(files["encoder.json"].read_text(encoding="utf-8"))
    lines = files["vocab.bpe"].read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#")]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=EOT, eos_token=EOT, unk_token=EOT
    )


def _hub_gpt2_tokenizer() -> Any:
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else hub_unreachable()
    try:
        # Unreachable: only the local HF cache is asked (transformers would retry the network).
        return AutoTokenizer.from_pretrained("gpt2", local_files_only=offline is not None)
    except OSError as err:  # transformers' "couldn't connect" and missing-file errors
        reason = offline or f"{type(err).__name__}: {str(err).splitlines()[0]}"
        raise TokenizerUnavailable(
            f"cannot fetch the GPT-2 tokenizer (the Hugging Face hub's gpt2) and it is not in "
            f"the local HF cache ({reason}); {OFFLINE_HINT}"
        ) from err


def save_gpt2_tokenizer(
    out: str | os.PathLike, bpe_dir: str | os.PathLike | None = None, max_length: int = 1024
) -> None:
    """Save GPT-2's tokenizer (`load_gpt2_tokenizer`) to `out` in transformers' format."""
    tok = load_gpt2_tokenizer(bpe_dir)
    tok.model_max_length = max_length
    tok.save_pretrained(out)


def minimal_card(model: GPT, *, source: str = "", step: int | None = None) -> str:
    """A short README.md: what the model is, where it came from, how to load and evaluate it."""
    from torchgpt.model.hf import hf_family

    a = model.args
    origin = f"Exported from `{source}`" if source else "Exported"
    origin += f" (step {step})" if step is not None else ""
    return f"""# torchgpt {hf_family(a)} model

A decoder-only transformer trained with torchgpt ({num_params(a):,}
parameters: {a.n_layers} layers, d={a.dim}, {a.n_heads} heads, context {a.max_seq_len}) with
the GPT-2 tokenizer. {origin} by `tools/dcp_to_torch.py --hf`.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")
model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")
ids = tokenizer("Hello world", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0]))
```

Evaluate with lm-evaluation-harness: `lm_eval --model hf --model_args pretrained=THIS_FOLDER
--tasks hellaswag`. A research model of this size is not fit for any use beyond study.
"""


def write_hf_folder(
    model: GPT,
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    bpe_dir: str | os.PathLike | None = None,
    tokenizer: Any = None,
    card: str | None = None,
) -> Path:
    """Write `model` as a complete transformers folder (built under a temporary name, then
    swapped in, so a failure never leaves a half folder or loses the previous one).

    Args:
        model: an unsharded GPT with GPT-2, Llama or Qwen3-style options (see export_hf).
        out_dir: folder to create or replace.
        dtype: dtype of the saved weights.
        bpe_dir: folder with vocab.bpe and encoder.json (see load_gpt2_tokenizer).
        tokenizer: an already loaded `load_gpt2_tokenizer()` (a tool gets it before its slow
            work); None loads it from `bpe_dir`.
        card: README.md text; default `minimal_card(model)`.

    Raises:
        ValueError: no transformers equivalent, no BPE files, or a tokenizer that does not
            reproduce GPT-2's ids.
        TokenizerUnavailable: no BPE folder and the hub cannot serve `gpt2`.
    """
    from transformers import AutoTokenizer

    from torchgpt.model.hf import export_hf

    tok = tokenizer if tokenizer is not None else load_gpt2_tokenizer(bpe_dir)  # before writing
    tok.model_max_length = model.args.max_seq_len
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        export_hf(model, tmp, dtype=dtype)
        tok.save_pretrained(tmp)
        ids = AutoTokenizer.from_pretrained(tmp)(CHECK[0])["input_ids"]
        if ids != CHECK[1]:
            raise ValueError(f"the exported tokenizer gives {ids} for {CHECK[0]!r}, not {CHECK[1]}")
        (tmp / "README.md").write_text(card or minimal_card(model), encoding="utf-8")
    except BaseException:  # Ctrl-C included: never leave OUT_DIR.tmp behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(out.name + ".old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
