"""Trainer: the loop around a TrainModule (data, cadence, validation, checkpoints, preemption,
metrics), the one class that reads the whole JobConfig. The entry point is torchgpt/train.py.
"""

from __future__ import annotations

import logging
import logging.handlers
import math
import os
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from torchgpt.checkpoint import CheckpointManager, ModelState, OptimizerState, RNGState
from torchgpt.checkpoint.export import export_model
from torchgpt.checkpoint.states import TrainState
from torchgpt.config import ConfigError, JobConfig
from torchgpt.data.loader import TrainLoader, build_val_batches
from torchgpt.hardware import configure_device, detect_peak_tflops
from torchgpt.metrics import MetricsLogger, StepTimer, console_line, peak_memory, step_record
from torchgpt.model.args import flops_per_token, get_model_args, num_params
from torchgpt.optim import muon_options
from torchgpt.parallel.dims import ParallelDims, device_type
from torchgpt.preemption import PreemptionHandler
from torchgpt.preflight import resume_changes
from torchgpt.run_files import RunFiles
from torchgpt.sizing import resolve_auto_sizing
from torchgpt.train_eval import InTrainingEval
from torchgpt.train_module import TrainModule, build_train_module, perplexity

logger = logging.getLogger("torchgpt")


class NonFiniteLossError(RuntimeError):
    pass


class Trainer:
    """The loop around a TrainModule: data, cadence, validation, checkpoints, preemption, logs.

    Args:
        cfg: The validated job config (the Trainer is the one place that reads all of it).
        module_cls: A TrainModule subclass to build instead of TrainModule (fault injection).
    """

    def __init__(self, cfg: JobConfig, *, module_cls: type[TrainModule] | None = None):
        self.cfg = cfg
        self._module_cls = module_cls
        self._setup_runtime()
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
        self.preemption = PreemptionHandler()
        self._preempt_agreed = False  # some rank asked, as of the last all-reduce: act on this
        self.phase = "setup"  # what the loop is doing: named when a collective times out

    # ---- construction -------------------------------------------------------------------
    def _setup_runtime(self) -> None:
        cfg = self.cfg
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        dtype = device_type()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device(dtype, local_rank) if dtype == "cuda" else torch.device("cpu")
        if dtype == "cuda":
            torch.cuda.set_device(self.device)
        self.device_settings = configure_device(dtype, allow_tf32=cfg.training.allow_tf32)
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
        if self.auto_sizing is not None:
            logger.info("%s", self.auto_sizing.text())

    def _build_train_module(self) -> None:
        cfg, t, o, s = self.cfg, self.cfg.training, self.cfg.optimizer, self.cfg.lr_scheduler
        self.model_args = get_model_args(cfg.model.flavor, qk_norm=cfg.model.qk_norm)
        self.module = build_train_module(
            self.model_args,
            self.dims,
            self.mesh,
            device=self.device,
            seed=cfg.job.seed,
            mixed_precision=t.mixed_precision,
            max_norm=t.max_norm,
            ac_mode=cfg.activation_checkpoint.mode,
            ac_selective_option=cfg.activation_checkpoint.selective_option,
            compile_enable=cfg.compile.enable,
            compile_whole_model=cfg.compile.whole_model,
            reshard_after_forward=cfg.parallelism.fsdp_reshard_after_forward,
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            weight_decay=o.weight_decay,
            optimizer_implementation=o.implementation,
            muon=muon_options(o),
            warmup_steps=s.warmup_steps,
            total_steps=t.steps,
            decay_type=s.decay_type,
            min_lr_ratio=s.min_lr_ratio,
            module_cls=self._module_cls,
        )
        self.model = self.module.model
        self.flops_per_token = flops_per_token(self.model_args, t.seq_len)
        logger.info(
            "model %s: %s parameters (%s without embeddings), %.3g training FLOPs/token",
            cfg.model.flavor,
            f"{num_params(self.model_args):,}",
            f"{num_params(self.model_args, embeddings=False):,}",
            self.flops_per_token,
        )

    def _build_data(self) -> None:
        cfg, t = self.cfg, self.cfg.training
        self.train_loader = TrainLoader(
            cfg.data.dataset_path,
            seq_len=t.seq_len,
            micro_batch_size=t.micro_batch_size,
            dp_rank=self.dp_rank,
            dp_world_size=self.dp_degree,
            seed=cfg.job.seed,
            num_workers=cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            vocab_size=self.model_args.vocab_size,
            allow_data_change=cfg.data.allow_data_change,
        )
        self.data_iter = iter(self.train_loader)  # the loader is its own (resumable) iterator
        self.val_batches = []
        if cfg.validation.enable:
            self.val_batches = build_val_batches(
                cfg.data.dataset_path,
                seq_len=t.seq_len,
                micro_batch_size=cfg.validation.micro_batch_size or t.micro_batch_size,
                num_tokens=cfg.validation.tokens,
                dp_rank=self.dp_rank,
                dp_world_size=self.dp_degree,
            )

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
        _, allowed = resume_changes(self.cfg)
        for change in allowed:
            logger.warning("resuming with a changed config (checkpoint.allow_change): %s", change)
        self.run_files.accept(
            self.cfg,
            world_size=self.world_size,
            device=str(self.device),
            parallelism=str(self.dims),
            allowed_changes=allowed,
            auto_sizing=self.auto_sizing.to_json() if self.auto_sizing else None,
        )
        m = self.cfg.metrics
        self.metrics = MetricsLogger(
            self.run_dir,
            rank=self.rank,
            enable_tensorboard=m.enable_tensorboard,
            enable_wandb=m.enable_wandb,
            wandb_project=m.wandb_project,
            run_name=self.cfg.job.name,
            config=self.cfg.to_dict(),
        )

    # ---- one optimizer step -------------------------------------------------------------
    def train_step(self) -> tuple[float, float]:
        """One optimizer step: accumulate, clip, agree on loss and preemption, step.

        Returns (loss, grad norm)."""
        self.timer.start()
        self.phase = "data loading"
        micro_batches = [next(self.data_iter) for _ in range(self.grad_accum)]
        self.timer.lap("data")
        self.phase = "forward/backward (FSDP all-gather / reduce-scatter, DDP all-reduce)"
        loss_sum = self.module.forward_backward(micro_batches)
        self.timer.lap("forward_backward")
        self.phase = "clip_grad_norm (all-reduce of the gradient norm)"
        grad_norm = self.module.clip_grad_norm()
        # One small all-reduce carries the global loss and any rank's preemption request, so every
        # rank agrees on both (a signal may reach the ranks during different steps).
        stats = torch.stack(
            [loss_sum, torch.tensor(float(self.preemption.requested), device=self.device)]
        )
        self.phase = "the all-reduce of the step's loss and preemption flag"
        if dist.is_initialized():
            dist.all_reduce(stats)
        # The step's one host sync: loss, flag and norm come back together.
        loss_sum_all, flag, gnorm = torch.cat([stats, grad_norm.reshape(1).float()]).tolist()
        loss_val = loss_sum_all / self.world_size
        # Only the all-reduced flag may steer the loop: the handler can set `requested` on one
        # rank after this all-reduce, and a rank acting on it alone would enter the checkpoint
        # collectives by itself and hang (checkpoint-helper fix, tests/integration/test_resume.py).
        self._preempt_agreed = flag > 0
        finite = math.isfinite(loss_val) and math.isfinite(gnorm)
        if not finite:
            step = self.train_state.step + 1
            if self.cfg.training.on_nonfinite == "error":
                raise NonFiniteLossError(
                    f"non-finite loss {loss_val} / grad norm {gnorm} at step {step}; lower "
                    "optimizer.lr, check the data, or set training.on_nonfinite=skip"
                )
            logger.warning("step %d: non-finite loss %s, skipping the update", step, loss_val)
        self.phase = "optimizer step"
        self.module.step(apply=finite)
        self.timer.lap("optimizer")
        return loss_val, gnorm

    def validate(self) -> float:
        """Mean token cross-entropy over the fixed validation batches of all ranks."""
        self.phase = "validation (forward passes and the all-reduce of the loss)"
        return self.module.eval_loss(self.val_batches)

    # ---- the loop: logging, validation, harness eval, checkpoints ------------------------
    def _log_step(self, loss: float, gnorm: float, t_log: float, tokens_since: int) -> None:
        st, steps = self.train_state, max(self._steps_since_log, 1)
        record = step_record(
            step=st.step,
            loss=loss,
            grad_norm=gnorm,
            lr=self.module.lr_scheduler.get_last_lr()[0],
            tokens_seen=st.tokens_seen,
            tokens=tokens_since,
            seconds=time.perf_counter() - t_log,
            steps=steps,
            phases=self.timer.pop(),
            world_size=self.world_size,
            flops_per_token=self.flops_per_token,
            peak_tflops=self.peak_tflops,
            memory=peak_memory(self.device),
        )
        self.metrics.log(record, console=console_line(record, self.cfg.training.steps))

    def _maybe_validate(self, step: int, last_step: int, force: bool = False) -> float | None:
        v = self.cfg.validation
        if not v.enable or not (force or step % v.interval == 0 or step == last_step):
            return None
        val_loss = self.validate()
        self.metrics.log(
            {
                "step": step,
                "val_loss": val_loss,
                "val_ppl": perplexity(val_loss),
                "tokens_seen": self.train_state.tokens_seen,
            },
            console=f"step {step:>6}  val_loss {val_loss:.4f}  val_ppl {perplexity(val_loss):.2f}",
        )
        self.train_state.best_val_loss = min(self.train_state.best_val_loss, val_loss)
        return val_loss

    def _maybe_harness_eval(self, step: int, last_step: int) -> None:
        """Harness tasks on a fixed `eval.limit` subset (torchgpt/train_eval.py)."""
        if not self.harness_eval.due(step, last_step):
            return
        self.phase = f"the in-training harness eval of step {step} (others wait at a barrier)"
        scored = self.harness_eval.run(self.model)
        if scored is None:
            return
        scores, seconds = scored
        self.metrics.log(
            {"step": step, "tokens_seen": self.train_state.tokens_seen, **scores},
            console=f"step {step:>6}  harness (limit {self.cfg.eval.limit}, "
            f"{self.harness_eval.where()}, {seconds:.0f}s): "
            + "  ".join(f"{k[5:]} {v:.3f}" for k, v in scores.items()),
        )

    def train(self) -> Path | None:
        """Run to training.steps (or until preempted). Returns the final checkpoint path, if any."""
        cfg, st = self.cfg, self.train_state
        c = cfg.checkpoint
        self.phase = "loading the checkpoint to resume"
        try:
            resumed = self.checkpointer.load(
                resume=c.resume, load_step=c.load_step, load_path=c.load_path
            )
        except ValueError as e:  # the chosen checkpoint does not fit this config: refused
            raise ConfigError([str(e)]) from e
        self._open_run_files()
        if resumed is not None:
            logger.info("resumed from step %d (%s tokens seen)", st.step, f"{st.tokens_seen:,}")
            # Readers drop what an earlier launch logged after this step (eval.loading).
            self.metrics.log({"step": st.step, "resumed_from": st.step})
        self.preemption.install()
        last_step = cfg.training.steps
        tokens_per_step = cfg.training.global_batch_tokens
        logger.info(
            "training %d steps of %s tokens (%d micro-steps of %d x %d per rank, %d ranks)",
            last_step - st.step,
            f"{tokens_per_step:,}",
            self.grad_accum,
            cfg.training.micro_batch_size,
            cfg.training.seq_len,
            self.dp_degree,
        )
        ckpt_path = None
        t_log, tokens_since, self._steps_since_log = time.perf_counter(), 0, 0
        while st.step < last_step:
            loss, gnorm = self.train_step()
            st.step += 1
            st.tokens_seen += tokens_per_step
            tokens_since += tokens_per_step
            self._steps_since_log += 1
            if st.step % cfg.metrics.log_freq == 0 or st.step == last_step or st.step == 1:
                self._log_step(loss, gnorm, t_log, tokens_since)
                t_log, tokens_since, self._steps_since_log = time.perf_counter(), 0, 0
            save_due = self.checkpointer.should_save(st.step, last_step=last_step)
            # Every checkpoint carries its val loss, so "best" is chosen among saved steps.
            val_loss = self._maybe_validate(st.step, last_step, force=save_due)
            self._maybe_harness_eval(st.step, last_step)
            if save_due or self._preempt_agreed:
                self.phase = f"the checkpoint save of step {st.step}"
                ckpt_path = self.checkpointer.save(
                    st.step, val_loss=val_loss, force=self._preempt_agreed
                )
            if self._preempt_agreed:
                self.checkpointer.wait()
                logger.info(
                    "preempted: checkpoint of step %d saved to %s; exiting", st.step, ckpt_path
                )
                if ckpt_path is not None:
                    self.run_files.record_exit("preempted", st.step, ckpt_path)
                return ckpt_path
        self.phase = "the final checkpoint's completion and the model export"
        self.checkpointer.wait()
        self._export_model()
        self.run_files.record_exit("finished", st.step, ckpt_path)
        return ckpt_path

    def _export_model(self) -> None:
        """Model-only export (plain state dict, args, config) in checkpoint.export_dtype."""
        path = export_model(
            self.model,
            self.run_dir / "model.pt",
            model_args=asdict(self.model_args),
            config=self.cfg.to_dict(),
            dtype=getattr(torch, self.cfg.checkpoint.export_dtype),
        )
        logger.info("exported the final model to %s", path)

    def close(self) -> None:
        """Close the metrics sinks and run files; put back the signal handlers train() set."""
        self.preemption.restore()
        if self.metrics is not None:
            self.metrics.close()
        self.run_files.close()
