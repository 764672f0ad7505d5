"""The GPT model: FeedForward, Block and GPT (attention in attention.py), in the style of
nanoGPT's model.py.

Construction only builds modules (it works under `torch.device("meta")`); `init_weights()`
fills parameters and the RoPE tables, so the model can be built on meta, parallelized,
materialized with `to_empty()` and then initialized.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from torchgpt.model.args import ModelArgs
from torchgpt.model.attention import (
    Attention,
    RMSNorm,
    _left_padded_positions,
    document_mask,
    per_head_order,
)
from torchgpt.model.generate import generate
from torchgpt.model.kv_cache import KVCache, LayerKVCache
from torchgpt.model.rope import rope_tables

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask


def build_norm(args: ModelArgs, dim: int) -> nn.Module:
    """Return the normalization layer `args.norm_type` over the last `dim` features."""
    if args.norm_type == "rmsnorm":
        return RMSNorm(dim, args.norm_eps)
    return nn.LayerNorm(dim, eps=args.norm_eps, bias=args.bias)


class FeedForward(nn.Module):
    """GELU MLP (GPT-2), SwiGLU (Shazeer 2020): proj(silu(gate(x)) * fc(x)), or ReLU^2 (Primer):
    proj(relu(fc(x))^2)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        hidden = args.hidden_dim
        self.fc = nn.Linear(args.dim, hidden, bias=args.bias)
        self.gate = (
            nn.Linear(args.dim, hidden, bias=args.bias) if args.mlp_type == "swiglu" else None
        )
        self.proj = nn.Linear(hidden, args.dim, bias=args.bias)
        self.relu2 = args.mlp_type == "relu2"

    def forward(self, x: Tensor) -> Tensor:
        if self.relu2:
            return self.proj(F.relu(self.fc(x)).square())
        if self.gate is None:
            # tanh approximation = GPT-2's "gelu_new", so exported weights match exactly.
            return self.proj(F.gelu(self.fc(x), approximate="tanh"))
        return self.proj(F.silu(self.gate(x)) * self.fc(x))


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2 section 2.3): x + attn(norm(x)), x + mlp(norm(x))."""

    def __init__(self, args: ModelArgs, value_embed: bool = False) -> None:
        super().__init__()
        self.attn_norm = build_norm(args, args.dim)
        self.attn = Attention(args, value_embed)
        self.mlp_norm = build_norm(args, args.dim)
        self.mlp = FeedForward(args)

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
        h = self.attn_norm(x)
        x = x + self.attn(h, rope_cos, rope_sin, kv_cache, start_pos, attn_mask, ve)
        x = x + self.mlp(self.mlp_norm(x))
        return x


class GPT(nn.Module):
    """Decoder-only transformer; `forward(tokens) -> logits` over the real vocabulary.

    Args:
        args: the architecture; validated here.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        args.validate()
        self.args = args
        vocab = args.padded_vocab_size
        self.tok_embeddings = nn.Embedding(vocab, args.dim)
        self.pos_embeddings = None
        if args.pos_embedding == "learned":
            self.pos_embeddings = nn.Embedding(args.max_seq_len, args.dim)
        n, k = args.n_layers, args.value_embeds
        self.layers = nn.ModuleList(Block(args, i < k or i >= n - k) for i in range(n))
        # Value embeddings: table j feeds block j and block n - k + j.
        self.value_embeddings = (
            nn.ModuleList(nn.Embedding(vocab, args.dim) for _ in range(k)) if k else None
        )
        # U-net skips: one learned weight per pair (block i's output -> block L-1-i's input).
        self.skip_weights = (
            nn.Parameter(torch.ones(args.n_layers // 2)) if args.unet_skips else None
        )
        self.norm = build_norm(args, args.dim)
        # A tied head's own weight would be replaced at once: build it on meta, no memory.
        head_device = "meta" if args.tie_embeddings else None
        self.output = nn.Linear(args.dim, vocab, bias=False, device=head_device)
        self.tie_weights()
        # RoPE tables live on the root as non-persistent buffers: not in checkpoints, not
        # sharded by FSDP2, recomputed by init_weights() after to_empty().
        cos, sin = self._rope_tables(device=None)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # Set to [] to collect each block's output mean square in the next forwards (detached,
        # on the device; torchgpt/training/layer_stats.py); None collects nothing.
        self.residual_ms: list[Tensor] | None = None

    def _rope_tables(self, device: torch.device | None) -> tuple[Tensor | None, Tensor | None]:
        if self.args.pos_embedding != "rope":
            return None, None
        a = self.args
        return rope_tables(a.head_dim, a.max_seq_len, a.rope_theta, device=device)

    def tie_weights(self) -> None:
        """Make output.weight the token embedding (no-op when untied or already tied).

        `to_empty()` replaces each parameter separately and so breaks the tie; init_weights()
        calls this first.
        """
        if self.args.tie_embeddings and self.output.weight is not self.tok_embeddings.weight:
            self.output.weight = self.tok_embeddings.weight

    def init_weights(self, seed: int | None = None) -> None:
        """Initialize every parameter and buffer in place (GPT-2 scheme).

        Weights ~ N(0, init_std) and biases zero, as in GPT-2 (Radford et al. 2019) and
        nanoGPT; the residual output projections (attn.proj, mlp.proj) use
        init_std / sqrt(2 * n_layers), GPT-2 section 2.3: "scale the weights of residual
        layers at initialization by a factor of 1/sqrt(N) where N is the number of residual
        layers" (two per block), so the residual stream variance does not grow with depth;
        with `zero_init_proj` they start at zero instead.
        Norm weights are ones. The padded vocabulary rows are initialized too; they are never
        read as inputs, and their logits are sliced off, so they get no gradient.

        Args:
            seed: if given, seed the RNG for the init (the caller's RNG state is restored);
                otherwise use the current global RNG.
        """
        self.tie_weights()
        device = self.tok_embeddings.weight.device
        fork_devices = [device] if device.type not in ("cpu", "meta") else []
        with torch.random.fork_rng(
            devices=fork_devices, enabled=seed is not None, device_type=device.type
        ):
            if seed is not None:
                torch.manual_seed(seed)
            self._init_parameters()
        self.init_buffers()

    def init_buffers(self) -> None:
        """(Re)compute the non-persistent buffers (RoPE tables) on the parameters' device."""
        cos, sin = self._rope_tables(device=self.tok_embeddings.weight.device)
        self.rope_cos, self.rope_sin = cos, sin

    def _init_parameters(self) -> None:
        std = self.args.init_std
        residual_std = std / math.sqrt(2 * self.args.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.Linear):
                if module is self.output and self.args.tie_embeddings:
                    continue  # its weight is the token embedding, initialized above
                is_residual = name.endswith("attn.proj") or name.endswith("mlp.proj")
                if is_residual and self.args.zero_init_proj:
                    nn.init.zeros_(module.weight)  # each block starts as the identity
                else:
                    nn.init.normal_(module.weight, std=residual_std if is_residual else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                module.reset_parameters()
        if self.skip_weights is not None:
            nn.init.ones_(self.skip_weights)
        for layer in self.layers:
            if layer.attn.ve_lambda is not None:
                nn.init.constant_(layer.attn.ve_lambda, 0.5)
        if self.args.qkv_layout == "per_head":  # drawn grouped above: the same model, reordered
            order = per_head_order(self.args)
            for layer in self.layers:
                for p in layer.attn.qkv.parameters():
                    p.data.copy_(p.data[order])

    def num_params(self, embeddings: bool = True) -> int:
        """Parameters actually held (padded vocabulary; a tied matrix counted once).

        Args:
            embeddings: include the token and position tables (see `args.num_params`).
        """
        total = sum(p.numel() for p in self.parameters())
        if not embeddings:
            total -= self.tok_embeddings.weight.numel()
            if self.pos_embeddings is not None:
                total -= self.pos_embeddings.weight.numel()
            for table in self.value_embeddings or []:
                total -= table.weight.numel()
            # An untied lm-head is a matmul, not a lookup: it stays in the count.
        return total

    def _check_inputs(self, tokens: Tensor, start_pos: int) -> None:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, seq) ints, got shape {tuple(tokens.shape)}")
        end = start_pos + tokens.size(1)
        if end > self.args.max_seq_len:
            kind = "learned position table" if self.pos_embeddings is not None else "RoPE tables"
            raise ValueError(
                f"sequence of {end} positions (start_pos={start_pos} + {tokens.size(1)} tokens) "
                f"exceeds the model context max_seq_len={self.args.max_seq_len} ({kind}); "
                f"crop the input or use a flavor with a larger max_seq_len"
            )
        # Token ids are not checked here: that needs their values on the host, a sync per
        # forward on a GPU. The training loader checks every window it reads, and generate()
        # checks its prompt once (check_token_ids).

    def forward(
        self,
        tokens: Tensor,
        kv_cache: KVCache | None = None,
        start_pos: int = 0,
        *,
        padded_vocab: bool = False,
        pad: Tensor | None = None,
    ) -> Tensor:
        """Compute next-token logits.

        Args:
            tokens: (B, T) integer token ids.
            kv_cache: cache for incremental decoding (see `generate`); None for training.
            start_pos: position of tokens[:, 0] (number of tokens already in the cache).
            padded_vocab: return all `padded_vocab_size` columns; the caller must ignore the
                columns >= vocab_size (the training loss masks them). It saves the slice's
                backward, which would copy the whole (B, T, V) gradient into a zero-padded one.
            pad: (B,) left-padding of each row (batched decoding): row b's first pad[b]
                positions are padding, its real tokens take positions 0, 1, ... and no token
                attends to padding. The logits of padding positions are meaningless.

        Returns:
            (B, T, vocab_size) logits in the compute dtype; the padded vocabulary columns
            are sliced off here so they can never be sampled or enter a loss (unless
            `padded_vocab`: then (B, T, padded_vocab_size)).
        """
        self._check_inputs(tokens, start_pos)
        T = tokens.size(1)
        x = self.tok_embeddings(tokens)  # (B, T, d)
        rope_cos = rope_sin = attn_mask = None
        if pad is not None:
            pos, attn_mask = _left_padded_positions(pad, start_pos, T)  # (B, T), (B, 1, T, T_k)
        elif self.args.attn_mask == "block_causal" and kv_cache is None:
            attn_mask = document_mask(tokens, self.args.eos_id, self.args.attn_backend)
        if self.pos_embeddings is not None:
            if pad is None:
                pos = torch.arange(start_pos, start_pos + T, device=tokens.device)  # (T,)
            x = x + self.pos_embeddings(pos)  # (B, T, d) + (T, d) or (B, T, d)
        elif pad is None:
            rope_cos = self.rope_cos[start_pos : start_pos + T]  # (T, hs)
            rope_sin = self.rope_sin[start_pos : start_pos + T]  # (T, hs)
        else:
            rope_cos, rope_sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]
        n, half = len(self.layers), len(self.layers) // 2
        skips: list[Tensor] = []  # U-net: the first half's outputs, used last-in first-out
        ves = [e(tokens) for e in self.value_embeddings] if self.value_embeddings else []
        k = len(ves)
        for i, layer in enumerate(self.layers):
            if self.skip_weights is not None and i >= n - half:
                x = x + self.skip_weights[i - (n - half)] * skips.pop()
            layer_cache = kv_cache[i] if kv_cache is not None else None
            ve = ves[i] if i < k else ves[i - (n - k)] if i >= n - k and k else None
            x = layer(x, rope_cos, rope_sin, layer_cache, start_pos, attn_mask, ve)  # (B, T, d)
            if self.skip_weights is not None and i < half:
                skips.append(x)
            if self.residual_ms is not None:
                self.residual_ms.append(x.detach().float().pow(2).mean())
        x = self.norm(x)
        logits = self.output(x)  # (B, T, padded_vocab)
        if self.args.logit_softcap > 0:
            cap = self.args.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        if padded_vocab:
            return logits
        return logits[..., : self.args.vocab_size]  # (B, T, vocab)

    @torch.no_grad()
    def generate(
        self,
        tokens: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        eos_id: int | None = 50256,
        use_cache: bool = True,
    ) -> Tensor:
        """Sample a continuation of `tokens`; see `torchgpt.model.generate.generate`."""
        return generate(
            self,
            tokens,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            eos_id=eos_id,
            use_cache=use_cache,
        )
