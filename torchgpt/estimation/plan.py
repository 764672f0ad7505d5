"""TrainingPlan: the resolved facts of one training layout that every estimate needs.

Built from a validated JobConfig and a world size; holds the step as the Trainer describes it
(torchgpt.step.config.TrainModuleConfig: model args, precision, AC, compile, optimizer, never
re-derived here), the parallel degrees (from ParallelDims: data-parallel and tensor-parallel)
and the batch arithmetic.
Immutable, so the suggestion search can try variations with `replace()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from torchgpt.config.batch import batch_problem, grad_accum_steps
from torchgpt.config.job_config import JobConfig
from torchgpt.model.args import ModelArgs
from torchgpt.parallel.dims import ParallelDims
from torchgpt.step.config import TrainModuleConfig
from torchgpt.step.train_module import precision_mode

PrecisionMode = Literal["fp32", "autocast-bf16", "fsdp-bf16"]  # train_module.precision_mode


# Keys of TrainingPlan.replace that change the step, as TrainModuleConfig spells them.
_STEP_KEYS = (
    "mixed_precision",
    "ac_mode",
    "ac_selective_option",
    "reshard_after_forward",
    "compile_enable",
    "max_norm",
)
# The step's facts a plan reads through as attributes (the estimate's --json lists them flat).
STEP_FIELDS = ("flavor", "steps", *_STEP_KEYS, "optimizer_implementation", "optimizer_name")


@dataclass(frozen=True)
class TrainingPlan:
    """One training layout: the step (a TrainModuleConfig, the Trainer's own description) on
    a data-parallel layout with a batch.

    The step's fields read through as attributes (plan.ac_mode, plan.args, ...); derived
    quantities are properties.
    """

    step: TrainModuleConfig
    world_size: int
    dp_replicate: int
    dp_shard: int
    data_parallel: Literal["fsdp", "ddp"]
    micro_batch_size: int
    seq_len: int
    global_batch_tokens: int
    tp: int = 1
    loss_parallel: bool = True  # read only when tp > 1

    @classmethod
    def from_config(cls, cfg: JobConfig, world_size: int) -> TrainingPlan:
        """Resolve `cfg` for `world_size` processes (one GPU each).

        Raises:
            ValueError: world_size < 1, or a layout the config cannot run (degrees that do not
                multiply to world_size, a global batch not divisible by the micro-batch).
        """
        if world_size < 1:
            raise ValueError(f"--nproc: {world_size} must be >= 1 (one process per GPU)")
        dims = ParallelDims.from_config(cfg.parallelism, world_size)
        t = cfg.training
        # "auto" is bf16 on every GPU of torchgpt.utils.hardware.GPUS (all support it)
        precision = "bf16" if t.mixed_precision == "auto" else t.mixed_precision
        plan = cls(
            step=TrainModuleConfig.from_job(cfg, mixed_precision=precision),
            world_size=world_size,
            dp_replicate=dims.dp_replicate,
            dp_shard=dims.dp_shard,
            data_parallel=cfg.parallelism.data_parallel,
            micro_batch_size=t.micro_batch_size,
            seq_len=t.seq_len,
            global_batch_tokens=t.global_batch_tokens,
            tp=dims.tp,
            loss_parallel=dims.loss_parallel,
        )
        plan.check_batch()
        return plan

    # ---- the step's fields --------------------------------------------------------------
    @property
    def flavor(self) -> str:
        return self.step.flavor

    @property
    def args(self) -> ModelArgs:
        return self.step.model_args

    @property
    def steps(self) -> int:
        return self.step.total_steps

    @property
    def mixed_precision(self) -> Literal["bf16", "fp32"]:
        return self.step.mixed_precision

    @property
    def ac_mode(self) -> Literal["none", "full", "selective"]:
        return self.step.ac_mode

    @property
    def ac_selective_option(self) -> str:
        return self.step.ac_selective_option

    @property
    def reshard_after_forward(self) -> Literal["default", "always", "never"]:
        return self.step.reshard_after_forward

    @property
    def compile_enable(self) -> bool:
        return self.step.compile_enable

    @property
    def max_norm(self) -> float:
        return self.step.max_norm

    @property
    def optimizer_name(self) -> str:
        return self.step.optimizer.name

    @property
    def optimizer_implementation(self) -> str:
        return self.step.optimizer.implementation

    @property
    def cost(self) -> ModuleType:
        """The model's memory / FLOP model (its TrainSpec's)."""
        return self.step.spec.cost

    # ---- derived ------------------------------------------------------------------------
    @property
    def dims(self) -> ParallelDims:
        return ParallelDims(
            self.dp_replicate,
            self.dp_shard,
            self.world_size,
            self.data_parallel,
            tp=self.tp,
            loss_parallel=self.loss_parallel,
        )

    @property
    def fsdp(self) -> bool:
        """FSDP2 (or HSDP) shards parameters, gradients and optimizer state."""
        return self.dims.fsdp_enabled

    @property
    def ddp(self) -> bool:
        return self.dims.ddp_enabled

    @property
    def shard_degree(self) -> int:
        """How many ranks share one copy of the parameters (1 without FSDP)."""
        return self.dp_shard if self.fsdp else 1

    @property
    def dp_degree(self) -> int:
        return self.dims.dp_degree

    @property
    def vocab_sharded_loss(self) -> bool:
        """The cross-entropy runs on vocabulary shards (tp > 1 with loss parallel)."""
        return self.tp > 1 and self.loss_parallel

    @property
    def tokens_per_micro_batch(self) -> int:
        """Tokens one rank processes per forward/backward (B x T)."""
        return self.micro_batch_size * self.seq_len

    @property
    def grad_accum(self) -> int:
        """Micro-steps per optimizer step (the trainer's
        torchgpt.config.batch.grad_accum_steps)."""
        return grad_accum_steps(
            self.global_batch_tokens, self.micro_batch_size, self.seq_len, self.dp_degree
        )

    @property
    def total_tokens(self) -> int:
        """The configured token budget: training.steps x training.global_batch_tokens."""
        return self.steps * self.global_batch_tokens

    @property
    def precision_mode(self) -> PrecisionMode:
        """How bf16 is applied, as the trainer does: FSDP2 MixedPrecisionPolicy when sharded,
        autocast otherwise (one device or DDP); fp32 everywhere when configured so."""
        return precision_mode(self.mixed_precision == "bf16", fsdp=self.fsdp)

    def layout_text(self) -> str:
        """One line describing the layout: data parallelism, then tensor parallelism."""
        tp = f"TP {self.tp} (sequence parallel)" if self.tp > 1 else ""
        if self.fsdp and self.dp_replicate > 1:
            dp = f"HSDP (replicate {self.dp_replicate} x shard {self.dp_shard})"
        elif self.fsdp:
            dp = f"FSDP2 (shard {self.dp_shard})"
        elif self.ddp:
            dp = f"DDP ({self.world_size} replicas)"
        else:
            return tp or "single device"
        return f"{dp} x {tp}" if tp else dp

    def ac_text(self) -> str:
        if self.ac_mode == "selective":
            opt = self.ac_selective_option
            return "selective (op)" if opt == "op" else f"selective (every {opt}th block)"
        return self.ac_mode

    # ---- variations ---------------------------------------------------------------------
    def check_batch(self) -> None:
        """Raise ValueError unless the global batch splits into whole micro-batches."""
        problem = batch_problem(
            self.global_batch_tokens, self.micro_batch_size, self.seq_len, self.dp_degree
        )
        if problem:
            raise ValueError(problem)

    def replace(self, **changes: object) -> TrainingPlan:
        """A copy with `changes` applied (the step's keys change its TrainModuleConfig); a new
        world_size re-infers the shard degree (tp and dp_replicate kept).

        Raises:
            ValueError: the variation is not a valid layout (see `check_batch`).
        """
        if "world_size" in changes and "dp_shard" not in changes:
            ws = int(changes["world_size"])  # type: ignore[arg-type]
            if self.data_parallel == "fsdp":
                group = self.dp_replicate * self.tp
                if ws % group != 0:
                    raise ValueError(f"dp_replicate x tp = {group} does not divide {ws}")
                changes["dp_shard"] = ws // group
            else:
                changes["dp_replicate"], changes["dp_shard"] = ws, 1
        step = {k: changes.pop(k) for k in list(changes) if k in _STEP_KEYS}
        if step:
            changes["step"] = self.step.replace(**step)
        plan = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        plan.check_batch()
        return plan
