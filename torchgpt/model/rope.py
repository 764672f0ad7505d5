"""Rotary position embeddings (Su et al. 2021, "RoFormer"), rotate-half convention.

Rotate-half pairs dimension i with i + head_dim/2 (GPT-NeoX / Hugging Face Llama layout),
so weights export to `LlamaForCausalLM` without permuting the q/k projections.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_tables(
    head_dim: int, max_seq_len: int, theta: float, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Return fp32 (cos, sin) tables of shape (max_seq_len, head_dim).

    Args:
        head_dim: width of one attention head (even).
        max_seq_len: number of positions.
        theta: base frequency (10000 in the paper).
        device: where to build the tables (works on "meta").
    """
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # (hs/2,)
    positions = torch.arange(max_seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)  # (T, hs/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (T, hs): dim i and i + hs/2 share a frequency
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate q or k by position; computed in fp32, returned in x's dtype.

    Args:
        x: (B, nh, T, hs) queries or keys.
        cos: (T, hs) rows of the cos table for these positions.
        sin: (T, hs) rows of the sin table.
    """
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    rotated = torch.cat((-x2, x1), dim=-1)  # (B, nh, T, hs)
    return (xf * cos + rotated * sin).type_as(x)
