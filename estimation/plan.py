"""TrainingPlan: the resolved facts of one training layout that every estimate needs.

Built from a validated JobConfig and a world size; holds the model args (from
torchgpt.model.args, never re-derived), the data-parallel degrees (from ParallelDims), the batch
arithmetic and the precision / activation-checkpointing modes. Immutable, so the suggestion
search can try variations with `replace()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from torchgpt.config import JobConfig, batch_problem, grad_accum_steps
from torchgpt.model.args import ModelArgs, get_model_args
from torchgpt.parallel.dims import ParallelDims
from torchgpt.train_module import precision_mode

PrecisionMode = Literal["fp32", "autocast-bf16", "fsdp-bf16"]  # train_module.precision_mode


@dataclass(frozen=True)
class TrainingPlan:
    """One training layout: model, parallelism, batch and memory-relevant options.

    Attributes mirror the config keys they come from; derived quantities are properties.
    """

    flavor: str
    args: ModelArgs
    world_size: int
    dp_replicate: int
    dp_shard: int
    data_parallel: Literal["fsdp", "ddp"]
    micro_batch_size: int
    seq_len: int
    global_batch_tokens: int
    steps: int
    mixed_precision: Literal["bf16", "fp32"]
    ac_mode: Literal["none", "full", "selective"]
    ac_selective_option: str
    reshard_after_forward: Literal["default", "always", "never"]
    compile_enable: bool
    max_norm: float = 1.0
    optimizer_implementation: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    optimizer_name: Literal["adamw", "muon"] = "adamw"

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
        t, ac = cfg.training, cfg.activation_checkpoint
        plan = cls(
            flavor=cfg.model.flavor,
            args=get_model_args(cfg.model.flavor, qk_norm=cfg.model.qk_norm),
            world_size=world_size,
            dp_replicate=dims.dp_replicate,
            dp_shard=dims.dp_shard,
            data_parallel=cfg.parallelism.data_parallel,
            micro_batch_size=t.micro_batch_size,
            seq_len=t.seq_len,
            global_batch_tokens=t.global_batch_tokens,
            steps=t.steps,
            # "auto" is bf16 on every GPU of torchgpt.hardware.GPUS (all support it)
            mixed_precision="bf16" if t.mixed_precision == "auto" else t.mixed_precision,
            ac_mode=ac.mode,
            ac_selective_option=ac.selective_option,
            reshard_after_forward=cfg.parallelism.fsdp_reshard_after_forward,
            compile_enable=cfg.compile.enable,
            max_norm=t.max_norm,
            optimizer_implementation=cfg.optimizer.implementation,
            optimizer_name=cfg.optimizer.name,
        )
        plan.check_batch()
        return plan

    # ---- derived ------------------------------------------------------------------------
    @property
    def dims(self) -> ParallelDims:
        return ParallelDims(self.dp_replicate, self.dp_shard, self.world_size, self.data_parallel)

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
    def tokens_per_micro_batch(self) -> int:
        """Tokens one rank processes per forward/backward (B x T)."""
        return self.micro_batch_size * self.seq_len

    @property
    def grad_accum(self) -> int:
        """Micro-steps per optimizer step (the trainer's torchgpt.config.grad_accum_steps)."""
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
        """One line describing the data-parallel layout."""
        if self.fsdp and self.dp_replicate > 1:
            return f"HSDP (replicate {self.dp_replicate} x shard {self.dp_shard})"
        if self.fsdp:
            return f"FSDP2 (shard {self.dp_shard})"
        if self.ddp:
            return f"DDP ({self.world_size} replicas)"
        return "single device"

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
        """A copy with `changes` applied; a new world_size re-infers the shard degree.

        Raises:
            ValueError: the variation is not a valid layout (see `check_batch`).
        """
        if "world_size" in changes and "dp_shard" not in changes:
            ws = int(changes["world_size"])  # type: ignore[arg-type]
            if self.data_parallel == "fsdp":
                if ws % self.dp_replicate != 0:
                    raise ValueError(f"dp_replicate={self.dp_replicate} does not divide {ws}")
                changes["dp_shard"] = ws // self.dp_replicate
            else:
                changes["dp_replicate"], changes["dp_shard"] = ws, 1
        plan = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        plan.check_batch()
        return plan
