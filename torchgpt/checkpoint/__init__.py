"""Distributed checkpoints (torch.distributed.checkpoint) of everything a restart needs.

`CheckpointManager` saves Stateful objects to RUN_DIR/checkpoints/step-N/ (atomically, with
best/latest retention and optional async save) and resumes from them; `export` holds the
model-only file format and a no-process-group reader of DCP model weights.
"""

from torchgpt.checkpoint.export import (
    export_model,
    load_full_model_state_dict,
    load_model_only,
    save_model_only,
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
    "export_model",
    "load_full_model_state_dict",
    "load_model_only",
    "save_model_only",
]
