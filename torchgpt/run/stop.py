"""A run's stop on SIGTERM/SIGINT (issue #27): where the signal found it, what is saved, and
what last_exit.json says. The Trainer owns one RunStop; torchgpt/run/preemption.py catches the
signals, and the Trainer's loop decides (with every rank) when to stop and what to save.

A stop loses nothing ("preempted") when the step reached is in a checkpoint or no step ran in
this launch; otherwise it is "stopped" and the next launch re-runs the steps after the newest
complete checkpoint. Rank 0 notes "stopping" as soon as its signal arrives, so a stop killed
half-way (torchrun's grace) still says how far it got; the launcher then completes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist

from torchgpt.checkpoint import layout
from torchgpt.checkpoint.states import TrainState
from torchgpt.config.job_config import JobConfig
from torchgpt.run.files import RunFiles, next_launch
from torchgpt.run.preemption import PreemptionHandler, signal_name

logger = logging.getLogger("torchgpt")


class RunStop:
    """The Trainer's view of a stop request (see the module docstring).

    Args:
        handler: the signal handler; its callbacks are set here and removed by `detach`.
        cfg: the job config (checkpoint.* for what the next launch does).
        train_state: the Trainer's counters (the step reached).
        run_files: rank 0's run files (last_exit.json).
        ckpt_dir: RUN_DIR/checkpoints.
        rank: this process's rank; only rank 0 writes.
        phase: returns what the Trainer is doing now (Trainer.phase).
        device: where the flag of the step's all-reduce lives.

    Attributes:
        stage: "setup", "step" (inside train_step) or "after step" (validation, eval, save).
        start_step: the step this launch started from (resumed, or 0).
        during: where this rank's signal found the run (None: no signal reached this rank).
        outcome: "finished", "preempted" or "stopped" once train() has ended.
        agreed: some rank asked to stop, as of the last all-reduce: only this steers the loop.
    """

    def __init__(
        self,
        handler: PreemptionHandler,
        *,
        cfg: JobConfig,
        train_state: TrainState,
        run_files: RunFiles,
        ckpt_dir: Path,
        rank: int,
        phase: Callable[[], str],
        device: torch.device,
    ) -> None:
        self.handler, self.cfg, self.train_state = handler, cfg, train_state
        self.run_files, self.ckpt_dir, self.rank, self._phase = run_files, ckpt_dir, rank, phase
        self.stage: Literal["setup", "step", "after step"] = "setup"
        self.start_step = 0
        self.during: str | None = None
        self.outcome: str | None = None
        self.agreed = False
        self._flag = torch.zeros((), device=device)  # this rank's request, on the device
        self._flag_set = False
        self.device = device
        handler.on_request = self.on_request
        handler.on_exit_now.append(self.on_exit_now)

    def step_flag(self) -> torch.Tensor:
        """This rank's request as a device scalar, for the step's own all-reduce.

        A torch.tensor(python value, device=...) here would be a blocking host-to-device copy
        every step; fill_ passes the scalar as a kernel argument, once."""
        if self.handler.requested and not self._flag_set:
            self._flag.fill_(1.0)
            self._flag_set = True
        return self._flag

    def agree(self) -> bool:
        """Whether any rank was asked to stop; collective, called by every rank at the same point
        outside the step (end of setup, after a validation, harness eval or save)."""
        if not self.agreed:
            flag = torch.tensor([1.0 if self.handler.requested else 0.0], device=self.device)
            if dist.is_initialized():
                dist.all_reduce(flag)
            self.agreed = flag.item() > 0
        return self.agreed

    def detach(self) -> None:
        """Remove the callbacks from the handler (they keep the Trainer alive)."""
        self.handler.on_request = None
        if self.on_exit_now in self.handler.on_exit_now:
            self.handler.on_exit_now.remove(self.on_exit_now)

    def where(self) -> str:
        """e.g. 'step 27 (forward/backward)' or 'step 20, after its update (validation)'."""
        step, phase = self.train_state.step, self._phase().split(" (")[0]  # without its gloss
        if self.stage == "setup":
            return f"setup ({phase})"
        if self.stage == "step":
            return f"step {step + 1} ({phase})"
        return f"step {step}, after its update ({phase})"

    def on_request(self, signum: int) -> None:
        """PreemptionHandler.on_request: say where the signal found the run and what follows."""
        self.during = self.where()
        if self.stage == "setup":
            plan = "stopping before the first step (nothing to save)"
        elif not self.cfg.checkpoint.enable:
            plan = "stopping after it, without a checkpoint (checkpoint.enable = false)"
        else:
            step = self.train_state.step + (1 if self.stage == "step" else 0)
            plan = f"will save the checkpoint of step {step} and exit (a second signal: at once)"
        logger.warning("%s during %s: %s", signal_name(signum), self.during, plan)
        self.note(self.during)

    def note(self, during: str | None) -> None:
        """Rank 0: last_exit.json says "stopping" (what a stop killed half-way leaves)."""
        newest = layout.newest_complete(self.ckpt_dir) if self.rank == 0 else None
        self.run_files.record_exit(
            "stopping",
            self.train_state.step,
            newest[1] if newest else None,
            signal=self.handler.signal_name,
            during=during or self.during,
        )

    def status(self, saved: Path | None) -> tuple[str, Path | None]:
        """(status, checkpoint to resume) given the checkpoint this launch saved last."""
        step = self.train_state.step
        if saved is not None and saved == layout.step_dir(self.ckpt_dir, step):
            return "preempted", saved
        newest = layout.newest_complete(self.ckpt_dir)
        nothing_ran = step == self.start_step
        return ("preempted" if nothing_ran else "stopped"), (newest[1] if newest else None)

    def finish(self, saved: Path | None) -> None:
        """The agreed stop is done (its checkpoint complete): log, record, set `outcome`."""
        step = self.train_state.step
        status, resume = self.status(saved)
        then = next_launch(self.cfg, (layout.step_of(resume), resume) if resume else None)
        if saved is not None and resume == saved:
            logger.info("preempted: checkpoint of step %d saved to %s; exiting", step, saved)
        elif status == "preempted":
            logger.info("stopped before the first step of this launch: nothing to save; %s", then)
        else:
            logger.warning("stopped at step %d without saving it; %s", step, then)
        self.outcome = status
        # during None: another rank received the signal, this one learnt it by the all-reduce
        self.run_files.record_exit(
            status, step, resume, signal=self.handler.signal_name, during=self.during
        )

    def on_exit_now(self) -> None:
        """PreemptionHandler.on_exit_now: a second signal ends the process mid-way."""
        status, resume = self.status(None)
        self.run_files.record_exit(
            status,
            self.train_state.step,
            resume,
            signal=self.handler.signal_name,
            during=self.during,
        )
