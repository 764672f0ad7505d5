"""Trainer and entry point: the one module that sees the whole JobConfig.

`python -m torchgpt.train CONFIG.toml [--section.key value ...]` (run_train.sh wraps it in
torchrun). The Trainer builds model -> parallelize -> optimizer -> data -> checkpointer -> metrics,
then runs gradient-accumulated steps with periodic validation, checkpoints and metrics.
"""

from __future__ import annotations

import gc
import logging
import logging.handlers
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.stateful import Stateful

from torchgpt.checkpoint import CheckpointManager, ModelState, OptimizerState, RNGState
from torchgpt.checkpoint.layout import write_json_atomic
from torchgpt.config import ConfigError, JobConfig
from torchgpt.config_manager import dump_config, help_text
from torchgpt.data.loader import TrainLoader, build_val_batches
from torchgpt.hardware import detect_peak_tflops, tune_host_malloc
from torchgpt.metrics import MetricsLogger, StepTimer, peak_memory_gib
from torchgpt.model.args import flops_per_token, get_model_args, num_params
from torchgpt.parallel.dims import ParallelDims, device_type
from torchgpt.preflight import LAUNCH_ID_ENV, PREEMPTED_NAME, preflight
from torchgpt.provenance import record_launch
from torchgpt.train_module import TrainModule, build_train_module

logger = logging.getLogger("torchgpt")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class NonFiniteLossError(RuntimeError):
    pass


class TrainState(Stateful):
    """Counters that must survive a restart (the step, tokens seen, best validation loss)."""

    def __init__(self) -> None:
        self.step = 0
        self.tokens_seen = 0
        self.best_val_loss = math.inf

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
        }

    def load_state_dict(self, sd: dict) -> None:
        self.step = int(sd["step"])
        self.tokens_seen = int(sd["tokens_seen"])
        self.best_val_loss = float(sd["best_val_loss"])


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
        self.metrics: MetricsLogger | None = None  # opened by _open_run_files
        self.peak_tflops = cfg.metrics.peak_tflops or detect_peak_tflops(self.device.type)
        self.timer = StepTimer(self.device)
        self._previous_handlers: dict[int, object] = {}  # restored by close()
        self._preempt_requested = False  # this rank got a signal (set by the handler)
        self._preempt_agreed = False  # some rank did, as of the last all-reduce: act on this

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
        self.dims = ParallelDims.from_config(cfg.parallelism, self.world_size)
        self.mesh = self.dims.build_mesh(dtype)
        # Data-parallel rank: FSDP, HSDP and DDP all split the batch over every process.
        self.dp_rank, self.dp_degree = self.rank, self.dims.dp_degree
        self.grad_accum = cfg.grad_accum_steps(self.dp_degree)
        self.run_dir = cfg.run_dir
        if cfg.job.deterministic:
            torch.use_deterministic_algorithms(True)
        self.bf16 = cfg.training.mixed_precision == "bf16"
        # Nothing is written to the run directory until the launch is accepted (the checkpoint
        # to resume loaded): until then rank 0's log records wait in memory (see _open_run_files).
        self._log_file: logging.Handler | None = None
        self._log_buffer: logging.handlers.MemoryHandler | None = None
        if self.rank == 0:
            self._log_buffer = logging.handlers.MemoryHandler(
                capacity=100_000, flushLevel=logging.CRITICAL + 1
            )
            logging.getLogger("torchgpt").addHandler(self._log_buffer)
        logger.info(
            "torch %s, device %s, world size %d, dims %s",
            torch.__version__,
            self.device,
            self.world_size,
            self.dims,
        )

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
        )

    def _open_run_files(self) -> None:
        """The launch is accepted: write config.json and run_info.json, open train.log, metrics.

        Called once the checkpoint to resume (if any) has loaded, so a refused launch (a bad
        checkpoint, another model) leaves the run directory exactly as it was.
        """
        if self.rank == 0:
            dump_config(self.cfg, self.run_dir / "config.json")
            # The run directory carries its own log and a record of every launch (command,
            # machine, versions), so a report made from it can cite both.
            self._log_file = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
            self._log_file.setFormatter(logging.Formatter(LOG_FORMAT))
            self._flush_log_buffer(self._log_file)
            logging.getLogger("torchgpt").addHandler(self._log_file)
            record_launch(
                self.run_dir,
                world_size=self.world_size,
                device=str(self.device),
                parallelism=str(self.dims),
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

    def _flush_log_buffer(self, target: logging.Handler | None) -> None:
        """Hand the records logged before acceptance to `target` (None drops them)."""
        if self._log_buffer is None:
            return
        logging.getLogger("torchgpt").removeHandler(self._log_buffer)
        if target is not None:
            self._log_buffer.setTarget(target)
            self._log_buffer.flush()
        self._log_buffer.close()
        self._log_buffer = None

    # ---- one optimizer step -------------------------------------------------------------
    def train_step(self) -> tuple[float, float]:
        """One optimizer step: accumulate, clip, agree on loss/preemption, step. (loss, grad norm)."""
        self.timer.start()
        micro_batches = [next(self.data_iter) for _ in range(self.grad_accum)]
        self.timer.lap("data")
        loss_sum = self.module.forward_backward(micro_batches)
        self.timer.lap("forward_backward")
        grad_norm = self.module.clip_grad_norm()
        # One small all-reduce carries the global loss and any rank's preemption request, so every
        # rank agrees on both (a signal may reach the ranks during different steps).
        stats = torch.stack(
            [loss_sum, torch.tensor(float(self._preempt_requested), device=self.device)]
        )
        if dist.is_initialized():
            dist.all_reduce(stats)
        loss_val = stats[0].item() / self.world_size
        # Only the all-reduced flag may steer the loop: the handler can set _preempt_requested on
        # one rank after this all-reduce, and a rank acting on it alone would enter the checkpoint
        # collectives by itself and hang (checkpoint-helper fix, tests/integration/test_resume.py).
        self._preempt_agreed = stats[1].item() > 0
        gnorm = grad_norm.item()
        finite = math.isfinite(loss_val) and math.isfinite(gnorm)
        if not finite:
            step = self.train_state.step + 1
            if self.cfg.training.on_nonfinite == "error":
                raise NonFiniteLossError(
                    f"non-finite loss {loss_val} / grad norm {gnorm} at step {step}; lower "
                    "optimizer.lr, check the data, or set training.on_nonfinite=skip"
                )
            logger.warning("step %d: non-finite loss %s, skipping the update", step, loss_val)
        self.module.step(apply=finite)
        self.timer.lap("optimizer")
        return loss_val, gnorm

    # ---- validation ---------------------------------------------------------------------
    def validate(self) -> float:
        """Mean token cross-entropy over the fixed validation batches of all ranks."""
        return self.module.eval_loss(self.val_batches)

    # ---- the loop -----------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT: finish the step, checkpoint, exit 0. Second: exit at once.

        A repeat within 5 s counts as the same request: Slurm signals every process of the job
        and torchrun forwards its own copy to each worker about a millisecond later.
        """
        first_at: list[float] = []

        def handler(signum, frame):
            if self._preempt_requested:
                if time.monotonic() - first_at[0] < 5.0:
                    return
                logger.warning("second signal %d: exiting without a checkpoint", signum)
                os._exit(128 + signum)
            first_at.append(time.monotonic())
            self._preempt_requested = True
            logger.warning("signal %d: will checkpoint after the current step and exit", signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)

    def _log_step(self, loss: float, gnorm: float, t_log: float, tokens_since: int) -> None:
        st, elapsed = self.train_state, time.perf_counter() - t_log
        phases = self.timer.pop()
        tps = tokens_since / max(elapsed, 1e-9)
        tps_dev = tps / self.world_size
        record = {
            "step": st.step,
            "loss": loss,
            "grad_norm": gnorm,
            "lr": self.module.lr_scheduler.get_last_lr()[0],
            "tokens_seen": st.tokens_seen,
            "tokens_per_s": tps,
            "tokens_per_s_per_device": tps_dev,
            "tflops_per_device": tps_dev * self.flops_per_token / 1e12,
            "step_time_s": elapsed / max(self._steps_since_log, 1),
            "data_share": phases.get("data", 0.0) / max(elapsed, 1e-9),
            "peak_memory_gib": peak_memory_gib(self.device),
        }
        for k, v in phases.items():
            record[f"time_{k}_s"] = v / max(self._steps_since_log, 1)
        mfu = ""
        if self.peak_tflops:
            record["mfu"] = record["tflops_per_device"] / self.peak_tflops
            mfu = f"  mfu {100 * record['mfu']:.1f}%"
        remaining = (self.cfg.training.steps - st.step) * record["step_time_s"]
        self.metrics.log(
            record,
            console=(
                f"step {st.step:>6}/{self.cfg.training.steps}  loss {loss:.4f}  "
                f"gnorm {gnorm:.3f}  lr {record['lr']:.2e}  tok/s {tps:,.0f}{mfu}  "
                f"mem {record['peak_memory_gib']:.2f}GiB  data {100 * record['data_share']:.0f}%  "
                f"eta {remaining / 60:.1f}min"
            ),
        )

    def _maybe_validate(self, step: int, last_step: int, force: bool = False) -> float | None:
        v = self.cfg.validation
        if not v.enable or not (force or step % v.interval == 0 or step == last_step):
            return None
        val_loss = self.validate()
        self.metrics.log(
            {
                "step": step,
                "val_loss": val_loss,
                "val_ppl": math.exp(min(val_loss, 50.0)),
                "tokens_seen": self.train_state.tokens_seen,
            },
            console=f"step {step:>6}  val_loss {val_loss:.4f}  val_ppl {math.exp(min(val_loss, 50)):.2f}",
        )
        self.train_state.best_val_loss = min(self.train_state.best_val_loss, val_loss)
        return val_loss

    def _maybe_harness_eval(self, step: int, last_step: int) -> None:
        """Harness tasks on a fixed `eval.limit` subset, scored on rank 0 with a plain GPT.

        The full weights are gathered (a collective every rank joins), rank 0 rebuilds an
        unwrapped, uncompiled model from them and scores it; the other ranks wait at a barrier.
        """
        e = self.cfg.eval
        if not e.enable or not (step % e.interval == 0 or step == last_step):
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from torchgpt.eval import run_harness_eval
        from torchgpt.eval.loading import build_model_from_state_dict

        sd = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.rank == 0:
            model = build_model_from_state_dict(asdict(self.model_args), sd, self.run_dir)
            t0 = time.perf_counter()
            result = run_harness_eval(
                model, tasks=e.tasks, limit=e.limit, data_dir=e.data_dir or None
            )
            record = {"step": step, "tokens_seen": self.train_state.tokens_seen}
            for task, scores in result["tasks"].items():
                for metric in ("acc", "acc_norm"):
                    if scores.get(metric) is not None:
                        record[f"eval/{task}/{metric}"] = scores[metric]
            self.metrics.log(
                record,
                console=f"step {step:>6}  harness (limit {e.limit}, "
                f"{time.perf_counter() - t0:.0f}s): "
                + "  ".join(f"{k[5:]} {v:.3f}" for k, v in record.items() if k.startswith("eval/")),
            )
        if dist.is_initialized():
            dist.barrier()

    def train(self) -> Path | None:
        """Run to training.steps (or until preempted). Returns the final checkpoint path, if any."""
        cfg, st = self.cfg, self.train_state
        c = cfg.checkpoint
        try:
            resumed = self.checkpointer.load(
                resume=c.resume, load_step=c.load_step, load_path=c.load_path
            )
        except ValueError as e:  # the chosen checkpoint does not fit this config: refused
            raise ConfigError([str(e)]) from e
        self._open_run_files()
        if resumed is not None:
            logger.info("resumed from step %d (%s tokens seen)", st.step, f"{st.tokens_seen:,}")
        self._install_signal_handlers()
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
                ckpt_path = self.checkpointer.save(
                    st.step, val_loss=val_loss, force=self._preempt_agreed
                )
            if self._preempt_agreed:
                self.checkpointer.wait()
                logger.info(
                    "preempted: checkpoint of step %d saved to %s; exiting", st.step, ckpt_path
                )
                self._record_preemption(ckpt_path)
                return ckpt_path
        self.checkpointer.wait()
        self._export_model()
        return ckpt_path

    def _record_preemption(self, ckpt_path: Path | None) -> None:
        """RUN_DIR/preempted.json, which tells the launcher this signal ended in a saved
        checkpoint (exit 0, requeue); it carries the launch's id so an old file never counts."""
        if self.rank != 0 or ckpt_path is None:
            return
        write_json_atomic(
            self.run_dir / PREEMPTED_NAME,
            {
                "launch_id": os.environ.get(LAUNCH_ID_ENV, ""),
                "step": self.train_state.step,
                "checkpoint": str(ckpt_path),
            },
        )

    def _export_model(self) -> None:
        """Model-only export (plain state dict, args, config) in checkpoint.export_dtype."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from torchgpt.checkpoint import save_model_only

        sd = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.rank == 0:
            dtype = getattr(torch, self.cfg.checkpoint.export_dtype)
            path = save_model_only(
                sd, asdict(self.model_args), self.cfg.to_dict(), self.run_dir / "model.pt", dtype
            )
            logger.info("exported the final model to %s", path)

    def close(self) -> None:
        """Flush and close the run files; restore the signal handlers train() replaced.

        The handler closes over this Trainer: left installed, it would keep the model, its
        meshes and the process groups alive into interpreter shutdown (see main()).
        """
        for sig, previous in self._previous_handlers.items():
            signal.signal(sig, previous)
        self._previous_handlers.clear()
        if self.metrics is not None:
            self.metrics.close()
        self._flush_log_buffer(None)
        if self._log_file is not None:
            logging.getLogger("torchgpt").removeHandler(self._log_file)
            self._log_file.close()
            self._log_file = None


def _init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type() == "cuda" else "gloo")


def _report_failure(error: BaseException, cfg: JobConfig, trainer: Trainer | None) -> None:
    """One line on the console; the traceback in RUN_DIR/train.log (and here if TORCHGPT_DEBUG)."""
    rank = int(os.environ.get("RANK", "0"))
    step = trainer.train_state.step + 1 if trainer is not None else None
    where = f"step {step}" if step else "setup"
    message = " ".join(str(error).split()) or "(no message)"
    log_path = cfg.run_dir / "train.log"
    tb = traceback.format_exc()
    try:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"rank {rank} failed at {where}:\n{tb}")
    except OSError:
        log_path = None
    print(
        f"error: rank {rank} at {where}: {type(error).__name__}: {message}"
        + (f" (traceback in {log_path})" if log_path else ""),
        file=sys.stderr,
    )
    if os.environ.get("TORCHGPT_DEBUG", "") not in ("", "0"):
        print(tb, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit codes: 0 done (or preempted after a checkpoint), 2 refused, 1 failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m torchgpt.train CONFIG.toml [--section.key value ...]\n")
        print(help_text())
        return 0 if argv else 2
    toml_path, overrides = (None, argv) if argv[0].startswith("--") else (argv[0], argv[1:])
    if "--help" in overrides or "-h" in overrides:
        print(help_text())
        return 0
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        cfg = preflight(toml_path, overrides, world_size=world_size)
    except ConfigError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        tune_host_malloc()  # CPU runs: reuse freed activation blocks (see hardware.py)
    trainer = None
    try:
        _init_distributed()
        trainer = Trainer(cfg)
        trainer.train()
    except ConfigError as e:  # found by the workers (e.g. a checkpoint of another model)
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        _report_failure(e, cfg, trainer)
        # No destroy_process_group: a peer may still sit in a collective, and tearing the
        # group down under it can block; the process exits and torchrun stops the others.
        if trainer is not None:
            trainer.close()
        return 1
    trainer.close()
    # Free the Trainer (model, meshes, checkpoint group) before destroying the process groups,
    # so that their gloo/NCCL worker threads are joined here. Left to interpreter shutdown,
    # those native threads raced finalization and a finished worker sometimes died of SIGABRT.
    del trainer
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _exit_without_finalization(code: int) -> None:
    """Flush everything, then end the worker process without interpreter finalization.

    destroy_process_group() does not stop every native thread: torch's DTensor sharding caches
    keep DTensorSpecs -> DeviceMesh -> its ProcessGroups alive, so gloo's run-loop threads of
    the FSDP mesh outlive main(). Joined only during interpreter finalization, they race its
    teardown of the GIL, and a worker that had finished every step sometimes died of SIGABRT
    (torchrun then reported the whole job failed). Nothing of ours is left to finalize here.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_without_finalization(main())
