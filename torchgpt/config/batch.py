"""The batch arithmetic every layout shares: micro-steps per optimizer step, and why a global
batch does not split into whole micro-batches over the data-parallel ranks."""

from __future__ import annotations


def grad_accum_steps(
    global_batch_tokens: int, micro_batch_size: int, seq_len: int, dp_degree: int
) -> int:
    """Micro-steps per optimizer step so that one step sees global_batch_tokens tokens."""
    return global_batch_tokens // (micro_batch_size * seq_len * dp_degree)


def batch_problem(
    global_batch_tokens: int, micro_batch_size: int, seq_len: int, dp_degree: int
) -> str | None:
    """Why the global batch does not split into whole micro-batches over the ranks, or None."""
    per_micro = micro_batch_size * seq_len * dp_degree
    if global_batch_tokens % per_micro == 0:
        return None
    return (
        f"training.global_batch_tokens: {global_batch_tokens} is not divisible by "
        f"micro_batch_size x seq_len x data-parallel degree = {micro_batch_size} x "
        f"{seq_len} x {dp_degree} = {per_micro}; pick a multiple of {per_micro}"
    )
