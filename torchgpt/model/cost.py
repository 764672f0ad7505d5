"""The GPT's memory and FLOP model: what its blocks save for backward, per token, tensor by
tensor as autograd saves them in torchgpt.model.gpt, its parameters and its training FLOPs.

The estimator (torchgpt/estimation/memory.py) reads these through the model's TrainSpec
(torchgpt/step/specs/gpt.py), so another model brings its own file of the same functions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torchgpt.model.args import ModelArgs, flops_per_token, num_local_params, num_params

__all__ = [
    "ElementBytes",
    "block_params",
    "flops_per_token",
    "head_saved_bytes_per_token",
    "norm_saved_bytes_per_token",
    "num_local_params",
    "num_params",
    "saved_bytes_per_token",
    "selective_saved_bytes_per_token",
    "skip_saved_bytes_per_token",
    "value_embed_saved_bytes_per_token",
    "doc_mask_saved_bytes_per_token",
]


@dataclass(frozen=True)
class ElementBytes:
    """Element sizes of the tensors that matter, per precision mode."""

    residual: int  # the residual stream between blocks
    compute: int  # matmul / attention outputs
    param_compute: int  # parameters as the matmuls see them (FSDP2 param_dtype)


def norm_saved_bytes_per_token(args: ModelArgs, residual: int, tp: int = 1) -> float:
    """Bytes per token a norm layer saves for backward (on a 1/tp sequence shard under
    sequence parallelism)."""
    d = args.dim
    if args.norm_type == "layernorm":
        return (residual * d + 8) / tp  # its input, fp32 mean and rstd
    # torchgpt's RMSNorm: fp32 copy of the input, the normalized output in the input's dtype
    # (kept by the weight multiply) and the fp32 rstd.
    return (4 * d + residual * d + 4) / tp


def saved_bytes_per_token(args: ModelArgs, b: ElementBytes, tp: int = 1) -> float:
    """Bytes per token one Block saves for backward without activation checkpointing.

    Walks Block.forward: norm -> qkv Linear (saves its input) -> SDPA (saves q, k, v, output and
    the fp32 log-sum-exp; the output is also the proj input) -> norm -> MLP Linear inputs and
    the activation function's inputs/outputs. Weights are not counted here.

    Under tensor + sequence parallelism (tp > 1) the norms run on 1/tp of the sequence and
    everything between the column-wise and row-wise matmuls on 1/tp of the heads / hidden
    units; the column-wise layers' inputs are the all-gathered full sequence, saved whole.
    """
    d, h, c, r = args.dim, args.hidden_dim, b.compute, b.residual
    full = c * d  # qkv input (gathered)
    split = 3 * c * d  # qkv output (q, k, v)
    if args.qk_norm:  # RMSNorm over q and k heads, each like _norm_saved with input dtype c
        split += 2 * (4 * d + c * d + 4 * args.n_heads)
    if args.pos_embedding == "rope" or args.qk_norm:
        split += 2 * c * d  # rotated / normalized q and k are new tensors that SDPA saves
    split += c * d + 4 * args.n_heads  # SDPA output (= proj input) and fp32 logsumexp
    full += c * d  # fc input (gathered)
    if args.mlp_type != "swiglu":
        # GELU: its input and output (= proj input); ReLU^2: relu's output (also the square's
        # input) and the square (= proj input)
        split += 2 * c * h
    else:
        split += 4 * c * h  # gate out, silu out, fc out, product (= proj input)
        if r != c:
            full += c * d  # autocast casts the norm output once for gate and again for fc
    return 2 * norm_saved_bytes_per_token(args, r, tp) + full + split / tp


def skip_saved_bytes_per_token(args: ModelArgs, b: ElementBytes, ac_mode: str) -> float:
    """Bytes per token the U-net skips (args.unet_skips) keep beyond the blocks' own saves: the
    first half's block outputs wait in the skip list for their mirror blocks. Each is also
    the next block's input, which that block saves itself (a LayerNorm, or an RMSNorm whose
    fp32 upcast of an fp32 residual is the tensor itself, or a checkpointed block) except an
    RMSNorm's on a bf16 residual (FSDP2's bf16 parameters): then the skip holds one more."""
    if not args.unet_skips or args.norm_type != "rmsnorm" or b.residual == 4:
        return 0
    if ac_mode == "full":
        return 0  # the checkpoint saves each block's input itself
    return args.n_layers // 2 * b.residual * args.dim


def value_embed_saved_bytes_per_token(
    args: ModelArgs, b: ElementBytes, checkpointed: list[bool]
) -> float:
    """Bytes per token the value embeddings (args.value_embeds = k) add to the blocks' saves:
    each table's lookup (the residual dtype, kept by the mixing multiply or the checkpoint of
    the blocks it feeds) and, in every block with a table that is not checkpointed
    (`checkpointed[i]`), the mixed values SDPA saves in the compute dtype (a new tensor where
    it saved a view of the qkv output)."""
    n, k = args.n_layers, args.value_embeds
    mixed = sum(1 for i in range(n) if (i < k or i >= n - k) and not checkpointed[i])
    return k * b.residual * args.dim + mixed * b.compute * args.dim


def doc_mask_saved_bytes_per_token(
    args: ModelArgs, b: ElementBytes, seq_len: int, checkpointed: list[bool]
) -> float:
    """Bytes per token the block_causal mask (args.attn_mask) adds in its SDPA form (backend
    sdpa, or auto off CUDA): every block that is not checkpointed saves the additive copy SDPA
    converts the (B, 1, T, T) bool mask to (T elements of the compute dtype per token); the
    checkpointed ones keep the bool mask itself among their inputs (T bytes per token, one
    tensor for all of them). FlexAttention's block mask (auto on CUDA) is ~(T / 128)^2 ints
    per sequence: counted as the SDPA form, an overestimate there."""
    if args.attn_mask != "block_causal" or args.attn_backend == "flex":
        return 0
    copies = sum(1 for c in checkpointed if not c)
    return seq_len * (b.compute * copies + (1 if copies < len(checkpointed) else 0))


def selective_saved_bytes_per_token(args: ModelArgs, b: ElementBytes, tp: int = 1) -> float:
    """Bytes per token a Block saves under torchgpt's op-level selective AC policy.

    The policy (parallel/parallelize.py) keeps SDPA outputs and every other mm/addmm output;
    Block forward runs qkv, attn.proj, then fc, proj (GELU) or gate, fc, proj (SwiGLU), so
    qkv, fc/gate (and proj for SwiGLU) are kept, plus the block input saved by checkpoint.
    Under tp > 1 the block input is a sequence shard, the kept outputs are head / hidden
    shards, and SwiGLU's row-wise proj output is the full sequence's partial sum.
    """
    d, h, c = args.dim, args.hidden_dim, b.compute
    split = b.residual * d + 3 * c * d + c * d + 4 * args.n_heads + c * h
    saved = split / tp
    if args.mlp_type == "swiglu":
        saved += c * d
    return saved


def head_saved_bytes_per_token(args: ModelArgs, b: ElementBytes, tp: int = 1) -> float:
    """Bytes per token after the blocks: final norm (a sequence shard under tp), lm-head
    input (gathered whole under tp), int64 inputs and targets."""
    return norm_saved_bytes_per_token(args, b.residual, tp) + b.compute * args.dim + 16


def block_params(args: ModelArgs, tp: int = 1) -> int:
    """Parameters of one Block on one tensor-parallel rank (difference of num_local_params at 1
    and 0 layers)."""
    one = dataclasses.replace(args, n_layers=1)
    zero = dataclasses.replace(args, n_layers=0)
    return num_local_params(one, tp) - num_local_params(zero, tp)
