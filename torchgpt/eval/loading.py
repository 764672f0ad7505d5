"""Load a GPT for evaluation from a model export file, a DCP checkpoint folder or a run directory.

`load_model(path)` returns a float32 CPU GPT in eval mode plus what is known about it (step,
tokens seen, model args, resolved config); `list_checkpoints(run_dir)` lists a run's complete
checkpoints for `tools/eval.py --all`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch

from torchgpt.checkpoint import layout
from torchgpt.checkpoint.export import load_full_model_state_dict, load_model_only
from torchgpt.data.tokenizer import VOCAB_SIZE
from torchgpt.model import GPT

logger = logging.getLogger(__name__)

EXPORT_NAME = "model.pt"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
Which = Literal["latest", "best", "export"]


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


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The JSON records of RUN_DIR/metrics.jsonl ([] when absent); bad lines are skipped."""
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
    return records


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


def _resolve_run_dir(run_dir: Path, which: Which) -> Path:
    ckpts = list_checkpoints(run_dir)
    export = run_dir / EXPORT_NAME
    if which == "export" or (not ckpts and export.is_file()):
        if not export.is_file():
            raise ValueError(f"run directory {run_dir} has no {EXPORT_NAME}; drop --which export")
        return export
    if not ckpts:
        raise ValueError(
            f"run directory {run_dir} has no complete checkpoint under checkpoints/ and no "
            f"{EXPORT_NAME}; point at a checkpoint folder or a model export file instead"
        )
    if which == "best":
        best_step, _ = layout.read_best(run_dir / "checkpoints")
        by_step = dict(ckpts)
        if best_step is None or best_step not in by_step:
            raise ValueError(
                f"{run_dir}/checkpoints has no usable best.json (best step {best_step}); "
                "use --which latest"
            )
        return by_step[best_step]
    return ckpts[-1][1]


def build_model_from_state_dict(
    model_args: dict, state_dict: dict[str, torch.Tensor], source: Path
) -> GPT:
    """A plain fp32 CPU GPT from ModelArgs fields and a full state dict; ValueError names `source`.

    One implementation for the whole package: torchgpt.checkpoint.loading.build_model.
    """
    from torchgpt.checkpoint.loading import build_model

    return build_model(model_args, state_dict, source=source, dtype=torch.float32)


def _load_dcp(folder: Path) -> tuple[dict, dict[str, Any]]:
    info = layout.read_json(folder / layout.INFO_NAME) or {}
    extra = info.get("extra") or {}
    if not extra.get("model_args"):
        raise ValueError(
            f"{folder}/{layout.INFO_NAME} holds no model_args; this checkpoint cannot be "
            "rebuilt without them (was it written by torchgpt's CheckpointManager?)"
        )
    meta = {
        "step": layout.step_of(folder),
        "model_args": extra["model_args"],
        "config": extra.get("config") or {},
        "checkpoint_val_loss": info.get("val_loss"),
    }
    return load_full_model_state_dict(folder), meta


def load_model(path: str | Path, which: Which = "latest") -> tuple[GPT, dict[str, Any]]:
    """Build a float32 CPU GPT (eval mode) from a checkpoint.

    Args:
        path: a model export file (`save_model_only`), a DCP folder RUN_DIR/checkpoints/step-N,
            or a run directory.
        which: for a run directory: the newest checkpoint ("latest"), the lowest-val-loss one
            ("best") or RUN_DIR/model.pt ("export"); with no checkpoints model.pt is used.

    Returns:
        (model, meta) where meta has "source", "kind" ("export" or "dcp"), "run_dir" (or None),
        "step", "tokens_seen", "model_args" and "config".

    Raises:
        ValueError: the path does not exist or is not a torchgpt checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist; pass a model.pt, step-N folder or run")
    if path.is_dir() and not (path / layout.DCP_METADATA_NAME).is_file():
        if not is_run_dir(path):
            raise ValueError(
                f"{path} is neither a DCP checkpoint folder (no .metadata) nor a run directory "
                "(no checkpoints/, model.pt or config.json)"
            )
        path = _resolve_run_dir(path, which)
    if path.is_dir():
        state, meta = _load_dcp(path)
        meta["kind"] = "dcp"
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    else:
        payload = load_model_only(path)
        state = payload["model"]
        config = payload["config"] or {}
        # The trainer writes RUN_DIR/model.pt after its last step, so that is its step.
        step = payload.get("step")
        run_dir = path.parent if (path.parent / CONFIG_NAME).is_file() else None
        if step is None and run_dir is not None and path.name == EXPORT_NAME:
            step = (config.get("training") or {}).get("steps")
        meta = {"step": step, "model_args": payload["model_args"] or {}, "config": config}
        meta["kind"] = "export"
        if not meta["model_args"]:
            raise ValueError(f"{path} holds no model_args; re-export it with save_model_only")
    model = build_model_from_state_dict(meta["model_args"], state, path)
    meta.update(source=str(path), run_dir=str(run_dir) if run_dir else None)
    meta["tokens_seen"] = tokens_seen_at(run_dir, meta["step"], meta["config"])
    logger.info("loaded %s (%s, step %s)", path, meta["kind"], meta["step"])
    return model, meta
