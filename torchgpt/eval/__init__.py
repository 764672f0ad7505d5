"""Evaluation of torchgpt checkpoints: val loss, lm-evaluation-harness tasks, samples, reports.

Light imports only: `run_harness_eval` / `TorchGPTLM` (lm-eval) load the harness on first use.
"""

from typing import Any

from torchgpt.eval.loading import check_vocab, list_checkpoints, load_model
from torchgpt.eval.val import compute_val_loss, evaluate_val

__all__ = [
    "check_vocab",
    "compute_val_loss",
    "evaluate_val",
    "list_checkpoints",
    "load_model",
    "run_harness_eval",
]


def run_harness_eval(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See `torchgpt.eval.harness.run_harness_eval` (imports lm-eval on first call)."""
    from torchgpt.eval.harness import run_harness_eval as run

    return run(*args, **kwargs)
