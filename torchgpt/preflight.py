"""Launch checks that need no process group: the config, the data folder, the resume target.

`preflight(toml, overrides, world_size)` returns the resolved JobConfig or raises one
`ConfigError` listing every problem it found, so a mistake is reported in one message (exit 2)
before torchrun starts a single worker, and nothing is written to the run folder.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from torchgpt.config import ConfigError, JobConfig
from torchgpt.config_manager import load_config


def check_data(cfg: JobConfig) -> list[str]:
    """Problems with `data.dataset_path`: manifest, shards, tokenizer, room for one window."""
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
        if split == "train" and max(sizes) < t.seq_len + 1:
            problems.append(
                f"{key}: training.seq_len={t.seq_len} needs {t.seq_len + 1} tokens per window "
                f"but the largest train shard of {cfg.data.dataset_path} holds {max(sizes)}; "
                "lower training.seq_len or prepare the data with a larger --shard-size"
            )
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


def check_resume(cfg: JobConfig) -> list[str]:
    """The checkpoint to resume must exist and hold the same model as this config builds.

    Cheap by design: reads only checkpoint_info.json; the shapes of every tensor are checked
    again against DCP's metadata when the workers load it.
    """
    from torchgpt.checkpoint import layout
    from torchgpt.model.args import get_model_args

    path, key = _resume_target(cfg)
    if path is None:
        return []
    if key != "checkpoint.resume=auto":
        problem = layout.explicit_problem(path, cfg.run_dir / "checkpoints")
        if problem is not None:
            return [f"{key}: {problem}"]
    info = layout.read_json(path / layout.INFO_NAME) or {}
    saved = info.get("extra", {}).get("model_args")
    if not saved:
        return []  # an older checkpoint without args: the workers' shape check decides
    ours = asdict(get_model_args(cfg.model.flavor, qk_norm=cfg.model.qk_norm))
    diff = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in ours.items() if saved.get(k) != v]
    if not diff:
        return []
    flavor = info.get("extra", {}).get("config", {}).get("model", {}).get("flavor", "?")
    return [
        f"{key}: {path} holds a model of flavor {flavor!r} but this config builds "
        f"{cfg.model.flavor!r} ({'; '.join(diff)}); resume with the original model.* keys, or "
        "start a new run with another job.name"
    ]


def preflight(
    toml_path: str | Path | None, overrides: list[str], *, world_size: int | None
) -> JobConfig:
    """Load and validate the config, then check data and resume; raises one ConfigError."""
    cfg = load_config(toml_path, overrides, world_size=world_size)
    problems = check_data(cfg) + check_resume(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def format_problems(error: ConfigError) -> str:
    """The message a launcher prints for a refused launch."""
    return f"error: {error}\nnothing was started (exit code 2)"
