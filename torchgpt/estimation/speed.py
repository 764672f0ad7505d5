"""Speed estimate: step time, tokens/s, time-to-train, GPU-hours and cost, from FLOPs and MFU.

Training FLOPs per token come from torchgpt.model.args.flops_per_token (PaLM's 6N + 12LdT,
the same figure the trainer's MFU uses). MFU is an assumption (a default per GPU type,
overridable); activation checkpointing recomputes forward work that MFU does not count, so
the achievable MFU is scaled by model FLOPs / (model + recompute FLOPs).
"""

from __future__ import annotations

from dataclasses import dataclass

from torchgpt.estimation.plan import TrainingPlan
from torchgpt.model.args import flops_per_token, num_matmul_params
from torchgpt.utils.hardware import GPUS, GPUSpec, get_gpu

# Assumed MFU of a ~100M-1B GPT with bf16, FSDP2 and torch.compile, without recompute.
# Reference point: llm.c's GPT-2 124M run (10B tokens in ~45 min on 8x H100) works out to
# ~40% MFU by 6N + 12LdT; smaller consumer / older cards are easier to keep busy, big
# H100s harder. They are assumptions, printed with every estimate; override with --mfu.
DEFAULT_MFU: dict[str, float] = {
    "h100": 0.35,
    "h100-pcie": 0.35,
    "h100-nvl": 0.35,
    "h200": 0.35,
    "gh200": 0.35,
    "b200": 0.30,
    "a100-80g": 0.45,
    "a100-40g": 0.45,
    "l40s": 0.35,
    "a10g": 0.40,
    "rtx4090": 0.40,
    "rtx3090": 0.40,
}


def resolve_gpu(name: str | GPUSpec) -> tuple[str, GPUSpec]:
    """(table key, spec) for a GPU name, or ("custom", spec) for a GPUSpec given directly;
    ValueError names --gpu and lists the known GPUs."""
    if isinstance(name, GPUSpec):
        return "custom", name
    try:
        spec = get_gpu(name)
    except ValueError:
        raise ValueError(f"--gpu: unknown GPU '{name}'; known: {', '.join(GPUS)}") from None
    return name.lower(), spec


def recompute_flops_per_token(plan: TrainingPlan) -> int:
    """Forward FLOPs per token that activation checkpointing runs a second time in backward.

    full: every block's forward (2 FLOPs per block matmul weight + 4*d*T attention).
    selective op: the mm outputs the policy does not save (every second one: attn.proj and
    mlp.proj for GELU; attn.proj and fc for SwiGLU); SDPA outputs are saved.
    selective N: the forward of every Nth block.
    """
    args = plan.args
    if plan.ac_mode == "none":
        return 0
    d, h, n = args.dim, args.hidden_dim, args.n_layers
    block_matmul = (num_matmul_params(args) - args.padded_vocab_size * d) // n
    block_forward = 2 * block_matmul + 4 * d * plan.seq_len
    if plan.ac_mode == "full":
        return n * block_forward
    if plan.ac_selective_option == "op":
        return n * 2 * (d * d + d * h)
    every = int(plan.ac_selective_option)
    return -(-n // every) * block_forward


@dataclass(frozen=True)
class SpeedEstimate:
    """Throughput and time-to-train of one layout on one GPU type.

    Attributes:
        gpu: table key, e.g. "h100".
        spec: the hardware figures used.
        num_gpus: GPUs of the job (= processes).
        mfu_assumed: assumed MFU without recompute.
        mfu_effective: after the activation-checkpointing recompute penalty.
        flops_per_token: model training FLOPs per token (6N + 12LdT).
        recompute_flops_per_token: extra forward FLOPs per token of AC.
        tokens_per_s: whole job.
        step_seconds: one optimizer step (global_batch_tokens).
        total_tokens: steps x global_batch_tokens.
        train_seconds: time for total_tokens.
        gpu_hours: train_seconds x num_gpus / 3600.
        usd: gpu_hours x price, when a price was given.
    """

    gpu: str
    spec: GPUSpec
    num_gpus: int
    mfu_assumed: float
    mfu_effective: float
    flops_per_token: int
    recompute_flops_per_token: int
    tokens_per_s: float
    step_seconds: float
    total_tokens: int
    train_seconds: float
    gpu_hours: float
    usd: float | None


def estimate_speed(
    plan: TrainingPlan,
    gpu: str | GPUSpec,
    *,
    mfu: float | None = None,
    usd_per_gpu_hour: float | None = None,
) -> SpeedEstimate:
    """Time-to-train of `plan` on plan.world_size GPUs of type `gpu`.

    Args:
        plan: the layout (world_size = number of GPUs).
        gpu: a key of torchgpt.utils.hardware.GPUS, or a GPUSpec of another GPU.
        mfu: assumed MFU in (0, 1]; default DEFAULT_MFU[gpu].
        usd_per_gpu_hour: price for the cost line.

    Raises:
        ValueError: unknown GPU, MFU outside (0, 1], negative price.
    """
    key, spec = resolve_gpu(gpu)
    mfu = DEFAULT_MFU.get(key, 0.4) if mfu is None else mfu
    if not 0.0 < mfu <= 1.0:
        raise ValueError(f"--mfu: {mfu} must be in (0, 1], e.g. 0.4 for 40%")
    if usd_per_gpu_hour is not None and usd_per_gpu_hour < 0:
        raise ValueError(f"--usd-per-gpu-hour: {usd_per_gpu_hour} must be >= 0")
    fpt = flops_per_token(plan.args, plan.seq_len)
    extra = recompute_flops_per_token(plan)
    mfu_eff = mfu * fpt / (fpt + extra)
    tokens_per_s = plan.world_size * spec.bf16_tflops * 1e12 * mfu_eff / fpt
    train_s = plan.total_tokens / tokens_per_s
    gpu_hours = train_s * plan.world_size / 3600
    return SpeedEstimate(
        gpu=key,
        spec=spec,
        num_gpus=plan.world_size,
        mfu_assumed=mfu,
        mfu_effective=mfu_eff,
        flops_per_token=fpt,
        recompute_flops_per_token=extra,
        tokens_per_s=tokens_per_s,
        step_seconds=plan.global_batch_tokens / tokens_per_s,
        total_tokens=plan.total_tokens,
        train_seconds=train_s,
        gpu_hours=gpu_hours,
        usd=None if usd_per_gpu_hour is None else gpu_hours * usd_per_gpu_hour,
    )


def peak_flops_table() -> list[tuple[str, str, float, float, float]]:
    """(key, name, dense bf16 TFLOP/s, memory GiB, default MFU) for every known GPU."""
    return [
        (key, s.name, s.bf16_tflops, s.memory_gib, DEFAULT_MFU.get(key, 0.4))
        for key, s in GPUS.items()
    ]
