"""The loss-spike guard (`training.spike_zscore`, llm.c's and OLMo-core's idea): skip the
update of a step whose loss or gradient norm is far above the recent ones.

The step's loss and gradient norm are already all-reduced (the one host sync of the step), so
every rank sees the same two numbers and takes the same decision with no extra collective.
A step is a spike when either z-score against the last `spike_window` accepted steps exceeds
`spike_zscore` (one-sided: only a rise is a spike). Its gradients are dropped, the lr schedule
still advances (as for a non-finite step), and the step counts as trained. Spikes do not enter
the window, so a lasting shift of the loss keeps being refused: after `spike_max_skips`
spikes in a row the run stops with an error naming their steps. The window and the counts are
saved in every checkpoint (inside the train state), so a resume guards as the run would have.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

logger = logging.getLogger("torchgpt")


class LossSpikeError(RuntimeError):
    """Too many consecutive spikes: the run diverged or the data changed."""


class SpikeGuard:
    """Rolling z-scores of the step's loss and grad norm; `check` says whether to apply it.

    Args:
        zscore: Threshold; <= 0 turns the guard off (every step is applied, nothing is kept).
        window: Accepted steps the mean and standard deviation are taken over.
        min_steps: Accepted steps needed before any step can be called a spike.
        max_skips: Consecutive spikes that stop the run (LossSpikeError).
    """

    def __init__(self, zscore: float, window: int, min_steps: int, max_skips: int) -> None:
        self.zscore, self.min_steps, self.max_skips = zscore, min_steps, max_skips
        self.losses: deque[float] = deque(maxlen=window)
        self.norms: deque[float] = deque(maxlen=window)
        self.skipped_total = 0
        self.skipped_in_a_row: list[int] = []  # the steps of the current run of spikes

    @property
    def enabled(self) -> bool:
        return self.zscore > 0

    def check(self, step: int, loss: float, grad_norm: float) -> bool:
        """Whether step `step` (loss, grad norm: the same on every rank) is applied.

        Raises:
            LossSpikeError: this was the `max_skips`-th spike in a row.
        """
        if not self.enabled:
            return True
        z_loss, z_norm = _zscore(self.losses, loss), _zscore(self.norms, grad_norm)
        spike = len(self.losses) >= self.min_steps and max(z_loss, z_norm) > self.zscore
        if not spike:
            self.losses.append(loss)
            self.norms.append(grad_norm)
            self.skipped_in_a_row.clear()
            return True
        self.skipped_total += 1
        self.skipped_in_a_row.append(step)
        logger.warning(
            "step %d: loss spike (loss %.4f z %.1f, grad norm %.3g z %.1f > "
            "training.spike_zscore=%g): update skipped (%d in a row, %d in this run)",
            step,
            loss,
            z_loss,
            grad_norm,
            z_norm,
            self.zscore,
            len(self.skipped_in_a_row),
            self.skipped_total,
        )
        if len(self.skipped_in_a_row) >= self.max_skips:
            steps = ", ".join(map(str, self.skipped_in_a_row))
            raise LossSpikeError(
                f"{len(self.skipped_in_a_row)} loss spikes in a row (steps {steps}; "
                f"training.spike_max_skips={self.max_skips}): the run diverged or its data "
                "changed; resume from an earlier checkpoint with a lower optimizer.lr, or raise "
                "training.spike_zscore"
            )
        return False

    # ---- saved inside TrainState (torchgpt/checkpoint/states.py) ---------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "norms": list(self.norms),
            "skipped_total": self.skipped_total,
            "skipped_in_a_row": list(self.skipped_in_a_row),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.losses.clear()
        self.losses.extend(float(x) for x in sd["losses"])
        self.norms.clear()
        self.norms.extend(float(x) for x in sd["norms"])
        self.skipped_total = int(sd["skipped_total"])
        self.skipped_in_a_row = [int(s) for s in sd["skipped_in_a_row"]]


def _zscore(history: deque[float], value: float) -> float:
    """(value - mean) / std of `history` (population std); 0 with fewer than 2 values, and
    +inf for a rise over a constant history."""
    n = len(history)
    if n < 2:
        return 0.0
    mean = sum(history) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in history) / n)
    if std == 0.0:
        return math.inf if value > mean else 0.0
    return (value - mean) / std
