"""Load a GPT for evaluation from a model export file, a DCP checkpoint folder or a run directory.

`load_model(path)` returns a float32 CPU GPT in eval mode plus what is known about it (step,
tokens seen, model args, resolved config), through the one checkpoint loader
(torchgpt.checkpoint.loading); `list_checkpoints(run_dir)` lists a run's complete checkpoints
for `tools/eval.py --all`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from torchgpt.checkpoint import layout
from torchgpt.checkpoint.loading import EXPORT_NAME, Which, load_model_from_checkpoint
from torchgpt.data.tokenizer import VOCAB_SIZE
from torchgpt.model import GPT

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
__all__ = ["EXPORT_NAME", "Which", "check_vocab", "list_checkpoints", "load_model"]


def check_vocab(model: GPT, n_vocab: int = VOCAB_SIZE, source: str = "the model") -> None:
    """Raise when the model's vocabulary differs from the tokenizer's.

    Raises:
        ValueError: naming both sizes and what to do.
    """
    if model.args.vocab_size != n_vocab:
        raise ValueError(
            f"{source} has vocab_size={model.args.vocab_size} but the GPT-2 tokenizer has "
            f"{n_vocab} tokens; torchgpt evaluation needs a checkpoint trained with the GPT-2 "
            f"tokenizer (vocab_size={n_vocab})"
        )


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of a run, oldest first."""
    return layout.scan(Path(run_dir) / "checkpoints").complete


def is_run_dir(path: Path) -> bool:
    """True for a folder that holds checkpoints/, model.pt or config.json of a training run."""
    return path.is_dir() and any(
        (path / name).exists() for name in ("checkpoints", EXPORT_NAME, CONFIG_NAME)
    )


def current_timeline(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the run as it stands: a resume rewinds to its checkpoint and logs those
    steps again. The trainer marks each resume ({"resumed_from": N}: every earlier record after
    step N is dropped); for files without marks, a training record at a step already passed
    drops every earlier record from that step on."""
    kept: list[dict[str, Any]] = []
    last_train = 0
    for record in records:
        step = record.get("step")
        if isinstance(record.get("resumed_from"), int):  # the trainer's mark of a resume
            resumed = record["resumed_from"]
            kept = [r for r in kept if not isinstance(r.get("step"), int) or r["step"] <= resumed]
            last_train = min(last_train, resumed)
            continue
        if isinstance(step, int) and "loss" in record:
            if step <= last_train:
                kept = [
                    r for r in kept if not (isinstance(r.get("step"), int) and r["step"] >= step)
                ]
            last_train = step
        kept.append(record)
    return kept


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The JSON records of RUN_DIR/metrics.jsonl ([] when absent), each step once after a
    resume (`current_timeline`); bad lines are skipped."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    records = []
    for num, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            # A run killed mid-write leaves a partial last line; the rest is still good.
            logger.warning("%s line %d is not JSON; skipped", path, num)
    return current_timeline(records)


def tokens_seen_at(run_dir: Path | None, step: int | None, config: dict | None) -> int | None:
    """Tokens seen at `step`: from metrics.jsonl, else step * training.global_batch_tokens."""
    if step is None:
        return None
    if run_dir is not None:
        for record in reversed(read_metrics(run_dir)):
            if record.get("step") == step and isinstance(record.get("tokens_seen"), int):
                return record["tokens_seen"]
    batch = ((config or {}).get("training") or {}).get("global_batch_tokens")
    return step * batch if isinstance(batch, int) else None


def load_model(path: str | Path, which: Which = "latest") -> tuple[GPT, dict[str, Any]]:
    """Build a float32 CPU GPT (eval mode) from a checkpoint, with what evaluation reports.

    The checkpoint is found and built by the one loader,
    torchgpt.checkpoint.load_model_from_checkpoint (same meaning of latest / best / export);
    this adds the tokens seen at that step.

    Args:
        path: a model export file (`save_model_only`), a DCP folder RUN_DIR/checkpoints/step-N,
            or a run directory.
        which: for a run directory: "latest", "best" or "export" (see
            torchgpt.checkpoint.loading.resolve_checkpoint).

    Returns:
        (model, meta): the loader's meta ("source", "kind", "run_dir", "step", "val_loss",
        "model_args", "config") plus "tokens_seen".

    Raises:
        ValueError: the path does not exist or is not a torchgpt checkpoint.
    """
    model, meta = load_model_from_checkpoint(path, which, dtype=torch.float32)
    run_dir = Path(meta["run_dir"]) if meta["run_dir"] else None
    meta["tokens_seen"] = tokens_seen_at(run_dir, meta["step"], meta["config"])
    return model, meta
