"""Builds a validated JobConfig from a TOML file and `--section.key value` overrides.

Owns parsing, type coercion, `--help`, and `validate()`, which collects every problem and raises
one `ConfigError`. Field docs come from the attribute docstrings in torchgpt/config/job_config.py.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from torchgpt.config.batch import batch_problem
from torchgpt.config.job_config import ConfigError, JobConfig
from torchgpt.config.tp_checks import tp_problems

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_UNIONS = (types.UnionType, typing.Union)


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(JobConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(JobConfig)}


def _field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def field_docs(section_cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right after each field) of a config dataclass."""
    tree = ast.parse(inspect.getsource(section_cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in _UNIONS:  # bool | None: None is "unset", not a value to give
        return "|".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{typing.get_args(tp)[0].__name__}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a TOML or CLI value to the field's type; raise ValueError with the key on failure."""
    origin = typing.get_origin(tp)
    if origin in _UNIONS:  # e.g. int | Literal["auto"]: a named choice, else the type
        members = typing.get_args(tp)
        for member in members:
            if typing.get_origin(member) is Literal and value in typing.get_args(member):
                return value
        plain = [m for m in members if typing.get_origin(m) is not Literal and m is not type(None)]
        named = [repr(c) for m in members if typing.get_origin(m) is Literal for c in m.__args__]
        try:
            return _coerce(value, plain[0], key)
        except ValueError:
            if not named:  # X | None: the error of X as it is
                raise
            kind = {int: "an integer", float: "a number"}.get(plain[0], plain[0].__name__)
            raise ValueError(
                f"{key}: expected {kind} or {' / '.join(named)}, got {value!r}"
            ) from None
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        (elem,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list of {elem.__name__}, got {value!r}")
        return [_coerce(v, elem, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(str(value).replace("_", ""))
        except ValueError:
            raise ValueError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {tp} for {key}")


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s, cls in _sections().items() for k in _field_types(cls)]


def _apply(cfg: JobConfig, key: str, value: Any, problems: list[str], origin: str) -> None:
    sections = _sections()
    section, _, name = key.partition(".")
    if section not in sections or not name:
        problems.append(f"{origin}: unknown key '{key}'{_suggest(key, _all_keys())}")
        return
    types_ = _field_types(sections[section])
    if name not in types_:
        problems.append(f"{origin}: unknown key '{key}'{_suggest(key, _all_keys())}")
        return
    try:
        setattr(getattr(cfg, section), name, _coerce(value, types_[name], key))
    except ValueError as e:
        problems.append(f"{origin}: {e}")


def parse_cli_overrides(args: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Split `--a.b v`, `--a.b=v` into (key, value) pairs; return (pairs, problems)."""
    pairs: list[tuple[str, str]] = []
    problems: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            problems.append(
                f"command line: unexpected argument '{arg}' (expected --section.key value)"
            )
            i += 1
            continue
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args):
            value = args[i + 1]
            i += 2
        else:
            problems.append(f"command line: '--{key}' has no value")
            i += 1
            continue
        pairs.append((key, value))
    return pairs, problems


def load_config(
    toml_path: str | Path | None,
    overrides: list[str] | None = None,
    *,
    world_size: int | None = None,
) -> JobConfig:
    """Defaults, then the TOML file, then CLI overrides; validated. Raises ConfigError."""
    cfg = JobConfig()
    problems: list[str] = []
    if toml_path is not None:
        path = Path(toml_path)
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError([f"config file '{path}' does not exist"]) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError([f"config file '{path}' is not valid TOML: {e}"]) from None
        for section, body in data.items():
            if not isinstance(body, dict):
                _apply(cfg, section, body, problems, str(path))
                continue
            for name, value in body.items():
                _apply(cfg, f"{section}.{name}", value, problems, str(path))
    pairs, cli_problems = parse_cli_overrides(overrides or [])
    problems += cli_problems
    for key, value in pairs:
        _apply(cfg, key, value, problems, "command line")
    problems += validate(cfg, world_size=world_size)
    if problems:
        raise ConfigError(problems)
    return cfg


def validate(cfg: JobConfig, *, world_size: int | None = None) -> list[str]:
    """Every out-of-range or inconsistent value; batch arithmetic too when world_size is given."""
    from torchgpt.model.args import FLAVORS
    from torchgpt.optim import registry as optimizers
    from torchgpt.step import spec as models

    p: list[str] = []
    t, o, s, par = cfg.training, cfg.optimizer, cfg.lr_scheduler, cfg.parallelism
    for key, value, known in [
        ("model.name", cfg.model.name, models.available()),
        ("optimizer.name", o.name, optimizers.available()),
    ]:
        if value not in known:
            p.append(f"{key}: unknown '{value}'{_suggest(value, known)}; known: {', '.join(known)}")
    if cfg.model.flavor not in FLAVORS:
        p.append(
            f"model.flavor: unknown flavor '{cfg.model.flavor}'"
            f"{_suggest(cfg.model.flavor, list(FLAVORS))}; known: {', '.join(FLAVORS)}"
        )
    elif t.seq_len > FLAVORS[cfg.model.flavor].max_seq_len:
        p.append(
            f"training.seq_len: {t.seq_len} exceeds the context of flavor '{cfg.model.flavor}' "
            f"({FLAVORS[cfg.model.flavor].max_seq_len})"
        )
    if cfg.model.logit_softcap is not None and not cfg.model.logit_softcap >= 0:
        p.append(f"model.logit_softcap: must be >= 0 (0 = off), got {cfg.model.logit_softcap}")
    for key, value in [
        ("training.steps", t.steps),
        ("training.global_batch_tokens", t.global_batch_tokens),
        ("training.micro_batch_size", t.micro_batch_size),
        ("training.seq_len", t.seq_len),
        ("checkpoint.interval", cfg.checkpoint.interval),
        ("validation.interval", cfg.validation.interval),
        ("validation.tokens", cfg.validation.tokens),
        ("metrics.log_freq", cfg.metrics.log_freq),
        ("eval.interval", cfg.eval.interval),
    ]:
        if value != "auto" and value <= 0:
            p.append(f"{key}: must be > 0, got {value}")
    if not o.lr > 0:
        p.append(f"optimizer.lr: must be > 0, got {o.lr}")
    for key, value in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)]:
        if not 0.0 <= value < 1.0:
            p.append(f"{key}: must be in [0, 1), got {value}")
    if not o.muon_lr > 0 or not 0.0 <= o.muon_momentum < 1.0 or o.muon_weight_decay < 0:
        p.append(
            f"optimizer: muon_lr={o.muon_lr} must be > 0, muon_momentum={o.muon_momentum} in "
            f"[0, 1), muon_weight_decay={o.muon_weight_decay} >= 0"
        )
    if not 1 <= o.muon_ns_steps < 100:
        p.append(f"optimizer.muon_ns_steps: {o.muon_ns_steps} must be in [1, 100)")
    pr = cfg.profiling
    if t.gc_freq < 0 or min(pr.wait, pr.warmup, pr.repeat) < 0 or pr.active < 1:
        p.append(
            f"training.gc_freq={t.gc_freq} and profiling.wait / warmup / repeat "
            f"({pr.wait} / {pr.warmup} / {pr.repeat}) must be >= 0, profiling.active "
            f"({pr.active}) >= 1"
        )
    if t.spike_zscore < 0 or not 2 <= t.spike_min_steps <= t.spike_window or t.spike_max_skips < 1:
        p.append(
            f"training: spike_zscore={t.spike_zscore:g} must be >= 0 (0 = off), spike_min_steps="
            f"{t.spike_min_steps} in [2, spike_window={t.spike_window}], spike_max_skips="
            f"{t.spike_max_skips} >= 1"
        )
    if (
        pr.memory_snapshot_steps < 1
        or pr.memory_snapshot_entries < 1
        or (pr.flight_recorder_entries < 1)
    ):
        p.append(
            f"profiling: memory_snapshot_steps={pr.memory_snapshot_steps}, "
            f"memory_snapshot_entries={pr.memory_snapshot_entries} and flight_recorder_entries="
            f"{pr.flight_recorder_entries} must be >= 1"
        )
    if t.device_memory_gib < 0:
        p.append(
            f"training.device_memory_gib: must be >= 0 (0 = detect), got {t.device_memory_gib}"
        )
    if o.weight_decay < 0 or o.eps <= 0:
        p.append("optimizer.weight_decay must be >= 0 and optimizer.eps > 0")
    if not 0.0 <= s.min_lr_ratio <= 1.0:
        p.append(f"lr_scheduler.min_lr_ratio: must be in [0, 1], got {s.min_lr_ratio}")
    if s.decay_type == "wsd":
        from torchgpt.optim.lr_schedule import wsd_decay_steps

        decay = wsd_decay_steps(s.decay_steps, s.decay_fraction, t.steps)
        if (
            not 0 < s.decay_fraction <= 1
            or s.decay_steps < 0
            or not (1 <= decay <= t.steps - s.warmup_steps)
        ):
            p.append(
                f"lr_scheduler: wsd decays over {decay} steps (decay_steps={s.decay_steps}, "
                f"decay_fraction={s.decay_fraction:g} of training.steps={t.steps}); it must be "
                f"1 to training.steps - warmup_steps = {t.steps - s.warmup_steps}"
            )
    if s.warmup_steps < 0 or s.warmup_steps > t.steps:
        p.append(
            f"lr_scheduler.warmup_steps: {s.warmup_steps} must be in [0, training.steps={t.steps}]"
        )
    ac = cfg.activation_checkpoint
    if ac.selective_option != "op" and not (
        ac.selective_option.isdigit() and int(ac.selective_option) > 0
    ):
        p.append(
            f"activation_checkpoint.selective_option: '{ac.selective_option}' must be 'op' "
            "or a positive integer N (checkpoint every Nth block)"
        )
    if cfg.checkpoint.keep_latest_k < 0:
        p.append(f"checkpoint.keep_latest_k: must be >= 0, got {cfg.checkpoint.keep_latest_k}")
    if par.dp_replicate < 1 or (par.dp_shard < 1 and par.dp_shard != -1):
        p.append(
            f"parallelism: dp_replicate={par.dp_replicate} must be >= 1 and "
            f"dp_shard={par.dp_shard} must be >= 1 or -1 (infer)"
        )
    p += tp_problems(cfg)
    if world_size is not None and not p:
        p += _validate_layout(cfg, world_size)
    return p


def _validate_layout(cfg: JobConfig, world_size: int) -> list[str]:
    from torchgpt.parallel.dims import ParallelDims

    par, t = cfg.parallelism, cfg.training
    try:
        dims = ParallelDims.from_config(par, world_size)
    except ValueError as e:
        return [str(e)]
    # "auto" is chosen at start among the micro-batches that divide the batch; 1 always must.
    micro = 1 if t.micro_batch_size == "auto" else t.micro_batch_size
    problem = batch_problem(t.global_batch_tokens, micro, t.seq_len, dims.dp_degree)
    return [problem] if problem else []


def help_text() -> str:
    """Every key with its type, default and doc, grouped by section."""
    defaults = JobConfig()
    lines = ["Config keys (set in the TOML file or override as --section.key value):", ""]
    for section, cls in _sections().items():
        lines.append(f"[{section}]")
        docs = field_docs(cls)
        for name, tp in _field_types(cls).items():
            default = getattr(getattr(defaults, section), name)
            lines.append(f"  --{section}.{name}  ({_type_name(tp)}, default {json.dumps(default)})")
            if name in docs:
                lines.append(f"      {docs[name]}")
        lines.append("")
    return "\n".join(lines)


def dump_config(cfg: JobConfig, path: Path) -> None:
    """Write the resolved config as TOML-compatible JSON (atomic: temp name then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    tmp.replace(path)
