"""Fits / does not fit, against the GPU's memory minus stated headroom, with suggestions.

Headroom assumption: 1 GiB for the CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers,
then 10% of the rest for the caching allocator's fragmentation (reserved but unusable
blocks). When a layout does not fit, the analytic model (which tracks the trace closely and
costs microseconds) tries activation checkpointing, smaller micro-batches with more
accumulation and more GPUs, alone and then combined, and reports the ones that fit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from torchgpt.estimation.memory import analytic_memory
from torchgpt.estimation.plan import TrainingPlan
from torchgpt.utils.hardware import GPUSpec

GIB = 2**30
CUDA_CONTEXT_GIB = 1.0
FRAGMENTATION = 0.10
_AC_ORDER = ("none", "selective", "full")


def usable_bytes(spec: GPUSpec) -> int:
    """Memory a training step may use on one GPU after the headroom assumption."""
    return int((spec.memory_gib - CUDA_CONTEXT_GIB) * (1 - FRAGMENTATION) * GIB)


def headroom_text(spec: GPUSpec) -> str:
    return (
        f"{spec.memory_gib:g} GiB - {CUDA_CONTEXT_GIB:g} GiB CUDA context/workspaces, "
        f"then -{FRAGMENTATION:.0%} allocator fragmentation = "
        f"{usable_bytes(spec) / GIB:.1f} GiB usable"
    )


@dataclass(frozen=True)
class Suggestion:
    """A variation of the layout and its analytic per-GPU peak.

    Attributes:
        changes: human-readable changes, each a CLI override or --nproc.
        peak_bytes: analytic per-rank peak with the changes.
    """

    changes: tuple[str, ...]
    peak_bytes: int


def _ac_options(plan: TrainingPlan) -> list[tuple[str, str]]:
    """(mode, selective_option) upgrades from the current mode: more recompute, less memory."""
    current = _AC_ORDER.index(plan.ac_mode)
    if plan.ac_mode == "selective" and plan.ac_selective_option != "op":
        current = 0  # every-Nth-block selective: op-level selective is still a step up
    out = [(plan.ac_mode, plan.ac_selective_option)]
    out += [(mode, "op") for mode in _AC_ORDER[current + 1 :]]
    return out


def _micro_options(plan: TrainingPlan) -> list[int]:
    sizes, mb = [plan.micro_batch_size], plan.micro_batch_size
    while mb % 2 == 0:
        mb //= 2
        sizes.append(mb)
    return sizes


def _gpu_options(plan: TrainingPlan) -> list[int]:
    return [plan.world_size * k for k in (1, 2, 4, 8)]


def _changes(plan: TrainingPlan, variant: TrainingPlan) -> tuple[str, ...]:
    out = []
    if (variant.ac_mode, variant.ac_selective_option) != (plan.ac_mode, plan.ac_selective_option):
        out.append(f"--activation_checkpoint.mode {variant.ac_mode}")
        if variant.ac_selective_option != plan.ac_selective_option:
            out.append(f"--activation_checkpoint.selective_option {variant.ac_selective_option}")
    if variant.micro_batch_size != plan.micro_batch_size:
        out.append(
            f"--training.micro_batch_size {variant.micro_batch_size} "
            f"(accumulation {variant.grad_accum})"
        )
    if variant.world_size != plan.world_size:
        if plan.data_parallel != "fsdp":
            out.append("--parallelism.data_parallel fsdp")
        out.append(f"--nproc {variant.world_size}")
    return tuple(out)


def _variants(plan: TrainingPlan) -> list[tuple[frozenset[str], TrainingPlan]]:
    """Every valid combination of milder-to-stronger changes, tagged with what changed."""
    out = []
    for ac, mb, ws in itertools.product(
        _ac_options(plan), _micro_options(plan), _gpu_options(plan)
    ):
        kw: dict[str, object] = dict(
            ac_mode=ac[0], ac_selective_option=ac[1], micro_batch_size=mb, world_size=ws
        )
        if ws != plan.world_size and plan.data_parallel != "fsdp":
            kw.update(data_parallel="fsdp", dp_replicate=1, dp_shard=ws)  # more GPUs: shard
        try:
            variant = plan.replace(**kw)
        except ValueError:
            continue  # e.g. the global batch no longer divides into micro-batches
        changed = {
            name
            for name, differs in (
                ("ac", ac != (plan.ac_mode, plan.ac_selective_option)),
                ("micro_batch", mb != plan.micro_batch_size),
                ("gpus", ws != plan.world_size),
            )
            if differs
        }
        if changed:
            out.append((frozenset(changed), variant))
    return out


def suggest(plan: TrainingPlan, budget_bytes: int, limit: int = 4) -> list[Suggestion]:
    """The mildest fitting change of each kind, fewest kinds of change first.

    For each set of changed knobs (AC, micro-batch, GPUs) keep the fitting variant with the
    largest peak: the least recompute, biggest micro-batch or fewest GPUs that still fit.
    Returns an empty list when nothing in the search space fits.
    """
    best: dict[frozenset[str], tuple[int, TrainingPlan]] = {}
    for changed, variant in _variants(plan):
        peak = analytic_memory(variant).peak_bytes
        if peak <= budget_bytes and peak > best.get(changed, (-1, plan))[0]:
            best[changed] = (peak, variant)
    if not best:
        return []
    fewest = min(len(k) for k in best)
    chosen = sorted(((k, v) for k, v in best.items() if len(k) == fewest), key=lambda kv: -kv[1][0])
    return [Suggestion(_changes(plan, v), peak) for _, (peak, v) in chosen[:limit]]


@dataclass(frozen=True)
class Verdict:
    """The decision and what it was based on."""

    fits: bool
    peak_bytes: int
    usable_bytes: int
    basis: str
    suggestions: tuple[Suggestion, ...]

    def text(self) -> str:
        share = self.peak_bytes / self.usable_bytes
        if self.fits:
            return (
                f"FITS: {self.basis} peak {self.peak_bytes / GIB:.2f} GiB "
                f"= {share:.0%} of {self.usable_bytes / GIB:.1f} GiB usable"
            )
        return (
            f"DOES NOT FIT: {self.basis} peak {self.peak_bytes / GIB:.2f} GiB "
            f"= {share:.0%} of {self.usable_bytes / GIB:.1f} GiB usable"
        )


def decide(plan: TrainingPlan, spec: GPUSpec, peak_bytes: int, basis: str) -> Verdict:
    """Verdict for a per-rank peak, with suggestions when it does not fit."""
    budget = usable_bytes(spec)
    fits = peak_bytes <= budget
    suggestions = () if fits else tuple(suggest(plan, budget))
    return Verdict(fits, peak_bytes, budget, basis, suggestions)
