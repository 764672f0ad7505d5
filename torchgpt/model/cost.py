"""The GPT's memory and FLOP model: what its blocks save for backward, per token, tensor by
tensor as autograd saves them in torchgpt.model.gpt, its parameters and its training FLOPs.

The estimator (torchgpt/estimation/memory.py) reads these through the model's TrainSpec
(torchgpt/step/specs/gpt.py), so another model brings its own file of the same functions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torchgpt.model.args import ModelArgs, flops_per_token, num_params

__all__ = [
    "ElementBytes",
    "block_params",
    "flops_per_token",
    "head_saved_bytes_per_token",
    "norm_saved_bytes_per_token",
    "num_params",
    "saved_bytes_per_token",
    "selective_saved_bytes_per_token",
]


@dataclass(frozen=True)
class ElementBytes:
    """Element sizes of the tensors that matter, per precision mode."""

    residual: int  # the residual stream between blocks
    compute: int  # matmul / attention outputs
    param_compute: int  # parameters as the matmuls see them (FSDP2 param_dtype)


def norm_saved_bytes_per_token(args: ModelArgs, residual: int) -> int:
    """Bytes per token a norm layer saves for backward."""
    d = args.dim
    if args.norm_type == "layernorm":
        return residual * d + 8  # its input, fp32 mean and rstd
    # torchgpt's RMSNorm: fp32 copy of the input, the normalized output in the input's dtype
    # (kept by the weight multiply) and the fp32 rstd.
    return 4 * d + residual * d + 4


def saved_bytes_per_token(args: ModelArgs, b: ElementBytes) -> int:
    """Bytes per token one Block saves for backward without activation checkpointing.

    Walks Block.forward: norm -> qkv Linear (saves its input) -> SDPA (saves q, k, v, output and
    the fp32 log-sum-exp; the output is also the proj input) -> norm -> MLP Linear inputs and
    the activation function's inputs/outputs. Weights are not counted here.
    """
    d, h, c, r = args.dim, args.hidden_dim, b.compute, b.residual
    # norm, qkv input, qkv output (q, k, v)
    attn = norm_saved_bytes_per_token(args, r) + c * d + 3 * c * d
    if args.qk_norm:  # RMSNorm over q and k heads, each like _norm_saved with input dtype c
        attn += 2 * (4 * d + c * d + 4 * args.n_heads)
    if args.pos_embedding == "rope" or args.qk_norm:
        attn += 2 * c * d  # rotated / normalized q and k are new tensors that SDPA saves
    attn += c * d + 4 * args.n_heads  # SDPA output (= proj input) and fp32 logsumexp
    mlp = norm_saved_bytes_per_token(args, r) + c * d  # norm, fc input
    if args.mlp_type == "gelu":
        mlp += 2 * c * h  # GELU input and output (= proj input)
    else:
        mlp += 4 * c * h  # gate out, silu out, fc out, product (= proj input)
        if r != c:
            mlp += c * d  # autocast casts the norm output once for gate and again for fc
    return attn + mlp


def selective_saved_bytes_per_token(args: ModelArgs, b: ElementBytes) -> int:
    """Bytes per token a Block saves under torchgpt's op-level selective AC policy.

    The policy (parallel/parallelize.py) keeps SDPA outputs and every other mm/addmm output;
    Block forward runs qkv, attn.proj, then fc, proj (GELU) or gate, fc, proj (SwiGLU), so
    qkv, fc/gate (and proj for SwiGLU) are kept, plus the block input saved by checkpoint.
    """
    d, h, c = args.dim, args.hidden_dim, b.compute
    saved = b.residual * d + 3 * c * d + c * d + 4 * args.n_heads + c * h
    if args.mlp_type == "swiglu":
        saved += c * d
    return saved


def head_saved_bytes_per_token(args: ModelArgs, b: ElementBytes) -> int:
    """Bytes per token after the blocks: final norm, lm-head input, int64 inputs and targets."""
    return norm_saved_bytes_per_token(args, b.residual) + b.compute * args.dim + 16


def block_params(args: ModelArgs) -> int:
    """Parameters of one Block (difference of num_params at 1 and 0 layers)."""
    one = dataclasses.replace(args, n_layers=1)
    zero = dataclasses.replace(args, n_layers=0)
    return num_params(one, padded_vocab=True) - num_params(zero, padded_vocab=True)
