"""Analytic per-rank peak memory of one training step, from the model's own args.

Counts the tensors alive at the candidate peak moments of a steady-state step (optimizer
state already allocated): the start of the last micro-batch's backward (all saved activations
plus the loss's (B*T, V) buffers: the fused loss's when compiled, eager fp32 otherwise), the
backward of the lm-head, the backward of the last block, FSDP2's reduce-scatter
of the root group (embeddings) at the end of backward, and the optimizer step (AdamW, or Muon
with AdamW for the non-matrix parameters: optimizer.name). Parameter counts
come from
torchgpt.model.args (`num_params`, `num_matmul_params`); activations are listed tensor by tensor
as autograd saves them in torchgpt.model.gpt (see `saved_bytes_per_token`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from estimation.plan import TrainingPlan
from torchgpt.model.args import ModelArgs, num_matmul_params, num_params

CATEGORIES = ("parameters", "gradients", "optimizer state", "activations", "transient")


@dataclass(frozen=True)
class MemoryItem:
    """One line of a breakdown: what it is, its category and its size on one rank."""

    name: str
    category: str
    nbytes: int


@dataclass
class MemoryEstimate:
    """Per-rank peak memory and the items alive at the peak.

    Attributes:
        method: "analytic" or "traced".
        peak_bytes: the per-rank peak.
        moment: when the peak happens (e.g. "loss backward, last micro-batch").
        items: breakdown at the peak moment; for a trace, the tracker's own categories.
        notes: assumptions behind the figure.
    """

    method: str
    peak_bytes: int
    moment: str
    items: list[MemoryItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def by_category(self) -> dict[str, int]:
        """Bytes per category, in first-seen order."""
        out: dict[str, int] = {}
        for item in self.items:
            out[item.category] = out.get(item.category, 0) + item.nbytes
        return out


@dataclass(frozen=True)
class _Bytes:
    """Element sizes of the tensors that matter, per precision mode."""

    residual: int  # the residual stream between blocks
    compute: int  # matmul / attention outputs
    param_compute: int  # parameters as the matmuls see them (FSDP2 param_dtype)


def element_bytes(plan: TrainingPlan) -> _Bytes:
    """Element sizes (residual, compute, parameter) under the plan's precision mode."""
    mode = plan.precision_mode
    if mode == "fp32":
        return _Bytes(4, 4, 4)
    if mode == "fsdp-bf16":
        # MixedPrecisionPolicy(param_dtype=bf16): embeddings, residual and matmuls all in bf16.
        return _Bytes(2, 2, 2)
    # Autocast: embeddings and residual adds stay fp32, matmul outputs are bf16.
    return _Bytes(4, 2, 2)


def _norm_saved(args: ModelArgs, residual: int) -> int:
    """Bytes per token a norm layer saves for backward."""
    d = args.dim
    if args.norm_type == "layernorm":
        return residual * d + 8  # its input, fp32 mean and rstd
    # torchgpt's RMSNorm: fp32 copy of the input, the normalized output in the input's dtype
    # (kept by the weight multiply) and the fp32 rstd.
    return 4 * d + residual * d + 4


def saved_bytes_per_token(args: ModelArgs, b: _Bytes) -> int:
    """Bytes per token one Block saves for backward without activation checkpointing.

    Walks Block.forward: norm -> qkv Linear (saves its input) -> SDPA (saves q, k, v, output and
    the fp32 log-sum-exp; the output is also the proj input) -> norm -> MLP Linear inputs and
    the activation function's inputs/outputs. Weights are not counted here.
    """
    d, h, c, r = args.dim, args.hidden_dim, b.compute, b.residual
    attn = _norm_saved(args, r) + c * d + 3 * c * d  # norm, qkv input, qkv output (q, k, v)
    if args.qk_norm:  # RMSNorm over q and k heads, each like _norm_saved with input dtype c
        attn += 2 * (4 * d + c * d + 4 * args.n_heads)
    if args.pos_embedding == "rope" or args.qk_norm:
        attn += 2 * c * d  # rotated / normalized q and k are new tensors that SDPA saves
    attn += c * d + 4 * args.n_heads  # SDPA output (= proj input) and fp32 logsumexp
    mlp = _norm_saved(args, r) + c * d  # norm, fc input
    if args.mlp_type == "gelu":
        mlp += 2 * c * h  # GELU input and output (= proj input)
    else:
        mlp += 4 * c * h  # gate out, silu out, fc out, product (= proj input)
        if r != c:
            mlp += c * d  # autocast casts the norm output once for gate and again for fc
    return attn + mlp


def selective_saved_bytes_per_token(args: ModelArgs, b: _Bytes) -> int:
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


def _blocks_saved(plan: TrainingPlan, b: _Bytes) -> tuple[int, int]:
    """(bytes per token saved by all blocks, extra bytes per token to recompute one block)."""
    args, n = plan.args, plan.args.n_layers
    full = saved_bytes_per_token(args, b)
    if plan.ac_mode == "none":
        return n * full, 0
    if plan.ac_mode == "full":
        return n * b.residual * args.dim, full
    if plan.ac_selective_option == "op":
        sel = selective_saved_bytes_per_token(args, b)
        return n * sel, full - sel
    every = int(plan.ac_selective_option)
    n_ckpt = math.ceil(n / every)  # blocks 0, N, 2N, ... are wrapped
    return n_ckpt * b.residual * args.dim + (n - n_ckpt) * full, full


def _head_saved(args: ModelArgs, b: _Bytes) -> int:
    """Bytes per token after the blocks: final norm, lm-head input, int64 inputs and targets."""
    return _norm_saved(args, b.residual) + b.compute * args.dim + 16


def block_params(args: ModelArgs) -> int:
    """Parameters of one Block (difference of num_params at 1 and 0 layers)."""
    one = dataclasses.replace(args, n_layers=1)
    zero = dataclasses.replace(args, n_layers=0)
    return num_params(one, padded_vocab=True) - num_params(zero, padded_vocab=True)


_MUON_SHAPES: dict[str, list[tuple[int, int]]] = {}


def muon_matrix_shapes(args: ModelArgs) -> list[tuple[int, int]]:
    """Shapes of the matrices Muon updates, all blocks: the optimizer's own split
    (torchgpt.muon.muon_parameter_names) of a one-block model on the meta device, cached per
    architecture (auto sizing evaluates many plans of one model)."""
    key = repr(args)
    if key not in _MUON_SHAPES:
        from torchgpt.model.gpt import GPT
        from torchgpt.muon import muon_parameter_names

        with torch.device("meta"):
            model = GPT(dataclasses.replace(args, n_layers=1))
        params = dict(model.named_parameters())
        _MUON_SHAPES[key] = [tuple(params[n].shape) for n in muon_parameter_names(model)[0]]
    return _MUON_SHAPES[key] * args.n_layers


def _resident(plan: TrainingPlan) -> list[MemoryItem]:
    """Tensors alive for the whole run: fp32 master weights and the optimizer state (sharded):
    AdamW's exp_avg + exp_avg_sq, or with Muon one fp32 momentum buffer for the blocks'
    matrices and AdamW's two moments for the rest."""
    n_local = math.ceil(num_params(plan.args, padded_vocab=True) / plan.shard_degree)
    shard = f" / {plan.shard_degree}" if plan.shard_degree > 1 else ""
    items = [MemoryItem(f"fp32 master weights{shard}", "parameters", 4 * n_local)]
    if plan.optimizer_name == "muon":
        n_muon = sum(r * c for r, c in muon_matrix_shapes(plan.args))
        muon_local = math.ceil(n_muon / plan.shard_degree)
        items += [
            MemoryItem(f"Muon momentum (fp32){shard}", "optimizer state", 4 * muon_local),
            MemoryItem(
                f"AdamW exp_avg + exp_avg_sq (fp32), non-Muon{shard}",
                "optimizer state",
                8 * (n_local - muon_local),
            ),
        ]
    else:
        items.append(
            MemoryItem(f"AdamW exp_avg + exp_avg_sq (fp32){shard}", "optimizer state", 8 * n_local)
        )
    if plan.ddp:
        # DDP copies gradients into flat buckets covering every parameter (no bucket views).
        items.append(MemoryItem("DDP gradient buckets (fp32)", "gradients", 4 * n_local))
    return items


def _accumulated_grads(plan: TrainingPlan) -> list[MemoryItem]:
    """Gradients held between micro-steps (none when there is no accumulation)."""
    if plan.grad_accum <= 1:
        return []
    n = num_params(plan.args, padded_vocab=True)
    if plan.fsdp:
        # set_requires_gradient_sync(False) on non-final micro-steps: FSDP2 keeps UNSHARDED
        # gradients, upcast to reduce_dtype fp32, until the last micro-step reduce-scatters.
        return [MemoryItem("unsharded fp32 grads (FSDP2 no-sync accumulation)", "gradients", 4 * n)]
    return [MemoryItem("fp32 grads (accumulated over micro-steps)", "gradients", 4 * n)]


def _gathered_params(plan: TrainingPlan, b: _Bytes, in_backward: bool) -> list[MemoryItem]:
    """FSDP2 all-gathered (unsharded) parameters alive at the moment."""
    if not plan.fsdp:
        return []
    per_block = block_params(plan.args) * b.param_compute
    if in_backward:
        # The block being differentiated plus the prefetched next one.
        return [MemoryItem("all-gathered params (2 blocks)", "transient", 2 * per_block)]
    if plan.reshard_after_forward == "never":
        n = num_params(plan.args, padded_vocab=True)
        return [
            MemoryItem("all-gathered params (never resharded)", "transient", n * b.param_compute)
        ]
    if plan.reshard_after_forward == "default":
        return [MemoryItem("all-gathered params (last block kept)", "transient", per_block)]
    return []


def _autocast_weight_copies(plan: TrainingPlan) -> list[MemoryItem]:
    """bf16 copies of fp32 weights that autocast makes and matmul backward keeps."""
    if plan.precision_mode != "autocast-bf16":
        return []
    args = plan.args
    if plan.ac_mode == "none":
        n = num_matmul_params(args)
        return [MemoryItem("autocast bf16 weight copies (all matmuls)", "transient", 2 * n)]
    # Inside checkpointed blocks the casts are recomputed; only the lm-head's copy is saved.
    head = args.padded_vocab_size * args.dim
    return [MemoryItem("autocast bf16 weight copy (lm-head)", "transient", 2 * head)]


def _loss_moment(plan: TrainingPlan, b: _Bytes) -> list[MemoryItem]:
    """Start of the last micro-batch's backward: the cross-entropy gradient is being formed."""
    args, tok = plan.args, plan.tokens_per_micro_batch
    blocks, _ = _blocks_saved(plan, b)
    items = _resident(plan) + _accumulated_grads(plan)
    items.append(MemoryItem(f"blocks, AC {plan.ac_text()}", "activations", tok * blocks))
    items.append(
        MemoryItem("final norm, lm-head input, tokens", "activations", tok * _head_saved(args, b))
    )
    items += _gathered_params(plan, b, in_backward=False) + _autocast_weight_copies(plan)
    items.append(_loss_buffers(plan, b))
    return items


def _loss_buffers(plan: TrainingPlan, b: _Bytes) -> MemoryItem:
    """The loss's (B*T, V) tensors at the start of its backward, for the loss the step runs.

    compile on: torchgpt.train_module's fused cross-entropy (compiled with the model) saves the
    padded logits in their compute dtype (bf16 under bf16) and its backward writes their
    gradient in the same dtype, one fused pass each: 2 x B*T x Vp x compute bytes, no fp32 copy.
    compile off: eager F.cross_entropy on the sliced logits upcast to fp32; the logits
    themselves are gone (the TrainModule drops its reference and no op saved them), leaving the
    fp32 log_softmax output (saved), the grad of nll_loss and the grad of log_softmax:
    3 x B*T x V x 4 bytes."""
    tok, args = plan.tokens_per_micro_batch, plan.args
    if plan.compile_enable:
        name = f"fused loss: logits + their grad (2 x B*T x Vp, {b.compute} B)"
        return MemoryItem(name, "transient", tok * 2 * b.compute * args.padded_vocab_size)
    return MemoryItem(
        "cross-entropy fp32 buffers (3 x B*T x V)", "transient", tok * 12 * args.vocab_size
    )


def _lm_head_backward_moment(plan: TrainingPlan, b: _Bytes) -> list[MemoryItem]:
    """Backward of the lm-head matmul, right after the loss's: the logits' gradient (compute
    dtype with the fused loss, fp32 eager) beside the head weight's gradient in the matmul's
    dtype and, under autocast, its fp32 copy through the cast's backward. The peak only where
    the loss buffers are small next to the weights (a short micro-batch of a small model)."""
    args, tok = plan.args, plan.tokens_per_micro_batch
    blocks, _ = _blocks_saved(plan, b)
    vp, d = args.padded_vocab_size, args.dim
    items = _resident(plan) + _accumulated_grads(plan)
    items.append(MemoryItem(f"blocks, AC {plan.ac_text()}", "activations", tok * blocks))
    items.append(
        MemoryItem("final norm, lm-head input, tokens", "activations", tok * _head_saved(args, b))
    )
    items += _gathered_params(plan, b, in_backward=True) + _autocast_weight_copies(plan)
    grad_logits = (b.compute if plan.compile_enable else 4) * tok * vp
    items.append(MemoryItem("grad of the logits (B*T x Vp)", "transient", grad_logits))
    weight_grad = b.param_compute * vp * d + b.compute * tok * d  # + the grad of its input
    items.append(MemoryItem("lm-head weight + input grads", "transient", weight_grad))
    if plan.precision_mode == "autocast-bf16":
        items.append(MemoryItem("lm-head weight grad upcast to fp32", "transient", 4 * vp * d))
    return items


def _block_backward_moment(plan: TrainingPlan, b: _Bytes) -> list[MemoryItem]:
    """Backward of the last block: its recomputed activations and gradient temporaries."""
    args, tok = plan.args, plan.tokens_per_micro_batch
    blocks, recompute = _blocks_saved(plan, b)
    d, h, c = args.dim, args.hidden_dim, b.compute
    items = _resident(plan) + _accumulated_grads(plan)
    items.append(MemoryItem(f"blocks, AC {plan.ac_text()}", "activations", tok * blocks))
    items.append(
        MemoryItem("final norm, lm-head input, tokens", "activations", tok * _head_saved(args, b))
    )
    items += _gathered_params(plan, b, in_backward=True) + _autocast_weight_copies(plan)
    temps = recompute + 2 * b.residual * d + c * (2 * h + 4 * d)
    items.append(MemoryItem("block recompute + gradient temporaries", "transient", tok * temps))
    if plan.fsdp:
        items.append(
            MemoryItem("fp32 reduce-scatter input (1 block)", "transient", 4 * block_params(args))
        )
    return items


def _root_reduce_moment(plan: TrainingPlan, b: _Bytes) -> list[MemoryItem]:
    """FSDP2 end of backward: the root group (embeddings, tied lm-head, final norm) is
    reduce-scattered after every block's gradient is already sharded."""
    args, pd = plan.args, b.param_compute
    n_blocks = args.n_layers * block_params(args)
    n_root = num_params(args, padded_vocab=True) - n_blocks
    items = _resident(plan)
    grads = MemoryItem(
        "fp32 grads of the blocks (sharded)", "gradients", 4 * n_blocks // plan.shard_degree
    )
    items.append(grads)
    items.append(MemoryItem("root unsharded grads (param dtype)", "transient", pd * n_root))
    if pd != 4:
        items.append(MemoryItem("root grads upcast to fp32 reduce_dtype", "transient", 4 * n_root))
    items.append(MemoryItem("root fp32 reduce-scatter input", "transient", 4 * n_root))
    return items


def _optimizer_moment(plan: TrainingPlan, b: _Bytes) -> list[MemoryItem]:
    """AdamW step: sharded grads present, plus foreach's sqrt(exp_avg_sq) temporary (the
    fused kernel, the default on CPU and CUDA, updates in place)."""
    args = plan.args
    n_local = math.ceil(num_params(args, padded_vocab=True) / plan.shard_degree)
    items = _resident(plan)
    items.append(
        MemoryItem("fp32 grads (sharded)" if plan.fsdp else "fp32 grads", "gradients", 4 * n_local)
    )
    if plan.optimizer_implementation == "foreach":
        items.append(MemoryItem("foreach AdamW temporary", "transient", 4 * n_local))
    if plan.optimizer_name == "muon":
        items.append(MemoryItem("Muon update of the largest matrix", "transient", _muon_peak(plan)))
    return items


def _muon_peak(plan: TrainingPlan) -> int:
    """Temporaries of torchgpt.muon's step for its largest matrix (r x c, one at a time):
    the Nesterov update (fp32, local shard), its all-gathered copy when sharded, then inside
    torch's Newton-Schulz the bf16 iterate twice (old and new) beside the Gram matrix and its
    update (m x m, m = min(r, c)); or, when sharded, after it the bf16 result, its fp32 copy
    and the shard distribute_tensor copies out of it. Matches the tracker's peak of the step
    exactly (tests/unit/test_estimation_memory.py)."""
    peak = 0
    for r, c in muon_matrix_shapes(plan.args):
        n, local = r * c, math.ceil(r / plan.shard_degree) * c
        gathered = 4 * n if plan.fsdp else 0
        newton_schulz = 2 * n * 2 + 2 * min(r, c) ** 2 * 2
        after = 2 * n + 4 * n + 4 * local if plan.fsdp else 0
        peak = max(peak, 4 * local + gathered + max(newton_schulz, after))
    return peak


def analytic_memory(plan: TrainingPlan) -> MemoryEstimate:
    """Per-rank peak memory of a steady-state training step, by formula.

    Args:
        plan: the resolved layout.

    Returns:
        The larger of the candidate peak moments with its breakdown.
    """
    b = element_bytes(plan)
    moments = {
        "loss backward, last micro-batch": _loss_moment(plan, b),
        "lm-head backward, last micro-batch": _lm_head_backward_moment(plan, b),
        "backward of the last block": _block_backward_moment(plan, b),
        "optimizer step": _optimizer_moment(plan, b),
    }
    if plan.fsdp:
        moments["FSDP2 root reduce-scatter, end of backward"] = _root_reduce_moment(plan, b)
    name, items = max(moments.items(), key=lambda kv: sum(i.nbytes for i in kv[1]))
    notes = [
        "steady-state step: optimizer state already allocated (every step after the first)",
        f"precision: {plan.precision_mode}; CPU/GPU kernels may save slightly different extras",
    ]
    return MemoryEstimate("analytic", sum(i.nbytes for i in items), name, items, notes)
