"""Evaluate one checkpoint end to end: val loss, harness tasks, fixed-prompt samples -> JSON record.

`evaluate_checkpoint` is what `tools/eval.py` runs for each checkpoint; every number a report
shows is produced here and stored in RUN_DIR/eval/step-N.json.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchgpt.data.tokenizer import get_tokenizer
from torchgpt.eval.loading import Which, check_vocab, load_model
from torchgpt.eval.results import (
    EVAL_DIR_NAME,
    SCHEMA_VERSION,
    environment_info,
    eval_json_path,
    write_eval_json,
)
from torchgpt.eval.samples import generate_samples, load_prompts, settings_dict
from torchgpt.eval.tasks import DEFAULT_TASKS
from torchgpt.model import num_params
from torchgpt.utils.provenance import now_iso

logger = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """What to evaluate and how (tools/eval.py flags map one to one)."""

    data: str | None = None
    """Prepared token shards with a val split (tools/prepare_data.py); None skips val loss."""
    val_tokens: int | None = None
    """Val tokens to score; None takes the run's validation.tokens."""
    val_dtype: str = "auto"
    """"auto" (the run's mixed_precision), "float32" or "bfloat16"."""
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    """Harness tasks; [] skips them."""
    limit: int | None = None
    """Items per task (None: all)."""
    data_dir: str | None = None
    """Local task data in the hub schema (../shared/data/eval); None uses the hub."""
    include_paths: list[str] = field(default_factory=list)
    """Folders of the user's own task YAMLs (lm-eval's --include_path)."""
    batch_size: int = 16
    tokenizer_dir: str | None = None
    """GPT-2 BPE folder (vocab.bpe, encoder.json); None follows resolve_bpe_dir (env, hub)."""
    prompts_file: str | None = None
    """Prompts TOML (default configs/eval_prompts.toml); samples are skipped when no_samples."""
    no_samples: bool = False
    out_dir: str | None = None
    """Where step-N.json goes; default RUN_DIR/eval."""
    command: str = ""
    """The command line, recorded for the report."""


def _val_settings(config: dict, model_args: dict, options: EvalOptions) -> dict[str, Any]:
    training = config.get("training") or {}
    validation = config.get("validation") or {}
    seq_len = int(training.get("seq_len") or model_args.get("max_seq_len", 1024))
    micro = int(validation.get("micro_batch_size") or training.get("micro_batch_size") or 8)
    tokens = options.val_tokens or validation.get("tokens")
    if not tokens:
        raise ValueError(
            "--val-tokens is required: the checkpoint's config has no validation.tokens"
        )
    dtype = options.val_dtype
    if dtype == "auto":
        dtype = "bfloat16" if training.get("mixed_precision") == "bf16" else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--val-dtype {dtype!r} must be auto, float32 or bfloat16")
    return {"seq_len": seq_len, "micro_batch_size": micro, "tokens": int(tokens), "dtype": dtype}


def _run_val(model, meta: dict, options: EvalOptions) -> dict[str, Any]:
    from torchgpt.eval.val import evaluate_val

    s = _val_settings(meta["config"], meta["model_args"], options)
    val = evaluate_val(
        model,
        options.data,
        seq_len=s["seq_len"],
        num_tokens=s["tokens"],
        micro_batch_size=s["micro_batch_size"],
        autocast_dtype=torch.bfloat16 if s["dtype"] == "bfloat16" else None,
    )
    return {**val, "val_seq_len": s["seq_len"], "val_dtype": s["dtype"], "val_data": options.data}


def _run_tasks(model, options: EvalOptions) -> dict[str, Any]:
    from torchgpt.eval.harness import run_harness_eval

    out = run_harness_eval(
        model,
        options.tasks,
        options.limit,
        options.data_dir,
        options.batch_size,
        include_paths=options.include_paths,
    )
    return {
        "tasks": out["tasks"],
        "task_data_dir": out["data_dir"],
        "task_include_paths": out["include_paths"],
    }


def _output_path(meta: dict, options: EvalOptions) -> Path:
    if options.out_dir:
        out_dir = Path(options.out_dir)
    elif meta["run_dir"]:
        out_dir = Path(meta["run_dir"]) / EVAL_DIR_NAME
    else:
        raise ValueError(
            f"{meta['source']} is not inside a run directory; pass --out DIR for the result JSON"
        )
    return eval_json_path(out_dir, meta["step"], name=Path(meta["source"]).stem)


def evaluate_checkpoint(
    path: str | Path, options: EvalOptions, which: Which = "latest"
) -> tuple[dict[str, Any], Path]:
    """Evaluate the checkpoint at `path` and write its JSON record.

    Args:
        path: model export file, DCP step folder or run directory (see `load_model`).
        options: what to evaluate.
        which: checkpoint choice inside a run directory ("latest", "best", "export").

    Returns:
        (record, path of the JSON written).

    Raises:
        ValueError: bad checkpoint, missing data, unknown task, vocabulary mismatch.
    """
    if options.tasks or not options.no_samples:  # the tokenizer first: a hub failure costs 0 s
        get_tokenizer(options.tokenizer_dir)
    model, meta = load_model(path, which)
    out_path = _output_path(meta, options)  # fail before the slow work, not after
    check_vocab(model, source=meta["source"])
    prompt_set = None if options.no_samples else load_prompts(options.prompts_file)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "step": meta["step"],
        "tokens_seen": meta["tokens_seen"],
        "checkpoint": meta["source"],
        "checkpoint_kind": meta["kind"],
        "created_at": now_iso(),
        "model_args": meta["model_args"],
        "num_params": num_params(model.args),
        "config": meta["config"],
        "val_loss": None,
        "val_ppl": None,
        "limit": options.limit,
    }
    timings: dict[str, float] = {}
    if options.data:
        t0 = time.perf_counter()
        record.update(_run_val(model, meta, options))
        timings["val"] = time.perf_counter() - t0
    if options.tasks:
        t0 = time.perf_counter()
        record.update(_run_tasks(model, options))
        timings["tasks"] = time.perf_counter() - t0
    if prompt_set is not None:
        t0 = time.perf_counter()
        record["samples"] = generate_samples(model, prompt_set.prompts, prompt_set.settings)
        record["sample_settings"] = settings_dict(prompt_set.settings)
        timings["samples"] = time.perf_counter() - t0
    record.update(environment_info(), command=options.command, timings_s=timings)
    write_eval_json(out_path, record)
    logger.info("wrote %s", out_path)
    return record, out_path
