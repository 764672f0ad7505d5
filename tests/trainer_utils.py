"""Run the real Trainer on a small config and read back its per-step metrics."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch.distributed as dist

from torchgpt.config.manager import load_config
from torchgpt.train import Trainer

# fp32, no compile, no AC, tiny debug model: every layout must give the same numbers.
BASE = [
    "--model.flavor",
    "debug",
    "--training.steps",
    "10",
    "--training.seq_len",
    "64",
    "--training.micro_batch_size",
    "2",
    "--training.global_batch_tokens",
    "512",
    "--training.mixed_precision",
    "fp32",
    "--training.max_norm",
    "0.5",
    "--optimizer.lr",
    "3e-3",
    "--lr_scheduler.warmup_steps",
    "2",
    "--activation_checkpoint.mode",
    "none",
    "--validation.enable",
    "false",
    "--checkpoint.enable",
    "false",
    "--metrics.log_freq",
    "1",
    "--metrics.enable_tensorboard",
    "false",
]


def launcher_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a run_train.sh launched by a test: this interpreter, named explicitly."""
    return {**os.environ, "PYTHON": sys.executable, **(extra or {})}


def train_in_process(toml: str | None, args: list[str]) -> Path:
    """Run the Trainer in this process on load_config(toml, args); returns RUN_DIR.

    The Trainer installs SIGTERM/SIGINT handlers; pytest's own are restored afterwards.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    cfg = load_config(toml, args, world_size=world)
    train_restoring_signals(Trainer(cfg), handlers)
    return cfg.run_dir


def train_restoring_signals(trainer: Trainer, handlers: dict | None = None) -> None:
    """trainer.train(), then close; the SIGTERM/SIGINT handlers it installs are put back to
    `handlers` (default: those in force now)."""
    if handlers is None:
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        trainer.train()
    finally:
        trainer.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def run_trainer(data_dir: str, dump_folder: str, overrides: list[str]) -> None:
    args = BASE + ["--data.dataset_path", data_dir, "--job.dump_folder", dump_folder] + overrides
    train_in_process(None, args)


def read_metrics(run_dir: Path, key: str = "loss") -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]
