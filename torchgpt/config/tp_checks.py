"""The combinations tensor parallelism (parallelism.tp > 1) refuses at config time, each named
with its reason and the fix (torchgpt/config/manager.py collects them with every other problem).
"""

from __future__ import annotations

import dataclasses

from torchgpt.config.job_config import JobConfig


def tp_problems(cfg: JobConfig) -> list[str]:
    """What tensor parallelism (parallelism.tp > 1) cannot be combined with yet, each named."""
    from torchgpt.model.args import FLAVORS

    par = cfg.parallelism
    if par.tp < 1:
        return [f"parallelism.tp: must be >= 1, got {par.tp}"]
    if par.tp == 1:
        return []
    p = []
    if cfg.model.qkv_layout != "per_head":
        p.append(
            "parallelism.tp > 1 needs model.qkv_layout = 'per_head' (a column shard of the fused "
            "qkv weight must hold whole heads); set it for a new run"
        )
    if cfg.optimizer.name == "muon":
        p.append(
            "optimizer.name = 'muon' with parallelism.tp > 1: Muon's orthogonalisation needs "
            "each whole matrix, which tensor parallelism splits; use adamw or tp = 1"
        )
    flavor = FLAVORS.get(cfg.model.flavor)  # None: unknown, reported by validate()
    args = dataclasses.replace(flavor, **cfg.model.options()) if flavor else None

    def origin(key: str) -> str:  # set in the config, or the flavor's own value
        return "" if getattr(cfg.model, key) is not None else f" (flavor {cfg.model.flavor})"

    if args is not None and not args.tie_embeddings:
        p.append(
            f"model.tie_embeddings = false{origin('tie_embeddings')} with parallelism.tp > 1: "
            "the token table's gradient comes out whole on every tp rank (DTensor's embedding "
            "backward), not its shard; untested: set model.tie_embeddings = true or tp = 1"
        )
    for key in ("unet_skips", "value_embeds"):
        if args is not None and getattr(args, key):
            p.append(
                f"model.{key}{origin(key)} with parallelism.tp > 1: its weights are not in the "
                f"tensor-parallel plan; use tp = 1 (FSDP2 / HSDP) or turn model.{key} off"
            )
    if cfg.compile.enable and cfg.compile.whole_model:
        p.append(
            "compile.whole_model with parallelism.tp > 1 is untested (per-block compile is "
            "tested): set compile.whole_model = false"
        )
    if args is not None:
        p += _divisibility(args, par.tp)
    if par.tp_async and not cfg.compile.enable:
        p.append("parallelism.tp_async works through torch.compile: set compile.enable = true")
    if cfg.training.seq_len % par.tp:
        p.append(
            f"training.seq_len={cfg.training.seq_len} must be a multiple of parallelism.tp="
            f"{par.tp} (sequence parallelism splits it)"
        )
    return p


def _divisibility(args, tp: int) -> list[str]:
    """The model sizes tensor parallelism splits evenly (torchgpt.parallel.parallelize.apply_tp
    checks them again on the built model)."""
    p = []
    for name, value, what in [
        ("n_heads", args.n_heads, "attention heads"),
        ("hidden_dim", args.hidden_dim, "MLP hidden units"),
        ("padded_vocab_size", args.padded_vocab_size, "lm-head rows"),
    ]:
        if value % tp:
            fits = [k for k in range(2, value + 1) if value % k == 0][:4]
            p.append(
                f"parallelism.tp={tp} must divide the model's {what} ({name}={value}); "
                f"tp degrees that do: {', '.join(map(str, fits)) or 'none'}, or tp = 1 "
                "(FSDP2 alone shards the weights over every rank)"
            )
    return p
