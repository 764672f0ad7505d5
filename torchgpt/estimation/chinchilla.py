"""Chinchilla helper: compute-optimal tokens and the loss-vs-size trade-off.

Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models"): about 20 training
tokens per parameter is compute-optimal, and their approach-3 fit of the final loss is
L(N, D) = E + A / N^alpha + B / D^beta with E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28
(N parameters, D tokens; training compute C ~= 6 N D). The fit is for their data (MassiveText)
and tokenizer: use it for the shape of the trade-off, not as a prediction of our loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
TOKENS_PER_PARAM = 20.0


def chinchilla_loss(num_params: float, num_tokens: float) -> float:
    """Fitted final loss L(N, D) of Hoffmann et al. 2022 (approach 3)."""
    if num_params <= 0 or num_tokens <= 0:
        raise ValueError(f"N={num_params} and D={num_tokens} must be > 0")
    return E + A / num_params**ALPHA + B / num_tokens**BETA


def optimal_tokens(num_params: float) -> float:
    """Compute-optimal training tokens for a model of `num_params` (~20 per parameter)."""
    return TOKENS_PER_PARAM * num_params


def optimal_params_for_compute(compute_flops: float) -> float:
    """N with D = 20 N and C = 6 N D, i.e. N = sqrt(C / 120)."""
    if compute_flops <= 0:
        raise ValueError(f"--chinchilla-flops: {compute_flops} must be > 0")
    return math.sqrt(compute_flops / (6 * TOKENS_PER_PARAM))


def fitted_optimal_params(compute_flops: float) -> float:
    """N minimizing L(N, C / 6N): the fit's own optimum (closed form, Hoffmann eq. 4)."""
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    return g * (compute_flops / 6) ** (BETA / (ALPHA + BETA))


@dataclass(frozen=True)
class ChinchillaRow:
    """One model size at a fixed compute budget."""

    num_params: float
    num_tokens: float
    tokens_per_param: float
    loss: float
    label: str


def chinchilla_table(
    *,
    compute_flops: float | None = None,
    num_params: float | None = None,
    scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0),
) -> tuple[float, list[ChinchillaRow]]:
    """Loss vs model size at one compute budget.

    Give a compute budget, or a parameter count (the budget is then 6 N (20 N), the
    compute-optimal run for that size). Rows are the 20-tokens/param optimum times `scales`,
    plus the fit's own optimum and, when given, the model itself.

    Returns:
        (compute budget in FLOPs, rows sorted by size).

    Raises:
        ValueError: neither or a non-positive value given.
    """
    if compute_flops is None and num_params is None:
        raise ValueError("chinchilla_table needs compute_flops or num_params")
    if num_params is not None and num_params <= 0:
        raise ValueError(f"--chinchilla-params: {num_params} must be > 0")
    if compute_flops is None:
        compute_flops = 6 * num_params * optimal_tokens(num_params)  # type: ignore[operator]
    n_opt = optimal_params_for_compute(compute_flops)
    sizes = {n_opt * s: f"{s:g}x of 20 tok/param optimum" for s in scales}
    sizes[n_opt] = "20 tokens/param optimum"
    sizes[fitted_optimal_params(compute_flops)] = "optimum of the L(N,D) fit"
    if num_params is not None:
        sizes[num_params] = "this model"
    rows = []
    for n, label in sorted(sizes.items()):
        d = compute_flops / (6 * n)
        rows.append(ChinchillaRow(n, d, d / n, chinchilla_loss(n, d), label))
    return compute_flops, rows
