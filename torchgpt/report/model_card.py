"""MODEL_CARD.md: architecture, size, data, tokenizer, hyper-parameters, compute, evaluation,
intended use, limitations and biases, all filled from the run's config, metrics and eval JSONs.
"""

from __future__ import annotations

from typing import Any

from torchgpt.report.data import ReportData, logged_step_seconds
from torchgpt.report.formatting import (
    benchmark_rows,
    checkpoint_label,
    fmt_float,
    fmt_int,
    run_file_links,
)

_HPARAMS = (
    ("training", ("steps", "global_batch_tokens", "micro_batch_size", "seq_len")),
    ("training", ("mixed_precision", "max_norm")),
    ("optimizer", ("lr", "beta1", "beta2", "eps", "weight_decay")),
    ("lr_scheduler", ("warmup_steps", "decay_type", "min_lr_ratio")),
    ("job", ("seed",)),
)


def _architecture(args: dict[str, Any]) -> list[str]:
    if not args:
        return ["- (no eval result holds the model args yet)"]
    desc = [
        f"- decoder-only transformer, {args.get('n_layers')} layers, width {args.get('dim')}, "
        f"{args.get('n_heads')} heads, context {fmt_int(args.get('max_seq_len'))} tokens",
        f"- {args.get('norm_type')} (pre-norm), {args.get('pos_embedding')} positions, "
        f"{args.get('mlp_type')} MLP, bias={args.get('bias')}, qk_norm={args.get('qk_norm')}, "
        f"tied embeddings={args.get('tie_embeddings')}",
        f"- vocabulary {fmt_int(args.get('vocab_size'))} (lm-head padded to a multiple of "
        f"{args.get('vocab_multiple')})",
    ]
    return desc


def _compute(data: ReportData) -> list[str]:
    train = data.train_points
    if not train:
        return ["- no training metrics found (metrics.jsonl)"]
    seconds = logged_step_seconds(train)
    last = train[-1]
    lines = [
        f"- steps: {fmt_int(last.get('step'))}; tokens seen: {fmt_int(last.get('tokens_seen'))}",
        f"- time in training steps (sum of logged step times): {seconds / 3600:.2f} h",
        f"- throughput at the last log: {fmt_int(round(last.get('tokens_per_s') or 0))} tokens/s",
    ]
    memory = [
        r["peak_memory_gib"] for r in train if isinstance(r.get("peak_memory_gib"), (int, float))
    ]
    if memory:
        lines.append(f"- peak memory per device: {max(memory):.2f} GiB")
    parallel = data.config.get("parallelism") or {}
    if parallel:
        lines.append("- parallelism: " + ", ".join(f"{k}={v}" for k, v in parallel.items()))
    if data.launches:
        launch = data.launches[-1]
        lines.append(
            f"- training machine: {machine_label(launch.get('host') or {})}, "
            f"{launch.get('world_size')} process(es) on {launch.get('device')}"
        )
    hw = (data.final or {}).get("hardware") or {}
    if hw:
        lines.append(f"- evaluation machine: {machine_label(hw)}")
    run_files = run_file_links(data)
    if run_files:
        lines.append("- training run files: " + ", ".join(run_files))
    return lines


def machine_label(host: dict[str, Any]) -> str:
    """'NVIDIA H100 x8 (host CPU ..., 96 CPUs)' or 'AMD EPYC (2 CPUs)'."""
    cpu = f"{host.get('cpu')} ({host.get('num_cpus')} CPUs)"
    if host.get("cuda"):
        return f"{host['cuda']} x{host.get('cuda_devices') or 1} (host CPU {cpu})"
    return cpu


def _data(data: ReportData) -> list[str]:
    path = (data.config.get("data") or {}).get("dataset_path", "-")
    lines = [f"- training data: `{path}` (token shards from tools/prepare_data.py)"]
    m = data.manifest or {}
    if m:
        tokens, docs = m.get("tokens") or {}, m.get("documents") or {}
        lines.append(
            f"- prepared tokens: train {fmt_int(tokens.get('train'))}, val "
            f"{fmt_int(tokens.get('val'))}; documents: train {fmt_int(docs.get('train'))}, val "
            f"{fmt_int(docs.get('val'))}"
        )
        if m.get("command"):
            lines.append(f"- prepared with: `{m['command']}`")
    lines.append(
        "- tokenizer: GPT-2 byte-level BPE (tiktoken `gpt2`, 50,257 tokens, <|endoftext|> = "
        "50256 between documents)"
    )
    return lines


def _hparams(config: dict[str, Any]) -> list[str]:
    lines = []
    for section, keys in _HPARAMS:
        values = config.get(section) or {}
        present = [f"{k}={values[k]}" for k in keys if k in values]
        if present:
            lines.append(f"- {section}: " + ", ".join(present))
    return lines or ["- (config.json not found)"]


def render_model_card(data: ReportData) -> str:
    final = data.final or {}
    flavor = (data.config.get("model") or {}).get("flavor", "-")
    lines = [
        f"# Model card: {data.name}",
        "",
        "## Model",
        "",
        f"- flavor `{flavor}`, {fmt_int(final.get('num_params'))} parameters "
        "(tied embedding counted once, unpadded vocabulary)",
        *_architecture(final.get("model_args") or {}),
        "- code: torchgpt (this repository); weights: RUN_DIR/checkpoints, RUN_DIR/model.pt",
        "",
        "## Data and tokenizer",
        "",
        *_data(data),
        "",
        "## Training hyper-parameters",
        "",
        *_hparams(data.config),
        "",
        "## Compute",
        "",
        *_compute(data),
        "",
        "## Evaluation",
        "",
        f"Newest evaluated checkpoint: {checkpoint_label(final) if final else '-'}, val_loss "
        f"{fmt_float(final.get('val_loss'))}. All evaluated checkpoints (0-shot, "
        "value (standard error)); BENCHMARK.md has the reference models and how these were "
        "produced:",
        "",
        *benchmark_rows(data),
        "",
        "## Intended use",
        "",
        "A small research and teaching model: for studying pretraining, evaluation and "
        "distributed-training code at a scale one CPU machine can run. It is not instruction "
        "tuned, has had no safety work, and is not meant for any product or for answering "
        "questions.",
        "",
        "## Limitations and biases",
        "",
        "- At this size and token budget the text is locally fluent at best and often "
        "incoherent or repetitive; facts it states are unreliable.",
        "- Benchmark scores of small models sit near chance; differences of about two standard "
        "errors or less are noise, and --limit subsets widen them.",
        "- It reflects its training text: English only, textbook register, the topics and "
        "viewpoints of that corpus; it inherits the social biases of its sources and the GPT-2 "
        "tokenizer's English-centric vocabulary.",
        "- Evaluation sets were read from local copies in the hub schema; HellaSwag's local file "
        "differs slightly from the original (../shared/data/README.md).",
        "",
    ]
    return "\n".join(lines)
