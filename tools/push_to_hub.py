#!/usr/bin/env python
"""Stage a torchgpt checkpoint as a Hugging Face model repository, check it, and upload it.

The staged folder is what `transformers` users expect: config.json + model.safetensors
(GPT-2 or Llama layout, see torchgpt/model/hf.py), the GPT-2 tokenizer files, and README.md =
the run's model card with the Hub's metadata header, plus the report files beside the card
(BENCHMARK.md, LOSS_CURVE.png, SAMPLES.md). Before anything is uploaded, the staged folder is
loaded back with transformers and its logits are compared with torchgpt's on a fixed text.

python tools/push_to_hub.py outputs/reference --repo-id me/torchgpt-ref --card MODEL_CARD.md \
    --dry-run
python tools/push_to_hub.py outputs/reference --repo-id me/torchgpt-ref --card MODEL_CARD.md

Uploading needs network access and a token (`huggingface-cli login` or HF_TOKEN); --dry-run
stages and checks only. The staging folder is written under a temporary name and renamed, so a
failed or interrupted run never leaves a half-staged folder behind. The GPT-2 tokenizer files
come from --tokenizer-dir, $TORCHGPT_GPT2_BPE_DIR or $TORCHGPT_SHARED_DIR/tokenizers/gpt2 (else
the network); a failure to fetch them, or to reach the Hub, is one error line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from torchgpt.checkpoint import load_model_from_checkpoint
from torchgpt.data.tokenizer import get_tokenizer, hub_unreachable
from torchgpt.model.gpt import GPT

REPORT_FILES = ("BENCHMARK.md", "LOSS_CURVE.png", "SAMPLES.md")
CHECK_TEXT = "The mitochondria is the powerhouse of the cell, and photosynthesis happens in"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="run directory, DCP step-N folder or model export file")
    p.add_argument("--repo-id", required=True, help="Hub repository, e.g. user/torchgpt-124m")
    p.add_argument("--which", choices=("latest", "best", "export"), default="best")
    p.add_argument("--card", help="model card to use as README.md (default RUN_DIR/report/)")
    p.add_argument("--stage", help="staging folder (default: a new temporary folder)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    p.add_argument("--license", default="bsd-3-clause", help="Hub license id for the card")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="stage and check, do not upload")
    p.add_argument(
        "--tokenizer-dir",
        metavar="DIR",
        help="GPT-2 BPE files (vocab.bpe, encoder.json); default $TORCHGPT_GPT2_BPE_DIR, else\n"
        "$TORCHGPT_SHARED_DIR/tokenizers/gpt2, else the network",
    )
    return p


def hub_header(repo_id: str, license_id: str, meta: dict) -> str:
    """The YAML block the Hub reads from the top of README.md."""
    dataset = ((meta.get("config") or {}).get("data") or {}).get("dataset_path", "")
    lines = [
        "---",
        "language: en",
        f"license: {license_id}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [torchgpt, causal-lm, pretraining]",
        f"model_name: {repo_id.split('/')[-1]}",
    ]
    if "fineweb" in dataset.lower():
        lines.append("datasets: [HuggingFaceFW/fineweb-edu]")
    return "\n".join(lines + ["---", ""])


def find_card(card: str | None, meta: dict) -> Path:
    if card:
        path = Path(card)
    elif meta.get("run_dir"):
        path = Path(meta["run_dir"]) / "report" / "MODEL_CARD.md"
    else:
        raise ValueError("pass --card MODEL_CARD.md (the checkpoint is not inside a run dir)")
    if not path.is_file():
        raise ValueError(
            f"model card {path} does not exist; write it with `python tools/report.py RUN_DIR` "
            "or pass --card"
        )
    return path


def check_staged(stage: Path, model: GPT, atol: float = 1e-4, bpe_dir: str | None = None) -> float:
    """Load the staged folder with transformers; its tokens and logits must match torchgpt's.

    Returns the largest absolute logit difference.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = get_tokenizer(bpe_dir).encode_ordinary(CHECK_TEXT)
    hf_ids = AutoTokenizer.from_pretrained(stage)(CHECK_TEXT)["input_ids"]
    if hf_ids != ids:
        raise ValueError(
            f"staged tokenizer in {stage} disagrees with tiktoken gpt2 on {CHECK_TEXT!r}"
        )
    hf_model = AutoModelForCausalLM.from_pretrained(stage, torch_dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        ours = model.float().eval()(x).float()
        theirs = hf_model(x).logits.float()[..., : ours.shape[-1]]
    diff = (ours - theirs).abs().max().item()
    if diff > atol:
        raise ValueError(f"staged model in {stage}: logits differ from torchgpt by {diff:.2e}")
    return diff


def stage(args: argparse.Namespace) -> tuple[Path, dict]:
    """Write and check the staging folder; return it and a summary."""
    from torchgpt.eval.hf_export import load_gpt2_tokenizer  # needs transformers

    get_tokenizer(args.tokenizer_dir)  # both tokenizers before the slow work
    tokenizer = load_gpt2_tokenizer(args.tokenizer_dir)
    model, meta = load_model_from_checkpoint(args.checkpoint, args.which)
    card = find_card(args.card, meta)
    final = Path(args.stage) if args.stage else Path(tempfile.mkdtemp(prefix="torchgpt-hub-"))
    if final.exists() and any(final.iterdir()) and not (final / "torchgpt_source.json").exists():
        raise ValueError(
            f"{final} exists and is not a torchgpt staging folder; pick another --stage"
        )
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        summary = _stage_into(tmp, args, model, meta, card, tokenizer)
    except BaseException:  # Ctrl-C included: no half-staged folder, no empty temporary one
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.stage:
            shutil.rmtree(final, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final, summary


def _stage_into(
    tmp: Path, args: argparse.Namespace, model: GPT, meta: dict, card: Path, tokenizer: object
) -> dict:
    """Write the staging folder's files into `tmp` and check them; return the summary."""
    from torchgpt.eval.hf_export import write_hf_folder

    body = card.read_text(encoding="utf-8")
    write_hf_folder(
        model,
        tmp,
        dtype=_DTYPES[args.dtype],
        tokenizer=tokenizer,
        card=hub_header(args.repo_id, args.license, meta) + body,
    )
    for name in REPORT_FILES:
        if (card.parent / name).is_file():
            shutil.copy2(card.parent / name, tmp / name)
    summary = {
        "checkpoint": str(meta["source"]),
        "step": meta.get("step"),
        "val_loss": meta.get("val_loss"),
        "model_args": meta.get("model_args"),
        "card": str(card),
    }
    (tmp / "torchgpt_source.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    summary["max_logit_diff"] = check_staged(tmp, model, bpe_dir=args.tokenizer_dir)
    return summary


def upload(folder: Path, repo_id: str, private: bool, step: int | None) -> str:
    from huggingface_hub import HfApi

    offline = hub_unreachable()  # one probe, not huggingface_hub's retries with backoff
    if offline:
        raise OSError(offline)
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=f"torchgpt checkpoint (step {step})",
    )
    return str(getattr(info, "commit_url", info))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        folder, summary = stage(args)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"staged {folder} from {summary['checkpoint']} (step {summary['step']}); transformers "
        f"reloads it with logits within {summary['max_logit_diff']:.1e} of torchgpt"
    )
    if args.dry_run:
        print("--dry-run: not uploading")
        return 0
    try:
        url = upload(folder, args.repo_id, args.private, summary["step"])
    except Exception as e:  # network, auth, permissions: say so, keep the staged folder
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(
            f"error: upload to {args.repo_id} failed ({reason}); the staged folder {folder} is "
            "complete and checked: fix the token/network and rerun, or upload it yourself",
            file=sys.stderr,
        )
        return 2
    print(f"uploaded: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
