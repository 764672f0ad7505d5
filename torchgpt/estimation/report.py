"""One estimate of a config on a GPU type: memory (analytic + traced), verdict, speed, Chinchilla.

`build_estimate` computes everything; `render_text` prints it for people and `to_json` gives
the same figures as plain data (tools/memory_estimate.py --json).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from torchgpt.estimation.autosize import AutoSizing
from torchgpt.estimation.chinchilla import ChinchillaRow, chinchilla_table, optimal_tokens
from torchgpt.estimation.memory import MemoryEstimate, analytic_memory
from torchgpt.estimation.plan import STEP_FIELDS, TrainingPlan
from torchgpt.estimation.speed import SpeedEstimate, estimate_speed, peak_flops_table, resolve_gpu
from torchgpt.estimation.verdict import Verdict, decide, headroom_text
from torchgpt.model.args import num_params
from torchgpt.utils.hardware import GPUSpec

GIB, MIB = 2**30, 2**20


@dataclass
class Estimate:
    """Everything the tool prints, for one config, GPU type and process count."""

    source: str
    plan: TrainingPlan
    gpu: str
    spec: GPUSpec
    analytic: MemoryEstimate
    traced: MemoryEstimate | None
    trace_seconds: float | None
    trace_skipped: str | None
    verdict: Verdict
    speed: SpeedEstimate
    chinchilla_flops: float
    chinchilla_rows: list[ChinchillaRow]
    auto_sizing: AutoSizing | None = None


def build_estimate(
    plan: TrainingPlan,
    gpu: str | GPUSpec,
    *,
    source: str = "",
    trace: bool = True,
    mfu: float | None = None,
    usd_per_gpu_hour: float | None = None,
    chinchilla_flops: float | None = None,
    chinchilla_params: float | None = None,
    auto_sizing: AutoSizing | None = None,
) -> Estimate:
    """Run every estimate for `plan` on plan.world_size GPUs of type `gpu`.

    Args:
        plan: the layout.
        gpu: a key of torchgpt.utils.hardware.GPUS, or a GPUSpec describing another GPU.
        source: where the config came from (printed).
        trace: also trace a step under FakeTensorMode (seconds; skipped for DDP).
        mfu: assumed MFU; default per GPU type.
        usd_per_gpu_hour: adds a cost line.
        chinchilla_flops: compute budget for the Chinchilla table; default this run's 6ND.
        chinchilla_params: parameter count for the Chinchilla table instead.
        auto_sizing: what "auto" keys of the config became (already applied to `plan`).

    Raises:
        ValueError: unknown GPU, bad MFU / price / Chinchilla inputs.
    """
    key, spec = resolve_gpu(gpu)
    speed = estimate_speed(plan, gpu, mfu=mfu, usd_per_gpu_hour=usd_per_gpu_hour)
    n_model = num_params(plan.args)
    if chinchilla_params is not None:
        flops, rows = chinchilla_table(num_params=chinchilla_params)
    else:
        flops = chinchilla_flops or 6 * n_model * plan.total_tokens
        flops, rows = chinchilla_table(
            compute_flops=flops, num_params=None if chinchilla_flops else n_model
        )
    analytic = analytic_memory(plan)
    traced, seconds, skipped = None, None, None
    if not trace:
        skipped = "--no-trace given"
    elif plan.ddp:
        skipped = "DDP cannot be traced under FakeTensorMode (it reads parameter data)"
    else:
        from torchgpt.estimation.trace import trace_memory  # imports torch.distributed tooling

        start = time.perf_counter()
        traced = trace_memory(plan)
        seconds = time.perf_counter() - start
    basis = "traced" if traced is not None else "analytic"
    peak = traced.peak_bytes if traced is not None else analytic.peak_bytes
    verdict = decide(plan, spec, peak, basis)
    return Estimate(
        source,
        plan,
        key,
        spec,
        analytic,
        traced,
        seconds,
        skipped,
        verdict,
        speed,
        flops,
        rows,
        auto_sizing,
    )


def fmt_bytes(n: float) -> str:
    """GiB from 1 GiB up, MiB below."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def _fmt_duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min"


def _header(est: Estimate) -> list[str]:
    p, a = est.plan, est.plan.args
    return [
        f"== torchgpt estimate: {est.source or p.flavor} ==",
        f"model      {p.flavor}: {num_params(a):,} params "
        f"({num_params(a, padded_vocab=True):,} held with the padded vocabulary), "
        f"{a.n_layers} layers, d={a.dim}, vocab {a.vocab_size}",
        f"layout     {p.world_size} x {est.gpu} ({est.spec.name}), {p.layout_text()}",
        f"batch      micro-batch {p.micro_batch_size} x {p.seq_len} tokens per GPU, "
        f"{p.grad_accum} micro-steps per step, global batch {p.global_batch_tokens:,} tokens",
        f"options    precision {p.precision_mode}, activation checkpointing {p.ac_text()}, "
        f"torch.compile {'on' if p.compile_enable else 'off'} "
        + (
            "(the fused bf16/compute-dtype loss is modelled)"
            if p.compile_enable
            else "(the eager fp32 cross-entropy is modelled)"
        ),
    ] + ([f"auto       {est.auto_sizing.text()}"] if est.auto_sizing else [])


def _memory_lines(est: Estimate) -> list[str]:
    lines = ["", "Per-GPU peak memory of a steady-state training step"]
    a = est.analytic
    lines.append(f"  analytic (formulas from the model args), peak at: {a.moment}")
    for item in a.items:
        lines.append(f"    {item.category:<16} {item.name:<52} {fmt_bytes(item.nbytes):>11}")
    lines.append(f"    {'total':<69} {fmt_bytes(a.peak_bytes):>11}")
    t = est.traced
    if t is None:
        lines.append(f"  traced: skipped ({est.trace_skipped})")
        return lines
    tracker = "FSDPMemTracker" if est.plan.fsdp else "MemTracker"
    ranks = f"fake process group of {est.plan.world_size}" if est.plan.world_size > 1 else "1 rank"
    lines.append(
        f"  traced ({tracker} under FakeTensorMode, {ranks}, {est.trace_seconds:.1f} s), "
        "tracker categories at the peak:"
    )
    for item in t.items:
        lines.append(f"    {item.name:<69} {fmt_bytes(item.nbytes):>11}")
    lines.append(f"    {'total':<69} {fmt_bytes(t.peak_bytes):>11}")
    diff = a.peak_bytes / t.peak_bytes - 1
    lines.append(f"  analytic vs traced: {diff:+.1%}")
    return lines


def _speed_lines(est: Estimate) -> list[str]:
    s, p = est.speed, est.plan
    recompute = ""
    if s.recompute_flops_per_token:
        recompute = f", {p.ac_text()} AC recompute -> {s.mfu_effective:.1%} effective"
    lines = [
        "",
        f"Speed (assumed MFU {s.mfu_assumed:.0%} on {est.gpu}{recompute}; override with --mfu)",
        f"  FLOPs/token   {s.flops_per_token:.3e} (6N + 12LdT, PaLM appendix B)"
        + (
            f" + {s.recompute_flops_per_token:.3e} recompute" if s.recompute_flops_per_token else ""
        ),
        f"  tokens/s      {s.tokens_per_s:,.0f} ({s.tokens_per_s / s.num_gpus:,.0f} per GPU)",
        f"  step time     {s.step_seconds:.2f} s per {p.global_batch_tokens:,}-token step",
        f"  time-to-train {_fmt_duration(s.train_seconds)} for {s.total_tokens / 1e9:.3g}B tokens "
        f"({p.steps:,} steps); {s.gpu_hours:,.1f} GPU-hours",
    ]
    if s.usd is not None:
        price = s.usd / s.gpu_hours if s.gpu_hours else 0.0
        lines.append(f"  cost          ${s.usd:,.2f} at ${price:.2f} per GPU-hour")
    lines.append("  peak-FLOPs table used (dense bf16, torchgpt/utils/hardware.py):")
    lines.append(f"    {'gpu':<10} {'name':<30} {'TFLOP/s':>8} {'GiB':>5} {'default MFU':>11}")
    for key, name, tflops, mem, mfu in peak_flops_table():
        mark = " <-" if key == est.gpu else ""
        lines.append(f"    {key:<10} {name:<30} {tflops:>8.1f} {mem:>5g} {mfu:>11.0%}{mark}")
    return lines


def chinchilla_lines(
    compute_flops: float, rows: list[ChinchillaRow], plan: TrainingPlan | None = None
) -> list[str]:
    """The Chinchilla section; with a plan, the configured model's own line first."""
    lines = [
        "Chinchilla (Hoffmann et al. 2022: ~20 tokens/param; fitted "
        "L(N,D) = 1.69 + 406.4/N^0.34 + 410.7/D^0.28, C = 6ND)",
    ]
    if plan is not None:
        n = num_params(plan.args)
        lines.append(
            f"  this model: N = {n / 1e6:.1f}M -> compute-optimal {optimal_tokens(n) / 1e9:.2f}B "
            f"tokens; configured {plan.total_tokens / 1e9:.2f}B = "
            f"{plan.total_tokens / n:.1f} tokens/param"
        )
    lines += [
        f"  loss vs size at C = {compute_flops:.3g} FLOPs:",
        f"    {'params':>9} {'tokens':>9} {'tok/param':>9} {'fit loss':>8}  note",
    ]
    for r in rows:
        lines.append(
            f"    {r.num_params / 1e6:>8.1f}M {r.num_tokens / 1e9:>8.2f}B "
            f"{r.tokens_per_param:>9.1f} {r.loss:>8.3f}  {r.label}"
        )
    lines.append(
        "  (the fit is for Chinchilla's data and tokenizer: a trade-off shape, not our loss)"
    )
    return lines


def _verdict_lines(est: Estimate) -> list[str]:
    v = est.verdict
    lines = ["", f"Verdict: {v.text()}", f"  headroom: {headroom_text(est.spec)}"]
    if not v.fits:
        if v.suggestions:
            lines.append("  fits with (analytic per-GPU peak):")
            for s in v.suggestions:
                lines.append(f"    {' '.join(s.changes):<72} {fmt_bytes(s.peak_bytes):>11}")
        else:
            lines.append(
                "  nothing tried fits (full AC, micro-batch down to 1, up to 8x the GPUs): "
                "use a GPU with more memory, a shorter seq_len or a smaller model"
            )
    return lines


def render_text(est: Estimate) -> str:
    """The human-readable report."""
    lines = _header(est) + _memory_lines(est) + _verdict_lines(est)
    lines += _speed_lines(est) + [""]
    lines += chinchilla_lines(est.chinchilla_flops, est.chinchilla_rows, est.plan)
    notes = est.analytic.notes + (est.traced.notes if est.traced else [])
    notes.append("speed: communication assumed overlapped with compute (inside the assumed MFU)")
    if est.plan.tp > 1:
        notes.append(
            f"tp {est.plan.tp}: its all-gathers / reduce-scatters sit on the critical path of "
            "every block (not overlapped unless parallelism.tp_async); lower --mfu for them"
        )
    lines += ["", "Assumptions"] + [f"  - {n}" for n in notes]
    return "\n".join(lines)


def _memory_json(m: MemoryEstimate | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {
        "method": m.method,
        "peak_bytes": m.peak_bytes,
        "peak_gib": m.peak_bytes / GIB,
        "moment": m.moment,
        "items": [dataclasses.asdict(i) for i in m.items],
        "by_category": m.by_category(),
        "notes": m.notes,
    }


def to_json(est: Estimate) -> dict[str, Any]:
    """The estimate as JSON-serializable data."""
    p, s, v = est.plan, est.speed, est.verdict
    speed = dataclasses.asdict(s)
    speed["spec"] = dataclasses.asdict(est.spec)
    return {
        "source": est.source,
        "plan": {
            **{k: val for k, val in dataclasses.asdict(p).items() if k != "step"},
            **{k: getattr(p, k) for k in STEP_FIELDS},
            "grad_accum": p.grad_accum,
            "precision_mode": p.precision_mode,
            "num_params": num_params(p.args),
        },
        "gpu": est.gpu,
        "memory": {
            "analytic": _memory_json(est.analytic),
            "traced": _memory_json(est.traced),
            "trace_seconds": est.trace_seconds,
            "trace_skipped": est.trace_skipped,
        },
        "verdict": {
            "fits": v.fits,
            "basis": v.basis,
            "peak_bytes": v.peak_bytes,
            "usable_bytes": v.usable_bytes,
            "headroom": headroom_text(est.spec),
            "suggestions": [
                {"changes": list(x.changes), "peak_bytes": x.peak_bytes} for x in v.suggestions
            ],
        },
        "auto_sizing": est.auto_sizing.to_json() if est.auto_sizing else None,
        "speed": speed,
        "chinchilla": {
            "compute_flops": est.chinchilla_flops,
            "rows": [dataclasses.asdict(r) for r in est.chinchilla_rows],
        },
    }
