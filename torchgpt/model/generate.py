"""Autoregressive decoding: next-token sampling (temperature, top-k, top-p) and the
`generate` loop behind `GPT.generate`, over any model with GPT's forward signature and `args`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torchgpt.model.kv_cache import KVCache, LayerKVCache

__all__ = ["KVCache", "LayerKVCache", "check_token_ids", "generate", "sample_next"]


def check_token_ids(tokens: Tensor, vocab_size: int) -> None:
    """Raise ValueError unless every id lies in [0, vocab_size) (reads the values: a host sync).

    The padded embedding rows (vocab_size .. padded_vocab_size) would accept a wrong
    tokenizer's ids silently, so inputs from outside the training loader are checked once.
    """
    if tokens.numel() == 0:
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"token ids must lie in [0, vocab_size={vocab_size}), got min={lo} max={hi}; the "
            "tokenizer does not match this model's vocab_size"
        )


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per row of (B, V) logits.

    temperature == 0 or top_k == 1 is greedy (argmax). Top-p keeps the smallest set of
    most likely tokens whose probability mass reaches top_p (Holtzman et al. 2019).

    Returns:
        (B,) int64 token ids.
    """
    logits = logits.float()
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def _check_generate_args(
    tokens: Tensor, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    if tokens.dim() != 2 or tokens.size(1) == 0:
        raise ValueError(f"prompt tokens must be (batch, seq>=1), got {tuple(tokens.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 or None")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] or None")


@torch.no_grad()
def generate(
    model: nn.Module,
    tokens: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_id: int | None = 50256,
    use_cache: bool = True,
) -> Tensor:
    """Extend `tokens` by up to `max_new_tokens` sampled tokens.

    With `use_cache` the prompt is run once and each step feeds only the newest token,
    reading earlier keys/values from a KV cache; the result equals full recomputation.
    Once the sequence outgrows the context, both modes recompute over the last
    `max_seq_len` tokens (nanoGPT's sliding window).

    Args:
        model: the GPT (put in eval mode for the call, restored after).
        tokens: (B, T) prompt ids.
        max_new_tokens: most tokens to add.
        temperature: softmax temperature; 0 is greedy.
        top_k: keep only the k most likely tokens.
        top_p: nucleus sampling mass.
        seed: seeds a private generator so sampling is reproducible; None uses the global RNG.
        eos_id: a row that emits it is finished and padded with it; generation stops when
            every row is finished. None disables stopping (50256 is GPT-2's <|endoftext|>).
        use_cache: decode incrementally with a KV cache.

    Returns:
        (B, T + n) ids, n <= max_new_tokens.
    """
    _check_generate_args(tokens, max_new_tokens, temperature, top_k, top_p)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=tokens.device)
        generator.manual_seed(seed)
    check_token_ids(tokens, model.args.vocab_size)
    context = model.args.max_seq_len
    cache = KVCache(model.args.n_layers, context) if use_cache else None
    cached = 0  # number of leading tokens whose keys/values are in the cache
    finished = torch.zeros(tokens.size(0), dtype=torch.bool, device=tokens.device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            if cache is not None and tokens.size(1) <= context:
                logits = model(tokens[:, cached:], kv_cache=cache, start_pos=cached)
                cached = tokens.size(1)
            else:
                logits = model(tokens[:, -context:])
            next_token = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
            if eos_id is not None:
                next_token = next_token.masked_fill(finished, eos_id)
                finished = finished | (next_token == eos_id)
            tokens = torch.cat((tokens, next_token[:, None].to(tokens.dtype)), dim=1)
            if eos_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)
    return tokens
