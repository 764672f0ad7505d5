"""Distributed checkpoints (torch.distributed.checkpoint) of everything a restart needs.

`CheckpointManager` saves Stateful objects to RUN_DIR/checkpoints/step-N/ (atomically, with
best/latest retention and optional async save) and resumes from them; `export` holds the
model-only file format and a no-process-group reader of DCP model weights; `loading` builds a
GPT from any checkpoint (`load_model_from_checkpoint`, the canonical loader) and converts DCP
checkpoints to the single-file format (`dcp_to_torch`).
"""

from torchgpt.checkpoint.export import (
    export_model,
    load_full_model_state_dict,
    load_model_only,
    save_model_only,
)
from torchgpt.checkpoint.loading import (
    build_model,
    dcp_to_torch,
    load_model_from_checkpoint,
    resolve_checkpoint,
)
from torchgpt.checkpoint.manager import CheckpointManager, CheckpointSaveError
from torchgpt.checkpoint.states import ModelState, OptimizerState, PickledState, RNGState

__all__ = [
    "CheckpointManager",
    "CheckpointSaveError",
    "ModelState",
    "OptimizerState",
    "PickledState",
    "RNGState",
    "build_model",
    "dcp_to_torch",
    "export_model",
    "load_full_model_state_dict",
    "load_model_from_checkpoint",
    "load_model_only",
    "resolve_checkpoint",
    "save_model_only",
]
