"""Launch checks that need no process group: the config, the data folder, the resume target.

`preflight(toml, overrides, world_size)` returns the resolved JobConfig or raises one
`ConfigError` listing every problem it found, so a mistake is reported in one message (exit 2)
before torchrun starts a single worker, and nothing is written to the run folder.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, fields
from pathlib import Path

from torchgpt.config.job_config import ConfigError, JobConfig
from torchgpt.config.manager import load_config

logger = logging.getLogger("torchgpt")


def check_data(
    cfg: JobConfig, *, checksums: bool = False, world_size: int | None = None
) -> list[str]:
    """Problems with `data.dataset_path`: manifest, shards, tokenizer, room for one window, the
    val split against validation.tokens and the train split against one step (for this
    launch's data-parallel degree, when world_size is known), and (with `checksums` and
    data.verify_checksums) each shard's sha256 against the manifest."""
    from torchgpt.data.loader import open_split
    from torchgpt.model.args import get_model_args

    vocab_size = get_model_args(cfg.model.flavor).vocab_size
    key, t = "data.dataset_path", cfg.training
    splits = ["train", "val"] if cfg.validation.enable else ["train"]
    problems = []
    for split in splits:
        try:
            _, sizes, _ = open_split(cfg.data.dataset_path, split, vocab_size=vocab_size)
        except ValueError as e:
            problems.append(f"{key}: {e}")
            if "does not exist" in str(e) or "manifest" in str(e):
                break  # the next split would repeat the same missing-folder message
            continue
        if checksums and cfg.data.verify_checksums:
            problems += verify_shard_checksums(cfg.data.dataset_path, split)
        if split == "train" and max(sizes) < t.seq_len + 1:
            problems.append(
                f"{key}: training.seq_len={t.seq_len} needs {t.seq_len + 1} tokens per window "
                f"but the largest train shard of {cfg.data.dataset_path} holds {max(sizes)}; "
                "lower training.seq_len or prepare the data with a larger --shard-size"
            )
            continue
        problems += check_split_size(cfg, split, sizes, world_size)
    return problems


def check_split_size(
    cfg: JobConfig, split: str, shard_tokens: list[int], world_size: int | None
) -> list[str]:
    """The windows a split holds (cut as the loader cuts them: (n - 1) // seq_len per shard)
    against what the run reads from it: val, validation.tokens as build_val_batches rounds it
    for this layout; train, one optimizer step (global_batch_tokens)."""
    from torchgpt.parallel.dims import ParallelDims

    t, v, data = cfg.training, cfg.validation, cfg.data.dataset_path
    windows = sum(max((n - 1) // t.seq_len, 0) for n in shard_tokens)
    dp = ParallelDims.from_config(cfg.parallelism, world_size).dp_degree if world_size else 1
    held = f"the {split} split of {data} holds {windows:,} windows of {t.seq_len + 1} tokens"
    if split == "train":
        need = t.global_batch_tokens // t.seq_len
        if windows >= need:
            return []
        return [
            f"data.dataset_path: {held} but one optimizer step reads {need:,} "
            f"(training.global_batch_tokens={t.global_batch_tokens} / seq_len {t.seq_len}); "
            "prepare more data (tools/prepare_data.py --max-tokens) or lower "
            "training.global_batch_tokens"
        ]
    mb = v.micro_batch_size or t.micro_batch_size
    if mb == "auto":  # chosen at start: the bound below holds for any micro-batch
        need, per_batch = v.tokens // t.seq_len, t.seq_len * dp
        layout = f"{dp} data-parallel rank(s), micro-batch auto"
    else:
        per_batch = t.seq_len * mb * dp
        need = (v.tokens // per_batch) * mb * dp
        layout = f"{dp} data-parallel rank(s) x micro-batch {mb}"
    if v.tokens < per_batch:
        return [
            f"validation.tokens: {v.tokens} is less than one validation micro-batch per rank "
            f"({per_batch} tokens at {layout}, seq_len {t.seq_len}); raise it to at least "
            f"{per_batch}"
        ]
    if windows >= need:
        return []
    fits = windows // (per_batch // t.seq_len) * per_batch
    return [
        f"validation.tokens: {v.tokens:,} needs {need:,} windows at {layout} but {held} "
        f"({windows * t.seq_len:,} tokens); lower validation.tokens to at most {fits:,} (a "
        f"multiple of {per_batch:,}), or prepare the data with a larger --val-fraction / "
        "--val-tokens"
    ]


def verify_shard_checksums(data_dir: str, split: str) -> list[str]:
    """Hash every shard of `split` and compare with manifest.json, with progress and its cost.

    A byte flipped inside a shard keeps its header and size intact, so only the hash finds it.
    """
    import time

    from torchgpt.data.shards import file_sha256, read_manifest, split_shards
    from torchgpt.utils.progress import Progress

    entries = split_shards(read_manifest(data_dir), split)
    paths = [Path(data_dir) / e["file"] for e in entries]
    total = sum(p.stat().st_size for p in paths)
    big = total >= 1 << 28  # a bar and a cost line only where it takes noticeable time
    progress = Progress(total >> 20, f"verifying {split} shard checksums (MiB)", disable=not big)
    start, problems = time.perf_counter(), []
    for path, entry in zip(paths, entries, strict=True):
        if file_sha256(path, on_chunk=lambda n: progress.update(n >> 20)) != entry["sha256"]:
            problems.append(
                f"data.dataset_path: shard {path} does not match its sha256 in manifest.json "
                f"(corrupt or changed since it was written); run tools/prepare_data.py --verify "
                f"{data_dir}, then re-create the data (or set data.verify_checksums=false)"
            )
    progress.close()
    if big:
        seconds = time.perf_counter() - start
        print(f"verified {total / 2**30:.2f} GiB of {split} shards in {seconds:.1f} s", flush=True)
    return problems


def _resume_target(cfg: JobConfig) -> tuple[Path | None, str]:
    """The checkpoint folder this launch would load (None: starts fresh) and the key choosing it."""
    from torchgpt.checkpoint import layout

    c, ckpt_dir = cfg.checkpoint, cfg.run_dir / "checkpoints"
    if c.load_path:
        return Path(c.load_path), "checkpoint.load_path"
    if c.load_step >= 0:
        return layout.step_dir(ckpt_dir, c.load_step), f"checkpoint.load_step={c.load_step}"
    if c.resume == "none" or not c.enable:
        return None, ""
    complete = layout.scan(ckpt_dir).complete
    return (complete[-1][1], "checkpoint.resume=auto") if complete else (None, "")


# Keys whose change alters what a resumed run computes (model.* is checked through the model
# args, the data through its fingerprint in the loader's state). Layout keys (micro-batch,
# parallelism, AC, compile) and bookkeeping keys may change freely.
MATH_KEYS = (
    "job.seed",
    "training.global_batch_tokens",
    "training.seq_len",
    "training.steps",
    "training.mixed_precision",
    "training.max_norm",
    "optimizer.lr",
    "optimizer.beta1",
    "optimizer.beta2",
    "optimizer.eps",
    "optimizer.weight_decay",
    "optimizer.name",
    "optimizer.muon_lr",
    "optimizer.muon_momentum",
    "optimizer.muon_weight_decay",
    "optimizer.muon_ns_steps",
    "optimizer.muon_adjust_lr",
    "lr_scheduler.warmup_steps",
    "lr_scheduler.decay_type",
    "lr_scheduler.min_lr_ratio",
    "lr_scheduler.decay_fraction",
    "lr_scheduler.decay_steps",
    "lr_scheduler.wsd_shape",
)


def saved_config(cfg: JobConfig) -> dict:
    """The job config saved with the checkpoint this launch would resume ({} if fresh)."""
    from torchgpt.checkpoint import layout

    path, _ = _resume_target(cfg)
    return layout.saved_config(path) if path is not None and path.is_dir() else {}


def resume_changes(cfg: JobConfig) -> tuple[list[str], list[str]]:
    """(refused, allowed) changes of MATH_KEYS against the checkpoint this launch resumes,
    each as "key: saved -> now"; both empty when it starts fresh."""
    saved = saved_config(cfg)
    if not saved:
        return [], []
    ours = cfg.to_dict()
    refused, allowed = [], []
    for key in MATH_KEYS:
        section, name = key.split(".")
        before, now = (saved.get(section) or {}).get(name), ours[section][name]
        if now == "auto":  # training.mixed_precision: the Trainer compares it once resolved
            continue
        if before is not None and before != now:
            change = f"{key}: {before!r} -> {now!r}"
            (allowed if key in cfg.checkpoint.allow_change else refused).append(change)
    return refused, allowed


def _refusal(key: str, path: Path, refused: list[str]) -> str:
    return (
        f"{key}: resuming {path} with a config that changes the math: "
        + "; ".join(refused)
        + ". Restore those keys, allow the change with --checkpoint.allow_change "
        + ",".join(c.split(":")[0] for c in refused)
        + ", or start a new run with another job.name"
    )


def accepted_resume_changes(cfg: JobConfig) -> list[str]:
    """The Trainer's check, once "auto" values are resolved and the checkpoint has loaded: raise
    ConfigError on a refused change (as preflight does), log and return the allowed ones."""
    refused, allowed = resume_changes(cfg)
    if refused:
        path, key = _resume_target(cfg)
        raise ConfigError([_refusal(key, path, refused)])
    for change in allowed:
        logger.warning("resuming with a changed config (checkpoint.allow_change): %s", change)
    return allowed


def check_resume(cfg: JobConfig) -> list[str]:
    """The checkpoint to resume must exist and hold the same model as this config builds.

    Cheap by design: reads only checkpoint_info.json; the shapes of every tensor are checked
    again against DCP's metadata when the workers load it.
    """
    from torchgpt.checkpoint import layout
    from torchgpt.model.args import ModelArgs
    from torchgpt.step.spec import train_spec

    problems = [
        f"checkpoint.allow_change: {key!r} is not a key whose change is checked; choose from "
        f"{', '.join(MATH_KEYS)}"
        for key in cfg.checkpoint.allow_change
        if key not in MATH_KEYS
    ]
    path, key = _resume_target(cfg)
    if path is None:
        return problems
    if key != "checkpoint.resume=auto":
        problem = layout.explicit_problem(path, cfg.run_dir / "checkpoints")
        if problem is not None:
            return [*problems, f"{key}: {problem}"]
    refused, _ = resume_changes(cfg)
    if refused:
        problems.append(_refusal(key, path, refused))
    info = layout.read_json(path / layout.INFO_NAME) or {}
    saved = info.get("extra", {}).get("model_args")
    if not saved:
        return problems  # an older checkpoint without args: the workers' shape check decides
    ours = asdict(train_spec(cfg.model.name).model_args(cfg.model))  # what the run will build
    # A field added after the checkpoint was saved reads as its default (e.g. qkv_layout).
    defaults = {f.name: f.default for f in fields(ModelArgs)}
    saved = {**defaults, **saved}
    diff = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in ours.items() if saved.get(k) != v]
    if diff:
        flavor = info.get("extra", {}).get("config", {}).get("model", {}).get("flavor", "?")
        problems.append(
            f"{key}: {path} holds a model of flavor {flavor!r} but this config builds "
            f"{cfg.model.flavor!r} ({'; '.join(diff)}); resume with the original model.* "
            "keys, or start a new run with another job.name"
        )
    return problems


def preflight(
    toml_path: str | Path | None,
    overrides: list[str],
    *,
    world_size: int | None,
    checksums: bool = False,
) -> JobConfig:
    """Load and validate the config, then check data (shard hashes too with `checksums`) and
    resume; raises one ConfigError listing every problem."""
    cfg = load_config(toml_path, overrides, world_size=world_size)
    problems = check_data(cfg, checksums=checksums, world_size=world_size) + check_resume(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def format_problems(error: ConfigError) -> str:
    """The message a launcher prints for a refused launch."""
    return f"error: {error}\nnothing was started (exit code 2)"
