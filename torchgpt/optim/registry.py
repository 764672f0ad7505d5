"""The optimizer seam: `optimizer.name = NAME` is the module torchgpt/optim/NAME.py and its SPEC.

An OptimizerSpec is what the step and the estimator need of an optimizer: how to build it over
a (possibly sharded) model from the [optimizer] section, and its memory model, the state it
keeps beside the fp32 master weights and what its update allocates for a moment. A new optimizer
is one new file here defining SPEC, plus the config value (and any keys of its own in
[optimizer]). Modules are imported on first lookup, so this file imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchgpt.model.args import ModelArgs
from torchgpt.utils import plugins

# (label, category, bytes) rows, the estimator's MemoryItem fields.
MemoryRows = list[tuple[str, str, int]]


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer for the step (`build`) and for the estimator (`state_rows`, `step_rows`).

    Attributes:
        build: (model, [optimizer] section, device type) -> the optimizer over the model's
            trainable parameters.
        state_rows: (model args, shard degree, tp) -> the per-rank optimizer state resident
            through the run (of a tensor-parallel rank's parameters, sharded `shard degree`
            ways under FSDP2; `adamw.local_params` counts them).
        step_rows: (model args, shard degree, sharded, [optimizer] section, tp) -> what one
            update allocates beside the state and the gradients, at its largest moment.
        doc: one line for errors and --help.
    """

    build: Callable[[nn.Module, Any, str], torch.optim.Optimizer]
    state_rows: Callable[[ModelArgs, int, int], MemoryRows]
    step_rows: Callable[[ModelArgs, int, bool, Any, int], MemoryRows]
    doc: str


def available() -> list[str]:
    """The optimizer names: modules of this folder that define SPEC."""
    import torchgpt.optim as package

    return plugins.available(package, OptimizerSpec)


def optimizer_spec(name: str) -> OptimizerSpec:
    """The SPEC of torchgpt/optim/NAME.py.

    Raises:
        ValueError: no such optimizer (the message lists those there are).
    """
    import torchgpt.optim as package

    return plugins.lookup(package, OptimizerSpec, name, key="optimizer.name", what="optimizer")
