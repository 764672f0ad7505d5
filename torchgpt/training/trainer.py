"""Trainer: the loop around a TrainModule (data, cadence, validation, checkpoints, preemption,
metrics), the one class that reads the whole JobConfig. The entry point is torchgpt/train.py.
"""

from __future__ import annotations

import logging
import logging.handlers
import math
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from torchgpt.checkpoint import CheckpointManager, ModelState, OptimizerState, RNGState
from torchgpt.checkpoint.export import export_final_model
from torchgpt.checkpoint.states import TrainState
from torchgpt.config.job_config import ConfigError, JobConfig
from torchgpt.data.loader import build_data
from torchgpt.optim.lr_schedule import continue_schedule
from torchgpt.parallel.dims import ParallelDims, local_device
from torchgpt.run.files import RunFiles
from torchgpt.run.preemption import PreemptionHandler
from torchgpt.run.preflight import accepted_resume_changes
from torchgpt.run.stop import RunStop
from torchgpt.step.build import build_train_module
from torchgpt.step.config import TrainModuleConfig
from torchgpt.step.train_module import TrainModule
from torchgpt.training.callbacks import GarbageCollection, Profiler, StepLogging, Validation
from torchgpt.training.layer_stats import LayerStats
from torchgpt.training.memory import MemorySnapshot
from torchgpt.training.metrics import MetricsLogger, StepTimer
from torchgpt.training.sizing import resolve_auto_sizing, resolve_precision
from torchgpt.training.spike_guard import SpikeGuard
from torchgpt.training.train_eval import InTrainingEval
from torchgpt.utils.hardware import configure_device, detect_peak_tflops

logger = logging.getLogger("torchgpt")


class NonFiniteLossError(RuntimeError):
    pass


class Trainer:
    """The loop around a TrainModule: data, cadence, validation, checkpoints, preemption, logs.

    Args:
        cfg: The validated job config (the Trainer is the one place that reads all of it).
        module_cls: A TrainModule subclass to build instead of TrainModule (fault injection).
        preemption: The stop-request handler when the caller installed one before setup
            (torchgpt/train.py); by default the Trainer makes its own, installed in train().
        memory_snapshot: The CUDA memory recorder when the caller started it before setup
            (torchgpt/train.py); by default the Trainer starts its own
            (profiling.memory_snapshot).
    """

    def __init__(
        self,
        cfg: JobConfig,
        *,
        module_cls: type[TrainModule] | None = None,
        preemption: PreemptionHandler | None = None,
        memory_snapshot: MemorySnapshot | None = None,
    ):
        self.cfg = cfg
        self._module_cls = module_cls
        self._setup_runtime()
        self.memory_snapshot = memory_snapshot or MemorySnapshot(
            cfg.profiling, self.run_dir, self.rank, self.device
        )
        self._build_train_module()
        self._build_data()
        self._build_checkpointer()
        self.harness_eval = InTrainingEval(
            cfg.eval,
            model_args=self.model_args,
            device=self.device,
            bf16=self.bf16,
            rank=self.rank,
            run_dir=self.run_dir,
        )
        self.metrics: MetricsLogger | None = None  # opened by _open_run_files
        self.peak_tflops = cfg.metrics.peak_tflops or detect_peak_tflops(self.device.type)
        self.timer = StepTimer(self.device)
        # The components after each step, in the loop's order (torchgpt/training/callbacks.py).
        self.gc = GarbageCollection(cfg.training.gc_freq)
        self.profiler: Profiler | None = None  # started by train()
        self.step_logging = StepLogging(
            cfg,
            timer=self.timer,
            device=self.device,
            world_size=self.world_size,
            flops_per_token=self.flops_per_token,
            peak_tflops=self.peak_tflops,
        )
        self.validation = Validation(cfg, self.module, self.val_batches, self._set_phase)
        t = cfg.training
        self.spike_guard = SpikeGuard(
            t.spike_zscore, t.spike_window, t.spike_min_steps, t.spike_max_skips
        )
        self.train_state.extras["spike_guard"] = self.spike_guard  # resumed with the counters
        self.layer_stats = LayerStats(
            self.model, enabled=cfg.metrics.layer_stats, batch_group=self.dims.step_group()
        )
        self._owns_preemption = preemption is None
        self.preemption = preemption or PreemptionHandler()
        self.stop = RunStop(  # what a SIGTERM/SIGINT does to this run (torchgpt/run/stop.py)
            self.preemption,
            cfg=cfg,
            train_state=self.train_state,
            run_files=self.run_files,
            ckpt_dir=self.checkpointer.ckpt_dir,
            rank=self.rank,
            phase=lambda: self.phase,
            device=self.device,
        )
        self.phase = "setup"  # what the loop is doing: named when a collective times out

    # ---- construction -------------------------------------------------------------------
    def _setup_runtime(self) -> None:
        cfg = self.cfg
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.device = local_device()
        self.device_settings = configure_device(
            self.device.type, allow_tf32=cfg.training.allow_tf32
        )
        self.precision = resolve_precision(cfg, self.device)  # "auto": the same on every rank
        if cfg.model.attn_backend == "flex" and self.device.type != "cuda":
            raise ConfigError(
                [
                    f"model.attn_backend = flex: torch has no FlexAttention backward on "
                    f"{self.device.type}; use auto (an SDPA mask here) or sdpa"
                ]
            )
        self.auto_sizing = resolve_auto_sizing(cfg, self.device, self.world_size)
        self.dims = ParallelDims.from_config(cfg.parallelism, self.world_size)
        self.mesh = self.dims.mesh
        self.dp_rank, self.dp_degree = self.dims.dp_rank, self.dims.dp_degree
        self.grad_accum = cfg.grad_accum_steps(self.dp_degree)
        self.run_dir = cfg.run_dir
        if cfg.job.deterministic:
            torch.use_deterministic_algorithms(True)
        self.bf16 = cfg.training.mixed_precision == "bf16"
        self.run_files = RunFiles(self.run_dir, self.rank)  # writes nothing before accept()
        logger.info(
            "torch %s, device %s, world size %d, dims %s",
            torch.__version__,
            self.device,
            self.world_size,
            self.dims,
        )
        if self.device_settings:
            logger.info("device settings: %s", ", ".join(self.device_settings))
        logger.info("mixed precision %s: %s", self.precision.value, self.precision.reason)
        if self.auto_sizing is not None:
            logger.info("%s", self.auto_sizing.text())

    def _build_train_module(self) -> None:
        self.step_config = step = TrainModuleConfig.from_job(self.cfg)
        self.model_args, cost = step.model_args, step.spec.cost
        self.module = build_train_module(
            step, self.dims, self.mesh, device=self.device, module_cls=self._module_cls
        )
        self.model = self.module.model
        self.flops_per_token = cost.flops_per_token(self.model_args, self.cfg.training.seq_len)
        logger.info(
            "model %s (%s): %s parameters (%s without embeddings), %.3g training FLOPs/token",
            step.model,
            step.flavor,
            f"{cost.num_params(self.model_args):,}",
            f"{cost.num_params(self.model_args, embeddings=False):,}",
            self.flops_per_token,
        )

    def _build_data(self) -> None:
        self.train_loader, self.val_batches = build_data(
            self.cfg,
            dp_rank=self.dp_rank,
            dp_degree=self.dp_degree,
            vocab_size=self.model_args.vocab_size,
            pin_memory=self.device.type == "cuda",
        )
        self.data_iter = iter(self.train_loader)  # the loader is its own (resumable) iterator

    def _build_checkpointer(self) -> None:
        c = self.cfg.checkpoint
        self.train_state = TrainState()
        self.checkpointer = CheckpointManager(
            self.run_dir,
            states={
                "model": ModelState(self.module.model),
                "optimizer": OptimizerState(self.module.model, self.module.optimizer),
                "lr_scheduler": self.module.lr_scheduler,
                "dataloader": self.train_loader,
                "train_state": self.train_state,
                "rng": RNGState(),
            },
            interval=c.interval,
            keep_latest_k=c.keep_latest_k,
            async_mode=c.async_mode,
            enabled=c.enable,
            extra_metadata={"config": self.cfg.to_dict(), "model_args": asdict(self.model_args)},
            collective_timeout=timedelta(seconds=self.cfg.parallelism.collective_timeout_s),
        )

    def _open_run_files(self) -> None:
        """The launch is accepted (the checkpoint to resume, if any, has loaded): write the run
        directory's files and open the metrics sinks."""
        allowed = accepted_resume_changes(self.cfg)  # now with "auto" precision resolved
        self.run_files.accept(
            self.cfg,
            world_size=self.world_size,
            device=str(self.device),
            parallelism=str(self.dims),
            allowed_changes=allowed,
            auto_sizing=self.auto_sizing.to_json() if self.auto_sizing else None,
            mixed_precision={"value": self.precision.value, "reason": self.precision.reason},
        )
        self.metrics = MetricsLogger.from_config(self.cfg, rank=self.rank)

    # ---- one optimizer step -------------------------------------------------------------
    def train_step(self) -> tuple[float, float]:
        """One optimizer step: accumulate, clip, agree on loss and preemption, step.

        Returns (loss, grad norm)."""
        self.timer.start()
        self.phase = "data loading"
        micro_batches = [next(self.data_iter) for _ in range(self.grad_accum)]
        self.timer.lap("data")
        self.phase = "forward/backward (FSDP all-gather / reduce-scatter, DDP all-reduce)"
        step = self.train_state.step + 1
        per_layer = self.layer_stats.start(self.step_logging.is_log_step(step))  # None: not now
        loss_sum = self.module.forward_backward(micro_batches)
        if per_layer:
            per_layer.gradients()
        self.timer.lap("forward_backward")
        self.phase = "clip_grad_norm (all-reduce of the gradient norm)"
        grad_norm = self.module.clip_grad_norm()
        # One small all-reduce carries the global loss and any rank's preemption request, so every
        # rank agrees on both (a signal may reach the ranks during different steps).
        # Over the loss mesh, or the whole world when tp > 1 (dims.step_group), so the flag
        # reaches every rank.
        stats = torch.stack([loss_sum, self.stop.step_flag()])
        self.phase = "the all-reduce of the step's loss and preemption flag"
        if dist.is_initialized():
            dist.all_reduce(stats, group=self.dims.step_group())
        # The step's one host sync: loss, flag and norm come back together.
        loss_sum_all, flag, gnorm = torch.cat([stats, grad_norm.reshape(1).float()]).tolist()
        loss_val = loss_sum_all / self.dims.step_degree
        # Only the all-reduced flag may steer the loop: the handler can set `requested` on one
        # rank after this all-reduce, and a rank acting on it alone would enter the checkpoint
        # collectives by itself and hang (checkpoint-helper fix, tests/integration/test_resume.py).
        self.stop.agreed = flag > 0
        finite = math.isfinite(loss_val) and math.isfinite(gnorm)
        if not finite:
            if self.cfg.training.on_nonfinite == "error":
                raise NonFiniteLossError(
                    f"non-finite loss {loss_val} / grad norm {gnorm} at step {step}; lower "
                    "optimizer.lr, check the data, or set training.on_nonfinite=skip"
                )
            logger.warning("step %d: non-finite loss %s, skipping the update", step, loss_val)
        # The loss-spike guard decides from the all-reduced numbers: the same on every rank.
        apply = finite and self.spike_guard.check(step, loss_val, gnorm)
        self.phase = "optimizer step"
        if per_layer:
            per_layer.weights()
        self.module.step(apply=apply)
        if per_layer:
            per_layer.updates()
        self.timer.lap("optimizer")
        return loss_val, gnorm

    def _set_phase(self, phase: str) -> None:
        self.phase = phase

    # ---- the loop ------------------------------------------------------------------------
    def _maybe_harness_eval(self, step: int, last_step: int) -> bool:
        """Harness tasks on a fixed `eval.limit` subset (training/train_eval.py); whether due."""
        if not self.harness_eval.due(step, last_step):
            return False
        self.phase = f"the in-training harness eval of step {step} (requests sharded over ranks)"
        self.harness_eval.run_and_log(self.model, step, self.train_state.tokens_seen, self.metrics)
        return True

    def train(self) -> Path | None:
        """Run to training.steps (or until preempted). Returns the final checkpoint path, if any."""
        cfg, st = self.cfg, self.train_state
        c = cfg.checkpoint
        self.preemption.install()  # a no-op when train.py installed it before setup
        self.phase = "loading the checkpoint to resume"
        try:
            resumed = self.checkpointer.load(
                resume=c.resume, load_step=c.load_step, load_path=c.load_path
            )
        except ValueError as e:  # the chosen checkpoint does not fit this config: refused
            raise ConfigError([str(e)]) from e
        self._open_run_files()
        self.stop.start_step = st.step
        if resumed is not None:
            logger.info("resumed from step %d (%s tokens seen)", st.step, f"{st.tokens_seen:,}")
            # Readers drop what an earlier launch logged after this step (eval.loading).
            self.metrics.log({"step": st.step, "resumed_from": st.step})
            self._continue_lr_schedule()
        last_step = cfg.training.steps
        logger.info("training %d steps of %s", last_step - st.step, cfg.step_text(self.dp_degree))
        if self._agree_on_stop():  # a signal during setup: nothing ran, nothing to save
            return self._stop_now(None)
        self.profiler = Profiler(cfg.profiling, self.run_dir, self.rank, self.device)
        ckpt_path = None
        while st.step < last_step:
            self.stop.stage = "step"
            loss, gnorm = self.train_step()
            st.step += 1
            self.stop.stage = "after step"
            st.tokens_seen += cfg.training.global_batch_tokens
            self.gc.step(st.step)
            self.profiler.step()
            self.memory_snapshot.step(st.step)
            lr = self.module.lr_scheduler.get_last_lr()[0]
            extra = self.layer_stats.record()  # {} unless this was a log step with them on
            if self.spike_guard.enabled:
                extra["skipped_updates"] = self.spike_guard.skipped_total
            self.step_logging.after_step(self.metrics, st, loss, gnorm, lr, extra)
            save_due = self.checkpointer.should_save(st.step, last_step=last_step)
            val_loss = self.validation.maybe_run(st.step, last_step, st, self.metrics, save_due)
            harness_due = self._maybe_harness_eval(st.step, last_step)
            if save_due or self.stop.agreed:
                ckpt_path = self._save(st.step, val_loss)
            if save_due or val_loss is not None or harness_due:
                # A signal during this step's validation, eval or save stops the run here, not
                # after one more step (which may outlast torchrun's grace before its SIGKILL).
                if st.step < last_step and self._agree_on_stop() and not save_due:
                    ckpt_path = self._save(st.step, val_loss)
            if self.stop.agreed:
                return self._stop_now(ckpt_path)
        self.profiler.close()
        self.phase = "the final checkpoint's completion and the model export"
        self.checkpointer.wait()
        export_final_model(self.model, self.cfg, self.model_args)
        self.stop.outcome = "finished"
        self.run_files.record_exit("finished", st.step, ckpt_path)
        return ckpt_path

    def _continue_lr_schedule(self) -> None:
        """After a resume: the schedule lr_scheduler.on_steps_change chooses (optim.py)."""
        message = continue_schedule(
            self.module.lr_scheduler,
            self.checkpointer.loaded_config(),
            step=self.train_state.step,
            lr=self.cfg.optimizer.lr,
            on_steps_change=self.cfg.lr_scheduler.on_steps_change,
        )
        if message is not None:
            logger.warning("%s", message)

    # ---- stopping on a signal (issue #27; the bookkeeping is torchgpt/run/stop.py) -------------
    def _agree_on_stop(self) -> bool:
        """RunStop.agree (collective: every rank at the same point), its phase named."""
        if not self.stop.agreed:
            self.phase = "the all-reduce of the stop flag"
        return self.stop.agree()

    def _save(self, step: int, val_loss: float | None) -> Path | None:
        if self.stop.agreed:  # last_exit.json: the stop is under way, its save begins
            self.stop.note(f"the checkpoint save of step {step}")
        self.phase = f"the checkpoint save of step {step}"
        return self.checkpointer.save(step, val_loss=val_loss, force=self.stop.agreed)

    def _stop_now(self, ckpt_path: Path | None) -> Path | None:
        """End train() on an agreed stop request, once its checkpoint is complete."""
        self.phase = "the stop (waiting for its checkpoint to complete)"
        self.checkpointer.wait()
        self.stop.finish(ckpt_path)
        return ckpt_path

    @property
    def outcome(self) -> str | None:
        """How train() ended: "finished", "preempted" or "stopped" (torchgpt/run/stop.py)."""
        return self.stop.outcome

    def close(self) -> None:
        """Close the metrics sinks and run files; put back the signal handlers train() set."""
        self.stop.detach()
        self.gc.close()
        self.memory_snapshot.stop()
        if self.profiler is not None:
            self.profiler.close()
        if self._owns_preemption:
            self.preemption.restore()
        if self.metrics is not None:
            self.metrics.close()
        self.run_files.close()
