#!/usr/bin/env python
"""Throughput of tools/prepare_data.py next to tiktoken's own batch encoder, same run, same cores.

Reference: tiktoken `encode_ordinary_batch(texts, num_threads=W)` on texts already in memory.
Tool: the whole CLI as a subprocess (parquet reading, W tokenizer processes, shard writing,
hashing, manifest), timed wall-clock including interpreter start-up, and `prepare()` in-process.
Rates count text tokens only (the tool's end-of-text separators are left out), so both sides
count the same tokens. Runs alternate and the best of --repeats is reported (shared machines).

  python bench/prepare_data.py --input ../shared/data/text/openstax --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torchgpt.data import sources
from torchgpt.data.prepare import PrepareConfig, prepare
from torchgpt.data.tokenizer import get_tokenizer

REPO = Path(__file__).resolve().parents[1]


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def raw_rate(texts: list[str], workers: int) -> tuple[float, float, int]:
    """(tokens/s, CPU-seconds, tokens) of tiktoken's batch encoder."""
    enc = get_tokenizer()
    cpu, start = _cpu(resource.RUSAGE_SELF), time.perf_counter()
    out = enc.encode_ordinary_batch(texts, num_threads=workers)
    elapsed, cpu = time.perf_counter() - start, _cpu(resource.RUSAGE_SELF) - cpu
    tokens = sum(map(len, out))
    return tokens / elapsed, cpu, tokens


def text_tokens(manifest: dict) -> int:
    return sum(manifest["tokens"].values()) - sum(manifest["documents"].values())


def cli_rate(inputs: list[str], workers: int, tmp: Path) -> tuple[float, float, int]:
    """(tokens/s, CPU-seconds of the CLI and its workers, tokens) of the whole tool."""
    out = tmp / f"cli_{time.monotonic_ns()}"
    cmd = [
        sys.executable,
        str(REPO / "tools" / "prepare_data.py"),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--no-progress",
    ] + [a for i in inputs for a in ("--input", i)]
    cpu, start = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    elapsed, cpu = time.perf_counter() - start, _cpu(resource.RUSAGE_CHILDREN) - cpu
    tokens = text_tokens(json.loads((out / "manifest.json").read_text()))
    return tokens / elapsed, cpu, tokens


def inprocess_rate(inputs: list[str], workers: int, tmp: Path) -> tuple[float, int]:
    cfg = PrepareConfig(
        out_dir=str(tmp / f"lib_{time.monotonic_ns()}"),
        inputs=inputs,
        workers=workers,
        progress=False,
    )
    start = time.perf_counter()
    manifest = prepare(cfg)
    elapsed = time.perf_counter() - start
    return text_tokens(manifest) / elapsed, text_tokens(manifest)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", action="append", default=None)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    inputs = args.input or [str(REPO.parent / "shared" / "data" / "text" / "openstax")]
    texts = list(sources.iter_local_documents(sources.resolve_local_files(inputs)))
    best = {"raw": 0.0, "cli": 0.0, "lib": 0.0}
    cpu = {"raw": float("inf"), "cli": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            rate, raw_cpu, raw_tokens = raw_rate(texts, args.workers)
            best["raw"], cpu["raw"] = max(best["raw"], rate), min(cpu["raw"], raw_cpu)
            rate, cli_cpu, tokens = cli_rate(inputs, args.workers, Path(tmp))
            best["cli"], cpu["cli"] = max(best["cli"], rate), min(cpu["cli"], cli_cpu)
            assert tokens == raw_tokens, (tokens, raw_tokens)
            best["lib"] = max(best["lib"], inprocess_rate(inputs, args.workers, Path(tmp))[0])
    print(
        f"corpus: {len(texts)} documents, {raw_tokens:,} tokens; workers={args.workers}, "
        f"cpus={os.cpu_count()}, best of {args.repeats}"
    )
    print(
        f"{'tiktoken encode_ordinary_batch (num_threads=W)':<50}: {best['raw'] / 1e6:6.2f} M "
        f"tokens/s, {cpu['raw'] / raw_tokens * 1e6:.3f} CPU-s per M tokens"
    )
    print(
        f"{'tools/prepare_data.py (CLI, wall incl. start-up)':<50}: {best['cli'] / 1e6:6.2f} M "
        f"tokens/s, {cpu['cli'] / raw_tokens * 1e6:.3f} CPU-s per M tokens (all processes)"
    )
    print(f"{'prepare() in-process':<50}: {best['lib'] / 1e6:6.2f} M tokens/s")
    print(
        f"tool / raw: {100 * best['cli'] / best['raw']:.0f}% of the rate (CLI), "
        f"{100 * best['lib'] / best['raw']:.0f}% (in-process); raw / tool CPU per token: "
        f"{100 * cpu['raw'] / cpu['cli']:.0f}%"
    )


if __name__ == "__main__":
    main()
