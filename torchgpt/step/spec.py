"""The model seam: `model.name = NAME` is torchgpt/step/specs/NAME.py and its SPEC.

A TrainSpec registers together what the step and the estimator need of a model (TorchTitan's
TrainSpec, sized for this project): the args of a flavor, the builder of a plain model, the
parallelize function that applies AC, compile and data parallelism to it, and the model's
memory / FLOP model (a module of the functions torchgpt/model/cost.py defines for the GPT). The
optimizer comes through its own seam, torchgpt/optim/registry.py (optimizer.name). A new model
is its module under torchgpt/model/, one spec file here and the config value; spec modules are
imported on first lookup, so this file imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torch import nn

from torchgpt.model.args import ModelArgs
from torchgpt.utils import plugins


@dataclass(frozen=True)
class TrainSpec:
    """One model for the step and the estimator.

    Attributes:
        model_args: the [model] section -> the validated ModelArgs of its flavor.
        build_model: ModelArgs -> the plain (unparallelized) model, on the current default
            device (the builder materializes it on meta first, then on CPU).
        parallelize: (model, dims, mesh, *, device, ac_mode, ac_selective_option,
            compile_enable, compile_whole_model, param_dtype, reshard_after_forward) -> the
            module to train (parallel/parallelize.py's signature).
        cost: the memory / FLOP model, a module like torchgpt.model.cost.
        doc: one line for errors and --help.
    """

    model_args: Callable[[Any], ModelArgs]
    build_model: Callable[[ModelArgs], nn.Module]
    parallelize: Callable[..., nn.Module]
    cost: ModuleType
    doc: str


def available() -> list[str]:
    """The model names: modules of torchgpt/step/specs/ that define SPEC."""
    from torchgpt.step import specs

    return plugins.available(specs, TrainSpec)


def train_spec(name: str) -> TrainSpec:
    """The SPEC of torchgpt/step/specs/NAME.py.

    Raises:
        ValueError: no such model (the message lists those there are).
    """
    from torchgpt.step import specs

    return plugins.lookup(specs, TrainSpec, name, key="model.name", what="model")
