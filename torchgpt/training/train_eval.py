"""The in-training harness eval (`eval.enable`): lm-eval tasks on a fixed subset, mid-run.

Every rank gathers the full weights into a plain (unsharded, uncompiled) copy on its training
device, in the training dtype, and runs the same harness tasks; the loglikelihood batches are
dealt out across the ranks and their results gathered (torchgpt/eval/harness.py), so each rank
scores 1/world of the requests and every rank ends with the scores one rank alone would give,
bitwise. The gather runs on a gloo group of its own whose timeout (a day) cannot run out
before a slow rank's share does. Rank 0 logs the record.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from torchgpt.config.job_config import Eval
from torchgpt.model.args import ModelArgs
from torchgpt.training.metrics import MetricsLogger

logger = logging.getLogger("torchgpt")

WAIT_TIMEOUT = timedelta(days=1)


class InTrainingEval:
    """Scores the training model every `eval.interval` steps (and at the last step).

    Constructing it creates a process group when distributed: build it on every rank at the
    same point.
    """

    def __init__(
        self,
        cfg: Eval,
        *,
        model_args: ModelArgs,
        device: torch.device,
        bf16: bool,
        rank: int,
        run_dir: Path,
    ) -> None:
        self.cfg, self.model_args, self.device, self.rank = cfg, model_args, device, rank
        self.dtype = "bfloat16" if bf16 else "float32"
        self.run_dir = run_dir
        self.group = None
        if cfg.enable and dist.is_initialized():
            self.group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)

    def due(self, step: int, last_step: int) -> bool:
        return self.cfg.enable and (step % self.cfg.interval == 0 or step == last_step)

    def run(self, model: torch.nn.Module) -> tuple[dict[str, float], float] | None:
        """({"eval/TASK/acc": ..., ...}, seconds) on rank 0, None on the others (which
        computed the same scores)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Full tensors on every rank (cpu_offload would give them to rank 0 only).
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        scores = self._score(sd)
        del sd
        return scores if self.rank == 0 else None

    def _score(self, state_dict: dict[str, Any]) -> tuple[dict[str, float], float]:
        from torchgpt.checkpoint.loading import build_model
        from torchgpt.eval import run_harness_eval

        e = self.cfg
        t0 = time.perf_counter()
        plain = build_model(asdict(self.model_args), state_dict, source=self.run_dir)
        plain.to(self.device)
        quiet = logging.getLogger("lm_eval")  # one rank's harness log is enough
        level = quiet.level
        if self.rank > 0:
            quiet.setLevel(logging.WARNING)
        try:
            result = run_harness_eval(
                plain,
                tasks=e.tasks,
                limit=e.limit,
                data_dir=e.data_dir or None,
                dtype=self.dtype,
                shard_group=self.group,
            )
        finally:
            quiet.setLevel(level)
        del plain
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # the copy's blocks go back before training resumes
        record: dict[str, float] = {}
        for task, scores in result["tasks"].items():
            for metric in ("acc", "acc_norm"):
                if scores.get(metric) is not None:
                    record[f"eval/{task}/{metric}"] = scores[metric]
        return record, time.perf_counter() - t0

    def run_and_log(
        self, model: torch.nn.Module, step: int, tokens_seen: int, metrics: MetricsLogger
    ) -> None:
        """`run`, then (rank 0) one metrics record and its console line."""
        scored = self.run(model)
        if scored is None:
            return
        scores, seconds = scored
        metrics.log(
            {"step": step, "tokens_seen": tokens_seen, **scores},
            console=f"step {step:>6}  harness (limit {self.cfg.limit}, {self.where()}, "
            f"{seconds:.0f}s): " + "  ".join(f"{k[5:]} {v:.3f}" for k, v in scores.items()),
        )

    def where(self) -> str:
        world = dist.get_world_size(self.group) if self.group is not None else 1
        shared = f", requests sharded over {world} ranks" if world > 1 else ""
        return f"{self.device.type} in {self.dtype}{shared}"
