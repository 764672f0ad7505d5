"""TrainModuleConfig: the one description of the training step, resolved from a JobConfig once.

Everything that decides what a step computes and holds (model, precision, clipping, AC,
compile, FSDP2 resharding, optimizer, schedule) and nothing of the loop around it. The Trainer
builds its TrainModule from it (torchgpt/step/build.py), the estimator's TrainingPlan carries
one and traces or sizes the same build, and the benchmarks build through it, so no caller maps
config keys to builder arguments of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from torchgpt.model.args import ModelArgs
from torchgpt.step.spec import TrainSpec, train_spec


@dataclass(frozen=True)
class TrainModuleConfig:
    """The step's description (frozen: variations are `replace(...)` copies).

    Attributes:
        model: the registered model name (model.name; torchgpt/step/specs/).
        flavor: model.flavor, for logs and reports.
        model_args: the flavor's resolved ModelArgs.
        seed: init seed of the weights (job.seed).
        mixed_precision: resolved training.mixed_precision (never "auto").
        max_norm: gradient clipping norm (<= 0: off).
        ac_mode, ac_selective_option: the [activation_checkpoint] section.
        compile_enable, compile_whole_model: the [compile] section.
        reshard_after_forward: parallelism.fsdp_reshard_after_forward.
        optimizer: a copy of the [optimizer] section (its name picks the OptimizerSpec).
        lr_scheduler: a copy of the [lr_scheduler] section.
        total_steps: training.steps (the schedule's length).
    """

    model: str
    flavor: str
    model_args: ModelArgs
    seed: int
    mixed_precision: Literal["bf16", "fp32"]
    max_norm: float
    ac_mode: Literal["none", "full", "selective"]
    ac_selective_option: str
    compile_enable: bool
    compile_whole_model: bool
    reshard_after_forward: Literal["default", "always", "never"]
    optimizer: Any
    lr_scheduler: Any
    total_steps: int

    @classmethod
    def from_job(cls, cfg: Any, *, mixed_precision: str | None = None) -> TrainModuleConfig:
        """The step `cfg` (a validated JobConfig) describes.

        Args:
            mixed_precision: the precision to use instead of training.mixed_precision (the
                estimator plans "auto" as bf16 on a GPU).

        Raises:
            ValueError: the precision is still "auto" (resolve it first:
                torchgpt.training.sizing.resolve_precision), or model.name is unknown.
        """
        t, ac = cfg.training, cfg.activation_checkpoint
        precision = mixed_precision or t.mixed_precision
        if precision not in ("bf16", "fp32"):
            raise ValueError(
                f"training.mixed_precision={precision!r}: resolve 'auto' before describing the "
                "step (torchgpt.training.sizing.resolve_precision)"
            )
        return cls(
            model=cfg.model.name,
            flavor=cfg.model.flavor,
            model_args=train_spec(cfg.model.name).model_args(cfg.model),
            seed=cfg.job.seed,
            mixed_precision=precision,
            max_norm=t.max_norm,
            ac_mode=ac.mode,
            ac_selective_option=ac.selective_option,
            compile_enable=cfg.compile.enable,
            compile_whole_model=cfg.compile.whole_model,
            reshard_after_forward=cfg.parallelism.fsdp_reshard_after_forward,
            optimizer=dataclasses.replace(cfg.optimizer),
            lr_scheduler=dataclasses.replace(cfg.lr_scheduler),
            total_steps=t.steps,
        )

    def replace(self, **changes: Any) -> TrainModuleConfig:
        return dataclasses.replace(self, **changes)

    @property
    def spec(self) -> TrainSpec:
        return train_spec(self.model)

    @property
    def bf16(self) -> bool:
        return self.mixed_precision == "bf16"
