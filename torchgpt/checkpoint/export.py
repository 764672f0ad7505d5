"""Model-only files: a single torch.save export of the full weights, and DCP -> plain tensors.

`save_model_only` / `load_model_only` write and read {"model", "model_args", "config"} (and
optionally "step", "val_loss") in one file, written to a temporary name and then renamed;
`load_full_model_state_dict` reads the model entries of a DCP checkpoint folder into full
tensors with no process group (tools/dcp_to_torch).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from torchgpt.checkpoint import layout
from torchgpt.checkpoint.compat import quiet_no_dist, read_metadata

logger = logging.getLogger(__name__)

_EXPORT_KEYS = ("model", "model_args", "config")


def _plain(obj: Any) -> Any:
    """JSON-round-trip a dict so it loads with weights_only=True (Paths, enums become strings)."""
    if obj is None:
        return None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=str))


def save_model_only(
    model_state_dict_full: dict[str, torch.Tensor],
    model_args: Any,
    config: dict | None,
    path: str | Path,
    dtype: torch.dtype | None = None,
    *,
    step: int | None = None,
    val_loss: float | None = None,
) -> Path:
    """Write one torch.save file {"model", "model_args", "config"[, "step", "val_loss"]}.

    Call it on one rank (rank 0) with a full (unsharded) state dict; no collectives.
    Floating-point tensors are cast to `dtype` when given. Tensors shared in the input stay
    shared, and a tied lm-head (model_args tie_embeddings, equal to the token embedding) is
    stored once. The file appears only once fully written.

    Args:
        model_state_dict_full: plain parameter/buffer tensors keyed by FQN.
        model_args: a dataclass or dict of model hyper-parameters (None allowed).
        config: the resolved config as a dict (None allowed).
        path: destination file.
        dtype: e.g. torch.bfloat16 to halve the file; None keeps each tensor's dtype.
        step: the training step the weights are from, when known.
        val_loss: their validation loss, when known.

    Returns:
        The path written.
    """
    path = Path(path)
    model_args = _plain(model_args)
    weights: dict[str, torch.Tensor] = {}
    converted: dict[int, torch.Tensor] = {}  # id(input tensor) -> output: keeps sharing
    for key, tensor in model_state_dict_full.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"save_model_only: {key!r} is a {type(tensor).__name__}, not a tensor")
        if id(tensor) not in converted:
            out = tensor.detach().cpu()
            if dtype is not None and out.is_floating_point():
                out = out.to(dtype)
            converted[id(tensor)] = out
        weights[key] = converted[id(tensor)]
    _share_tied_head(weights, model_args)
    payload = {"model": weights, "model_args": model_args, "config": _plain(config)}
    if step is not None:
        payload["step"] = int(step)
    if val_loss is not None:
        payload["val_loss"] = float(val_loss)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    layout.fsync_dir(path.parent)
    return path


def _share_tied_head(weights: dict[str, torch.Tensor], model_args: Any) -> None:
    """Store a tied lm-head once: point output.weight at the equal token embedding (in place).

    A full state dict gathered from a sharded model holds two copies of a tied matrix; torch.save
    writes shared tensors once, which halves the file of a small-vocab-dominated model.
    """
    if not (isinstance(model_args, dict) and model_args.get("tie_embeddings")):
        return
    emb, head = weights.get("tok_embeddings.weight"), weights.get("output.weight")
    if emb is not None and head is not None and emb is not head and torch.equal(emb, head):
        weights["output.weight"] = emb


def export_model(
    model: nn.Module,
    path: str | Path,
    *,
    model_args: Any = None,
    config: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Gather the full weights of a (possibly sharded) model and save them on rank 0.

    Collective when a process group is initialised: every rank must call it.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state_dict = get_model_state_dict(model, options=options)
    is_dist = dist.is_available() and dist.is_initialized()
    if not is_dist or dist.get_rank() == 0:
        save_model_only(state_dict, model_args, config, path, dtype)
    if is_dist:
        dist.barrier()
    return Path(path)


def export_final_model(model: nn.Module, cfg: Any, model_args: Any) -> Path:
    """The Trainer's end-of-run export: RUN_DIR/model.pt in checkpoint.export_dtype, with the
    model's args and the job config (collective)."""
    path = export_model(
        model,
        cfg.run_dir / "model.pt",
        model_args=dataclasses.asdict(model_args),
        config=cfg.to_dict(),
        dtype=getattr(torch, cfg.checkpoint.export_dtype),
    )
    logger.info("exported the final model to %s", path)
    return path


def load_model_only(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a `save_model_only` file: {"model": state dict, "model_args": dict, "config": dict}
    plus "step" / "val_loss" when they were recorded (dcp_to_torch records both).

    `mmap=True` maps the tensors instead of reading them: cheap when only the metadata is needed.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder: for a DCP checkpoint use load_full_model_state_dict({path})"
        )
    if not path.is_file():
        raise ValueError(f"model export {path} does not exist; check the path (RUN_DIR/model.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise ValueError(f"model export {path} is unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or any(k not in payload for k in _EXPORT_KEYS):
        raise ValueError(
            f"{path} is not a torchgpt model export (expected a dict with keys {_EXPORT_KEYS})"
        )
    return payload


def load_full_model_state_dict(dcp_dir: str | Path, prefix: str = "model") -> dict[str, Any]:
    """Full tensors of the `prefix` entries of a DCP checkpoint, read in this process alone.

    Works whatever number of ranks saved it; needs no process group. Keys lose the prefix
    (`model.wte.weight` -> `wte.weight`).
    """
    path = Path(dcp_dir)
    if not (path / layout.DCP_METADATA_NAME).is_file():
        raise ValueError(
            f"{path} is not a DCP checkpoint folder (no .metadata); point at RUN_DIR/"
            "checkpoints/step-N"
        )
    if not (path / layout.MARKER_NAME).is_file():
        logger.warning("%s has no %s marker: it may be incomplete", path, layout.MARKER_NAME)
    metadata = read_metadata(path)
    head = f"{prefix}."
    template: dict[str, Any] = {}
    for key, entry in metadata.state_dict_metadata.items():
        if key.startswith(head) and isinstance(entry, TensorStorageMetadata):
            template[key] = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
    if not template:
        raise ValueError(f"checkpoint {path} holds no tensors under {head!r}")
    # Flat dotted keys load as they are: DCP flattens nested dicts to the same names.
    with quiet_no_dist():
        dcp.load(template, checkpoint_id=str(path), no_dist=True)
    return {key[len(head) :]: value for key, value in template.items()}
