"""Causal multi-head self-attention with a fused qkv projection (optionally per-head q/k
RMSNorm and rotary positions), the RMSNorm it shares with the blocks, the document mask of
block_causal attention, and the masks of incremental and left-padded batched decoding."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from torchgpt.model.args import ModelArgs
from torchgpt.model.kv_cache import LayerKVCache
from torchgpt.model.rope import apply_rope

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): statistics in fp32, output in the input's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        # Same order of operations as Hugging Face's LlamaRMSNorm, for exact export parity.
        return self.weight.type_as(x) * xf.type_as(x)


def per_head_order(args: ModelArgs) -> Tensor:
    """Row indices that turn a grouped fused-qkv weight (or bias) into the per_head layout;
    its inverse (argsort) turns per_head back into grouped."""
    nh, hs = args.n_heads, args.head_dim
    # grouped row (part, head, i) sits at part * d + head * hs + i; per_head puts it at
    # head * 3 * hs + part * hs + i.
    return torch.arange(3 * args.dim).view(3, nh, hs).transpose(0, 1).reshape(-1)


class Attention(nn.Module):
    """Causal multi-head self-attention with a fused qkv projection."""

    def __init__(self, args: ModelArgs, value_embed: bool = False) -> None:
        super().__init__()
        # v = l0 * v + l1 * value embedding, for the blocks given one (args.value_embeds)
        self.ve_lambda = nn.Parameter(torch.full((2,), 0.5)) if value_embed else None
        self.n_heads = args.n_heads  # of the whole model; a tensor-parallel shard holds fewer
        self.head_dim = args.head_dim
        self.per_head = args.qkv_layout == "per_head"
        self.qkv = nn.Linear(args.dim, 3 * args.dim, bias=args.bias)
        self.proj = nn.Linear(args.dim, args.dim, bias=args.bias)
        self.q_norm = RMSNorm(args.head_dim, args.norm_eps) if args.qk_norm else None
        self.k_norm = RMSNorm(args.head_dim, args.norm_eps) if args.qk_norm else None

    def forward(
        self,
        x: Tensor,
        rope_cos: Tensor | None = None,
        rope_sin: Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
        start_pos: int = 0,
        attn_mask: Tensor | BlockMask | None = None,
        ve: Tensor | None = None,
    ) -> Tensor:
        B, T, _ = x.size()  # batch, sequence length, embedding dim (d)
        qkv = self.qkv(x)  # (B, T, 3 * nh * hs); nh: the heads held here (all, or a TP shard's)
        hs = self.head_dim
        if self.per_head:  # rows [q, k, v] per head: a column shard holds whole heads
            q, k, v = qkv.view(B, T, -1, 3, hs).unbind(3)  # 3 x (B, T, nh, hs)
        else:
            q, k, v = (t.view(B, T, -1, hs) for t in qkv.chunk(3, dim=2))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
        if ve is not None:  # this block's value embedding, (B, T, d) -> (B, nh, T, hs)
            v = self.ve_lambda[0] * v + self.ve_lambda[1] * ve.view(B, T, -1, hs).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope_cos is not None:
            q, k = apply_rope(q, rope_cos, rope_sin), apply_rope(k, rope_cos, rope_sin)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v, start_pos)  # (B, nh, start_pos + T, hs)
        if attn_mask is None:
            y = _causal_attention(q, k, v)  # (B, nh, T, hs)
        elif isinstance(attn_mask, Tensor):  # left padding or documents: it holds causality too
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:  # a FlexAttention BlockMask (document_mask with backend flex)
            y = _compiled_flex()(q, k, v, block_mask=attn_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # re-assemble heads: (B, T, nh * hs)
        return self.proj(y)


def _causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SDPA where query i (the last T_q of T_k positions) sees keys 0 .. T_k - T_q + i."""
    t_q, t_k = q.size(2), k.size(2)
    if t_q == t_k:  # training and cache prefill
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if t_q == 1:  # one-token decoding step: every cached key is in the past
        return F.scaled_dot_product_attention(q, k, v)
    # Several new tokens after a cached prefix: is_causal would align the mask top-left.
    mask = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).tril(diagonal=t_k - t_q)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def document_mask(tokens: Tensor, eos_id: int, backend: str) -> Any:
    """The block_causal mask of a (B, T) batch: query i sees key j <= i of its own document,
    a document starting at each `eos_id` token (tokens before the first belong to the one the
    window opened in).

    backend "sdpa": a (B, 1, T, T) bool tensor for scaled_dot_product_attention (any device,
    B * T * T bytes); "flex": a FlexAttention BlockMask (block-sparse: fully masked tiles are
    skipped); "auto": flex on CUDA, sdpa elsewhere. torch has no FlexAttention backward on CPU,
    so "flex" there is for forwards only.
    """
    doc = (tokens == eos_id).cumsum(1)  # (B, T): document index of each position
    if backend == "auto":
        backend = "flex" if tokens.device.type == "cuda" else "sdpa"
    B, T = tokens.shape
    if backend == "flex":
        from torch.nn.attention.flex_attention import create_block_mask

        def same_document(b: Tensor, h: Tensor, q: Tensor, k: Tensor) -> Tensor:
            return (q >= k) & (doc[b, q] == doc[b, k])

        return create_block_mask(same_document, B, None, T, T, device=tokens.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
    return (causal & (doc[:, :, None] == doc[:, None, :]))[:, None]


@functools.cache
def _compiled_flex() -> Any:
    """flex_attention compiled once: eager it is a slow reference (the whole score matrix)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _left_padded_positions(pad: Tensor, start_pos: int, t: int) -> tuple[Tensor, Tensor]:
    """Positions (B, T) and attention mask (B, 1, T, start_pos + T) of a left-padded batch.

    Query i (absolute position start_pos + i) sees keys j <= start_pos + i that are not
    padding; a padding query sees itself only, so no row of the softmax is empty.
    """
    q_abs = torch.arange(start_pos, start_pos + t, device=pad.device)  # (T,)
    k_abs = torch.arange(start_pos + t, device=pad.device)  # (T_k,)
    pos = (q_abs[None] - pad[:, None]).clamp(min=0)  # (B, T)
    causal = k_abs[None, :] <= q_abs[:, None]  # (T, T_k)
    real = k_abs[None, None, :] >= pad[:, None, None]  # (B, 1, T_k)
    itself = k_abs[None, :] == q_abs[:, None]  # (T, T_k)
    return pos, ((causal[None] & real) | itself[None])[:, None]
