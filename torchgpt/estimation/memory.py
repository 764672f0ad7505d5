"""Analytic per-rank peak memory of one training step, from the model's own args.

Counts the tensors alive at the candidate peak moments of a steady-state step (optimizer
state already allocated): the start of the last micro-batch's backward (all saved activations
plus the loss's (B*T, V) buffers: the fused loss's when compiled, eager fp32 otherwise), the
backward of the lm-head, the backward of the last block, FSDP2's reduce-scatter
of the root group (embeddings) at the end of backward, and the optimizer step (what the
optimizer keeps and allocates comes from its OptimizerSpec, torchgpt/optim/registry.py).
Parameter counts come from torchgpt.model.args (`num_params`, `num_matmul_params`); activations
are listed tensor by tensor as autograd saves them in torchgpt.model.gpt (see
`saved_bytes_per_token`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torchgpt.estimation.plan import TrainingPlan
from torchgpt.model.args import num_local_params, num_matmul_params
from torchgpt.model.cost import ElementBytes
from torchgpt.optim.registry import optimizer_spec

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


def element_bytes(plan: TrainingPlan) -> ElementBytes:
    """Element sizes (residual, compute, parameter) under the plan's precision mode."""
    mode = plan.precision_mode
    if mode == "fp32":
        return ElementBytes(4, 4, 4)
    if mode == "fsdp-bf16":
        # MixedPrecisionPolicy(param_dtype=bf16): embeddings, residual and matmuls all in bf16.
        return ElementBytes(2, 2, 2)
    # Autocast: embeddings and residual adds stay fp32, matmul outputs are bf16.
    return ElementBytes(4, 2, 2)


def _blocks_saved(plan: TrainingPlan, b: ElementBytes) -> tuple[int, int]:
    """(bytes per token saved by all blocks, extra bytes per token to recompute one block)."""
    args, n, tp = plan.args, plan.args.n_layers, plan.tp
    full = plan.cost.saved_bytes_per_token(args, b, tp)
    every = 1 if plan.ac_selective_option == "op" else int(plan.ac_selective_option)
    ckpt = [  # is block i checkpointed (its inner saves recomputed)?
        plan.ac_mode == "full" or (plan.ac_mode == "selective" and i % every == 0) for i in range(n)
    ]
    extra = plan.cost.skip_saved_bytes_per_token(args, b, plan.ac_mode)  # whole-model saves
    if args.value_embeds:
        extra += plan.cost.value_embed_saved_bytes_per_token(args, b, ckpt)
    extra += plan.cost.doc_mask_saved_bytes_per_token(args, b, plan.seq_len, ckpt)
    block_input = b.residual * args.dim / tp  # a sequence shard under tp
    if plan.ac_mode == "none":
        return n * full + extra, 0
    if plan.ac_mode == "full":
        return n * block_input + extra, full
    if plan.ac_selective_option == "op":
        sel = plan.cost.selective_saved_bytes_per_token(args, b, tp)
        return n * sel + extra, full - sel
    every = int(plan.ac_selective_option)
    n_ckpt = math.ceil(n / every)  # blocks 0, N, 2N, ... are wrapped
    return n_ckpt * block_input + (n - n_ckpt) * full + extra, full


def _resident(plan: TrainingPlan) -> list[MemoryItem]:
    """Tensors alive for the whole run: fp32 master weights and the optimizer's state (sharded),
    as its OptimizerSpec states it (AdamW: exp_avg + exp_avg_sq; Muon: one fp32 momentum
    buffer for the blocks' matrices, AdamW's moments for the rest)."""
    n_local = math.ceil(num_local_params(plan.args, plan.tp) / plan.shard_degree)
    shard = f" / {plan.shard_degree}" if plan.shard_degree > 1 else ""
    items = [MemoryItem(f"fp32 master weights{_tp(plan)}{shard}", "parameters", 4 * n_local)]
    spec = optimizer_spec(plan.optimizer_name)
    rows = spec.state_rows(plan.args, plan.shard_degree, plan.tp)
    items += [MemoryItem(*row) for row in rows]
    if plan.ddp:
        # DDP copies gradients into flat buckets covering every parameter (no bucket views).
        items.append(MemoryItem("DDP gradient buckets (fp32)", "gradients", 4 * n_local))
    return items


def _accumulated_grads(plan: TrainingPlan) -> list[MemoryItem]:
    """Gradients held between micro-steps (none when there is no accumulation)."""
    if plan.grad_accum <= 1:
        return []
    n = num_local_params(plan.args, plan.tp)
    if plan.fsdp:
        # set_requires_gradient_sync(False) on non-final micro-steps: FSDP2 keeps UNSHARDED
        # gradients, upcast to reduce_dtype fp32, until the last micro-step reduce-scatters.
        return [MemoryItem("unsharded fp32 grads (FSDP2 no-sync accumulation)", "gradients", 4 * n)]
    return [MemoryItem("fp32 grads (accumulated over micro-steps)", "gradients", 4 * n)]


def _gathered_params(plan: TrainingPlan, b: ElementBytes, in_backward: bool) -> list[MemoryItem]:
    """FSDP2 all-gathered (unsharded) parameters alive at the moment."""
    if not plan.fsdp:
        return []
    per_block = plan.cost.block_params(plan.args, plan.tp) * b.param_compute
    if in_backward:
        # The block being differentiated plus the prefetched next one.
        return [MemoryItem("all-gathered params (2 blocks)", "transient", 2 * per_block)]
    if plan.reshard_after_forward == "never":
        n = num_local_params(plan.args, plan.tp)
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
    if plan.ac_mode == "none":  # every matmul weight is split tp ways
        n = num_matmul_params(args) // plan.tp
        return [MemoryItem("autocast bf16 weight copies (all matmuls)", "transient", 2 * n)]
    # Inside checkpointed blocks the casts are recomputed; only the lm-head's copy is saved.
    head = args.padded_vocab_size * args.dim // plan.tp
    return [MemoryItem("autocast bf16 weight copy (lm-head)", "transient", 2 * head)]


def _head_saved(plan: TrainingPlan, b: ElementBytes) -> MemoryItem:
    """What the step saves after the blocks, over the micro-batch's tokens."""
    per_token = plan.cost.head_saved_bytes_per_token(plan.args, b, plan.tp)
    return MemoryItem(
        "final norm, lm-head input, tokens",
        "activations",
        round(plan.tokens_per_micro_batch * per_token),
    )


def _tp(plan: TrainingPlan) -> str:
    return f" / tp {plan.tp}" if plan.tp > 1 else ""


def _loss_moment(plan: TrainingPlan, b: ElementBytes) -> list[MemoryItem]:
    """Start of the last micro-batch's backward: the cross-entropy gradient is being formed."""
    tok = plan.tokens_per_micro_batch
    blocks, _ = _blocks_saved(plan, b)
    items = _resident(plan) + _accumulated_grads(plan)
    items.append(MemoryItem(f"blocks, AC {plan.ac_text()}", "activations", round(tok * blocks)))
    items.append(_head_saved(plan, b))
    items += _gathered_params(plan, b, in_backward=False) + _autocast_weight_copies(plan)
    items.append(_loss_buffers(plan, b))
    if plan.args.logit_softcap > 0:
        items.append(_softcap_saved(plan, b))
    return items


def _softcap_saved(plan: TrainingPlan, b: ElementBytes) -> MemoryItem:
    """model.logit_softcap: tanh saves its output, one more (B*T, Vp) tensor in the compute
    dtype (the loss then saves the capped logits where it saved the lm-head's own); a
    vocabulary shard of it under loss parallel. Freed by the softcap's backward, before the
    lm-head's."""
    n = plan.tokens_per_micro_batch * plan.args.padded_vocab_size
    if plan.vocab_sharded_loss:
        n //= plan.tp
    return MemoryItem("logit soft-cap: saved tanh output", "activations", n * b.compute)


def _loss_buffers(plan: TrainingPlan, b: ElementBytes) -> MemoryItem:
    """The loss's (B*T, V) tensors at the start of its backward, for the loss the step runs.

    compile on: torchgpt.step.train_module's fused cross-entropy (compiled with the model) saves
    the padded logits in their compute dtype (bf16 under bf16) and its backward writes their
    gradient in the same dtype, one fused pass each: 2 x B*T x Vp x compute bytes, no fp32 copy.
    Under tp > 1 the lm-head gathers its vocabulary-sharded logits: one more 1/tp slice.
    With loss parallel (tp > 1, either compile setting: torchgpt.step.vocab_parallel) each rank
    holds its (B*T, Vp/tp) slice of the logits, saved in their dtype; the backward makes the
    slice's fp32 softmax in place and returns it in the logits' dtype (a copy under bf16).
    compile off: eager F.cross_entropy on the sliced logits upcast to fp32; the logits
    themselves are gone (the TrainModule drops its reference and no op saved them), leaving the
    fp32 log_softmax output (saved), the grad of nll_loss and the grad of log_softmax:
    3 x B*T x V x 4 bytes."""
    tok, args = plan.tokens_per_micro_batch, plan.args
    if plan.vocab_sharded_loss:
        c = b.compute
        per = c + 4 + (c if c != 4 else 0)  # saved logits, fp32 softmax, grad in their dtype
        name = f"loss parallel: {per} B x B*T x Vp/tp"
        return MemoryItem(name, "transient", per * tok * args.padded_vocab_size // plan.tp)
    if plan.compile_enable:
        name = f"fused loss: logits + their grad (2 x B*T x Vp, {b.compute} B)"
        n = 2 * tok * args.padded_vocab_size
        if plan.tp > 1:
            # The lm-head's vocabulary slice as well: in backward the slice of that gradient,
            # in forward the all-gather's buffer, its reordered copy and the slice (as many).
            name = f"fused loss + tp lm-head: (2 + 1/tp) x B*T x Vp ({b.compute} B)"
            n += tok * args.padded_vocab_size // plan.tp
        return MemoryItem(name, "transient", n * b.compute)
    return MemoryItem(
        "cross-entropy fp32 buffers (3 x B*T x V)", "transient", tok * 12 * args.vocab_size
    )


def _lm_head_backward_moment(plan: TrainingPlan, b: ElementBytes) -> list[MemoryItem]:
    """Backward of the lm-head matmul, right after the loss's: the logits' gradient (compute
    dtype with the fused loss, fp32 eager) beside the head weight's gradient in the matmul's
    dtype and, under autocast, its fp32 copy through the cast's backward. The peak only where
    the loss buffers are small next to the weights (a short micro-batch of a small model)."""
    args, tok = plan.args, plan.tokens_per_micro_batch
    blocks, _ = _blocks_saved(plan, b)
    vp, d, tp = args.padded_vocab_size, args.dim, plan.tp
    items = _resident(plan) + _accumulated_grads(plan)
    items.append(MemoryItem(f"blocks, AC {plan.ac_text()}", "activations", round(tok * blocks)))
    items.append(_head_saved(plan, b))
    items += _gathered_params(plan, b, in_backward=True) + _autocast_weight_copies(plan)
    grad_logits = (b.compute if plan.compile_enable else 4) * tok * vp
    if plan.vocab_sharded_loss:  # the slice's gradient
        grad_logits = b.compute * tok * vp // tp
    items.append(MemoryItem("grad of the logits (B*T x Vp)", "transient", grad_logits))
    weight_grad = b.param_compute * vp * d // tp + b.compute * tok * d  # + its input's
    items.append(MemoryItem("lm-head weight + input grads", "transient", weight_grad))
    if plan.precision_mode == "autocast-bf16":
        upcast = 4 * vp * d // tp
        items.append(MemoryItem("lm-head weight grad upcast to fp32", "transient", upcast))
    return items


def _block_backward_moment(plan: TrainingPlan, b: ElementBytes) -> list[MemoryItem]:
    """Backward of the last block: its recomputed activations and gradient temporaries."""
    args, tok = plan.args, plan.tokens_per_micro_batch
    blocks, recompute = _blocks_saved(plan, b)
    d, h, c, tp = args.dim, args.hidden_dim, b.compute, plan.tp
    items = _resident(plan) + _accumulated_grads(plan)
    items.append(MemoryItem(f"blocks, AC {plan.ac_text()}", "activations", round(tok * blocks)))
    items.append(_head_saved(plan, b))
    items += _gathered_params(plan, b, in_backward=True) + _autocast_weight_copies(plan)
    temps = recompute + 2 * b.residual * d / tp + c * (2 * h + 4 * d) / tp
    name = "block recompute + gradient temporaries"
    items.append(MemoryItem(name, "transient", round(tok * temps)))
    if plan.fsdp:
        block = plan.cost.block_params(args, tp)
        items.append(MemoryItem("fp32 reduce-scatter input (1 block)", "transient", 4 * block))
    return items


def _root_reduce_moment(plan: TrainingPlan, b: ElementBytes) -> list[MemoryItem]:
    """FSDP2 end of backward: the root group (embeddings, tied lm-head, final norm) is
    reduce-scattered after every block's gradient is already sharded."""
    args, pd = plan.args, b.param_compute
    n_blocks = args.n_layers * plan.cost.block_params(args, plan.tp)
    n_root = num_local_params(args, plan.tp) - n_blocks
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


def _optimizer_moment(plan: TrainingPlan, b: ElementBytes) -> list[MemoryItem]:
    """The optimizer step: sharded grads present, plus what the update allocates (its
    OptimizerSpec: foreach AdamW's sqrt(exp_avg_sq) temporary, Muon's largest matrix)."""
    args = plan.args
    n_local = math.ceil(num_local_params(args, plan.tp) / plan.shard_degree)
    items = _resident(plan)
    items.append(
        MemoryItem("fp32 grads (sharded)" if plan.fsdp else "fp32 grads", "gradients", 4 * n_local)
    )
    spec = optimizer_spec(plan.optimizer_name)
    rows = spec.step_rows(args, plan.shard_degree, plan.fsdp, plan.step.optimizer, plan.tp)
    return items + [MemoryItem(*row) for row in rows]


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
