"""model.name = gpt: the GPT-2-class decoder (torchgpt/model/gpt.py) in every flavor of
torchgpt/model/args.py, parallelized by torchgpt/parallel/parallelize.py, costed by
torchgpt/model/cost.py."""

from __future__ import annotations

from typing import Any

from torchgpt.model import cost
from torchgpt.model.args import ModelArgs, get_model_args
from torchgpt.model.gpt import GPT
from torchgpt.parallel.parallelize import parallelize_gpt
from torchgpt.step.spec import TrainSpec


def _model_args(section: Any) -> ModelArgs:
    """The flavor's args with the block options the [model] section sets on top."""
    return get_model_args(section.flavor, **section.options())


SPEC = TrainSpec(
    model_args=_model_args,
    build_model=GPT,
    parallelize=parallelize_gpt,
    cost=cost,
    doc="GPT-2-class decoder (flavors gpt2-*, modern-*, debug)",
)
