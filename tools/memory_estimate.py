#!/usr/bin/env python
"""Estimate per-GPU memory, MFU-based speed and time-to-train of a config before renting GPUs.

usage:
  python tools/memory_estimate.py CONFIG.toml [--section.key value ...] --gpu GPU [--nproc N]
      [--tp T] [--gpu-memory-gib G --gpu-tflops T] [--mfu 0.4] [--usd-per-gpu-hour 2.5] [--no-trace]
      [--json]
      [--chinchilla-flops C | --chinchilla-params N]
  python tools/memory_estimate.py --chinchilla-flops 1e19      (Chinchilla table only)

Memory is estimated twice: by formula from the model args, and by tracing one real training
step (the trainer's TrainModule) under FakeTensorMode with a fake process group of N ranks,
which allocates no real memory. "auto" micro-batch / activation checkpointing is resolved as the
trainer resolves it at start (torchgpt/estimation/autosize.py) and printed. --gpu-memory-gib /
--gpu-tflops describe a GPU that is not in the table (or change one that is). Exit code 0 when
the config fits, 3 when it does not, 2 on a config, layout or GPU error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from torchgpt.estimation.chinchilla import chinchilla_table  # noqa: E402
from torchgpt.estimation.report import build_estimate, chinchilla_lines, render_text, to_json  # noqa: E402
from torchgpt.utils.hardware import GPUS, GPUSpec, get_gpu  # noqa: E402

EXIT_DOES_NOT_FIT = 3


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(tool arguments, config overrides): every `--section.key[=value]` is an override."""
    tool, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key = arg[2:].split("=", 1)[0]
        if arg.startswith("--") and "." in key:
            overrides.append(arg)
            if "=" not in arg and i + 1 < len(argv):
                overrides.append(argv[i + 1])
                i += 1
        else:
            tool.append(arg)
        i += 1
    return tool, overrides


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Any --section.key value pair overrides the config, as in torchgpt.train.",
    )
    p.add_argument("config", nargs="?", help="training config TOML (e.g. train_configs/...)")
    p.add_argument("--gpu", help=f"GPU type, one of: {', '.join(GPUS)}")
    p.add_argument("--gpu-memory-gib", type=float, help="memory of another GPU (with --gpu-tflops)")
    p.add_argument("--gpu-tflops", type=float, help="dense bf16 TFLOP/s of another GPU")
    p.add_argument("--nproc", type=int, default=1, help="GPUs (= processes) of the job")
    p.add_argument(
        "--tp",
        type=int,
        help="tensor-parallel degree: --parallelism.tp T, with --model.qkv_layout per_head "
        "(which tp needs; memory does not depend on it)",
    )
    p.add_argument("--mfu", type=float, help="assumed MFU in (0, 1]; default per GPU type")
    p.add_argument("--usd-per-gpu-hour", type=float, help="price, adds a cost line")
    p.add_argument("--no-trace", action="store_true", help="analytic memory only (instant)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--chinchilla-flops", type=float, help="compute budget for the table")
    p.add_argument("--chinchilla-params", type=float, help="parameter count for the table")
    return p


def _gpu(args: argparse.Namespace) -> str | GPUSpec:
    """A table key, or a GPUSpec from --gpu-memory-gib / --gpu-tflops (on top of --gpu)."""
    custom = (args.gpu_memory_gib, args.gpu_tflops)
    if custom == (None, None):
        if args.gpu is None:
            raise ValueError(
                f"--gpu is required; known: {', '.join(GPUS)} (or describe another GPU with "
                "--gpu-memory-gib and --gpu-tflops)"
            )
        return args.gpu
    base = get_gpu(args.gpu) if args.gpu else None
    memory = (
        args.gpu_memory_gib
        if args.gpu_memory_gib is not None
        else getattr(base, "memory_gib", None)
    )
    tflops = args.gpu_tflops if args.gpu_tflops is not None else getattr(base, "bf16_tflops", None)
    if memory is None or tflops is None:
        raise ValueError("another GPU needs both --gpu-memory-gib and --gpu-tflops")
    if memory <= 0 or tflops <= 0:
        raise ValueError("--gpu-memory-gib and --gpu-tflops must be > 0")
    name = f"{base.name if base else 'GPU'} ({memory:g} GiB, {tflops:g} bf16 TFLOP/s)"
    return GPUSpec(name, tflops, memory, "given on the command line")


def _chinchilla_only(args: argparse.Namespace) -> int:
    flops, rows = chinchilla_table(
        compute_flops=args.chinchilla_flops, num_params=args.chinchilla_params
    )
    if args.json:
        print(json.dumps({"compute_flops": flops, "rows": [r.__dict__ for r in rows]}, indent=2))
    else:
        print("\n".join(chinchilla_lines(flops, rows)))
    return 0


def run(argv: list[str]) -> int:
    tool_args, overrides = split_overrides(argv)
    args = build_parser().parse_args(tool_args)
    if args.chinchilla_flops is not None and args.chinchilla_params is not None:
        raise ValueError("give --chinchilla-flops or --chinchilla-params, not both")
    if args.config is None:
        if args.chinchilla_flops is None and args.chinchilla_params is None:
            raise ValueError("CONFIG is required (or --chinchilla-flops / --chinchilla-params)")
        return _chinchilla_only(args)
    gpu = _gpu(args)
    if args.nproc < 1:
        raise ValueError(f"--nproc: {args.nproc} must be >= 1 (one process per GPU)")
    from torchgpt.config.manager import load_config
    from torchgpt.estimation.plan import TrainingPlan

    if args.tp is not None:
        overrides += [f"--parallelism.tp={args.tp}"]
        if args.tp > 1:
            overrides += ["--model.qkv_layout=per_head"]
    cfg = load_config(args.config, overrides, world_size=args.nproc)
    sizing = None
    if cfg.sizing_is_auto:  # as the trainer resolves it at start, for this GPU's memory
        from torchgpt.estimation.autosize import apply, resolve
        from torchgpt.estimation.speed import resolve_gpu

        memory = cfg.training.device_memory_gib or resolve_gpu(gpu)[1].memory_gib
        try:
            sizing = resolve(cfg, args.nproc, memory)
        except ValueError as e:
            print(f"DOES NOT FIT: {e}", file=sys.stderr)
            return EXIT_DOES_NOT_FIT
        apply(cfg, sizing)
    plan = TrainingPlan.from_config(cfg, args.nproc)
    est = build_estimate(
        plan,
        gpu,
        source=" ".join([args.config, *overrides]),
        trace=not args.no_trace,
        mfu=args.mfu,
        usd_per_gpu_hour=args.usd_per_gpu_hour,
        chinchilla_flops=args.chinchilla_flops,
        chinchilla_params=args.chinchilla_params,
        auto_sizing=sizing,
    )
    print(json.dumps(to_json(est), indent=2) if args.json else render_text(est))
    return 0 if est.verdict.fits else EXIT_DOES_NOT_FIT


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return run(list(sys.argv[1:] if argv is None else argv))
    except ValueError as e:  # ConfigError is a ValueError: config, layout, GPU, MFU mistakes
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
