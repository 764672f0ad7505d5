"""Build a GPT from any torchgpt checkpoint, with no process group: the one canonical loader.

`load_model_from_checkpoint(path)` accepts a model export file (`save_model_only`, e.g.
RUN_DIR/model.pt), a DCP step folder (RUN_DIR/checkpoints/step-N) or a run directory, and
returns (GPT, meta). `dcp_to_torch` turns a DCP checkpoint into the single-file export.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Literal

import torch

from torchgpt.checkpoint import integrity, layout
from torchgpt.checkpoint.export import load_full_model_state_dict, load_model_only, save_model_only
from torchgpt.model.args import ModelArgs
from torchgpt.model.gpt import GPT

logger = logging.getLogger(__name__)

EXPORT_NAME = "model.pt"
CHECKPOINTS_NAME = "checkpoints"
Which = Literal["latest", "best", "export"]
_WHICH = ("latest", "best", "export")


def _export_step(payload: dict[str, Any]) -> int | None:
    """The step of an export: recorded by dcp_to_torch, else the run's last step (the trainer
    writes RUN_DIR/model.pt once, after training.steps)."""
    if isinstance(payload.get("step"), int):
        return payload["step"]
    steps = ((payload.get("config") or {}).get("training") or {}).get("steps")
    return steps if isinstance(steps, int) else None


def _pick_in_run(run_dir: Path, which: str, allow_export: bool) -> Path:
    """The export file or step folder that `which` names inside a run directory."""
    ckpt_dir = run_dir / CHECKPOINTS_NAME
    complete = layout.scan(ckpt_dir).complete
    export = run_dir / EXPORT_NAME
    if which == "best":
        best_step, _ = layout.read_best(ckpt_dir)
        by_step = dict(complete)
        if best_step not in by_step:
            raise ValueError(
                f"{ckpt_dir} has no usable best checkpoint (best.json names step {best_step}; "
                f"complete: {sorted(by_step)}); run with validation enabled, or use which=latest"
            )
        return by_step[best_step]
    if which == "export" or (allow_export and export.is_file() and not complete):
        if not export.is_file():
            raise ValueError(f"run directory {run_dir} has no {EXPORT_NAME}; use which=latest")
        return export
    if allow_export and export.is_file():
        # model.pt is newer only when the run saved no checkpoint of its last step; at the same
        # step the DCP checkpoint wins (full-precision weights; the export may be bf16).
        export_step = _export_step(load_model_only(export, mmap=True))
        if export_step is not None and export_step > complete[-1][0]:
            return export
    if not complete:
        raise ValueError(
            f"run directory {run_dir} has no complete checkpoint under {CHECKPOINTS_NAME}/"
            f"{'' if not allow_export else f' and no {EXPORT_NAME}'}; point at a step-N folder "
            "or a model export file instead"
        )
    return complete[-1][1]


def resolve_checkpoint(path: str | Path, which: str = "latest", allow_export: bool = True) -> Path:
    """The export file or DCP step folder `path` stands for.

    Args:
        path: an export file, a step-N folder, a run directory or its checkpoints/ folder.
        which: for a run directory: "latest" (the newest complete checkpoint; RUN_DIR/model.pt
            only when it is newer than every checkpoint, or there is none), "best" (lowest
            validation loss, from best.json) or "export" (RUN_DIR/model.pt).
        allow_export: False picks among DCP checkpoints only (for conversions).

    Raises:
        ValueError: the path is missing, incomplete or not a torchgpt checkpoint.
    """
    if which not in _WHICH:
        raise ValueError(f"which={which!r}: expected one of {_WHICH}")
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"{path} does not exist; pass a model export file, a step-N folder or a run"
        )
    if path.is_file():
        if not allow_export:
            raise ValueError(f"{path} is a file; pass a DCP step-N folder or a run directory")
        return path
    if (path / layout.DCP_METADATA_NAME).is_file():
        problem = layout.explicit_problem(path, path.parent)
        if problem is not None:
            raise ValueError(problem)
        return path
    if path.name == CHECKPOINTS_NAME and not (path / CHECKPOINTS_NAME).is_dir():
        path = path.parent
    if (path / CHECKPOINTS_NAME).is_dir() or (path / EXPORT_NAME).is_file():
        return _pick_in_run(path, which, allow_export)
    raise ValueError(
        f"{path} is neither a DCP checkpoint folder (no .metadata) nor a run directory (no "
        f"{CHECKPOINTS_NAME}/ or {EXPORT_NAME}); pass RUN_DIR, RUN_DIR/checkpoints/step-N or a .pt"
    )


def read_model_state(source: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full model tensors and meta (kind, step, val_loss, model_args, config) of a resolved path."""
    if source.is_file():
        payload = load_model_only(source)
        meta = {
            "kind": "export",
            "step": _export_step(payload),
            "val_loss": payload.get("val_loss"),
            "model_args": payload["model_args"] or {},
            "config": payload["config"] or {},
        }
        return payload["model"], meta
    problem = integrity.verify(source)
    if problem is not None:
        raise ValueError(
            f"checkpoint {source} fails verification: {problem}; pick another checkpoint"
        )
    info = layout.read_json(source / layout.INFO_NAME) or {}
    extra = info.get("extra") or {}
    meta = {
        "kind": "dcp",
        "step": layout.step_of(source),
        "val_loss": info.get("val_loss"),
        "model_args": extra.get("model_args") or {},
        "config": extra.get("config") or {},
    }
    return load_full_model_state_dict(source), meta


def build_model(
    model_args: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    source: str | Path = "checkpoint",
    dtype: torch.dtype | None = torch.float32,
) -> GPT:
    """A CPU GPT in eval mode holding `state_dict` exactly (strict key and shape match).

    Args:
        model_args: ModelArgs fields as saved beside the weights.
        state_dict: full tensors keyed like `GPT.state_dict()`; a tied lm-head may be absent.
        source: named in error messages.
        dtype: parameter dtype; None keeps the saved floating-point dtype.
    """
    if not model_args:
        raise ValueError(
            f"{source} carries no model_args, so the architecture is unknown; save checkpoints "
            "with CheckpointManager(extra_metadata={'model_args': ...}) or save_model_only"
        )
    known = {f.name for f in dataclasses.fields(ModelArgs)}
    unknown = sorted(set(model_args) - known)
    if unknown:
        raise ValueError(
            f"{source}: model_args fields {unknown} are unknown to this torchgpt's ModelArgs; "
            "load it with the torchgpt version that saved it"
        )
    args = ModelArgs(**model_args)
    if dtype is None:
        floats = [t.dtype for t in state_dict.values() if t.is_floating_point()]
        dtype = floats[0] if floats else torch.float32
    with torch.device("meta"):
        model = GPT(args)
    model.to_empty(device="cpu")
    model.to(dtype)
    model.tie_weights()
    state = dict(state_dict)
    if args.tie_embeddings and "output.weight" not in state and "tok_embeddings.weight" in state:
        state["output.weight"] = state["tok_embeddings.weight"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{source}: the weights do not fit its model_args ({str(e).strip()[:600]}); the "
            "checkpoint and its model_args disagree"
        ) from e
    model.init_buffers()
    return model.eval()


def load_model_from_checkpoint(
    path: str | Path, which: Which = "latest", *, dtype: torch.dtype | None = torch.float32
) -> tuple[GPT, dict[str, Any]]:
    """Build a CPU GPT (eval mode) from any torchgpt checkpoint; needs no process group.

    Args:
        path: a model export file, a DCP step-N folder, a run directory (or its checkpoints/).
        which: for a run directory, see `resolve_checkpoint` ("latest", "best" or "export").
        dtype: parameter dtype (default float32); None keeps the saved dtype.

    Returns:
        (model, meta): meta holds "source" (the file or folder read), "kind" ("export" or
        "dcp"), "run_dir" (or None), "step", "val_loss" (None when unknown), "model_args" and
        "config" (dicts; config is {} when unknown).

    Raises:
        ValueError: the path is missing, incomplete or not a torchgpt checkpoint, or its
            weights do not fit its model args.
    """
    source = resolve_checkpoint(path, which)
    state, meta = read_model_state(source)
    model = build_model(meta["model_args"], state, source=source, dtype=dtype)
    run_dir = source.parent
    if source.is_dir():
        run_dir = source.parent.parent if source.parent.name == CHECKPOINTS_NAME else None
    elif source.name != EXPORT_NAME:
        run_dir = None
    meta.update(source=str(source), run_dir=str(run_dir) if run_dir is not None else None)
    logger.info("loaded %s (%s, step %s)", source, meta["kind"], meta["step"])
    return model, meta


def dcp_to_torch(
    checkpoint: str | Path,
    out: str | Path,
    *,
    which: Which = "latest",
    dtype: torch.dtype | None = None,
) -> tuple[Path, GPT]:
    """Convert a DCP checkpoint into one torch.save file {model, model_args, config, step, ...}.

    The model entry is the plain state dict (unwrapped, unprefixed keys), checked by building
    the GPT from it. Reads in this process alone, whatever number of ranks saved it.

    Args:
        checkpoint: a step-N folder or a run directory (its latest/best checkpoint).
        out: the file to write (written to a temporary name, then renamed).
        which: "latest" or "best" when `checkpoint` is a run directory.
        dtype: cast floating-point tensors (e.g. torch.bfloat16); None keeps them.

    Returns:
        (the file written, the GPT built from the checkpoint in `dtype`).
    """
    if which == "export":
        raise ValueError("dcp_to_torch reads DCP checkpoints: use which='latest' or 'best'")
    source = resolve_checkpoint(checkpoint, which, allow_export=False)
    state, meta = read_model_state(source)
    model = build_model(meta["model_args"], state, source=source, dtype=dtype)
    path = save_model_only(
        model.state_dict(),
        meta["model_args"],
        meta["config"],
        out,
        dtype,
        step=meta["step"],
        val_loss=meta["val_loss"],
    )
    logger.info("converted %s (step %s) to %s", source, meta["step"], path)
    return path, model
