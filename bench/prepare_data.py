#!/usr/bin/env python
"""Throughput of tools/prepare_data.py next to tiktoken's own batch encoder, same run, same cores.

Reference: tiktoken `encode_ordinary_batch(texts, num_threads=W)` on texts already in memory.
Tool: the whole CLI as a subprocess (parquet reading, W tokenizer processes, shard writing,
hashing, manifest), timed wall-clock including interpreter start-up and tokenizer loading.
Rates count text tokens only (the tool's end-of-text separators are left out), so both sides
count the same tokens. Runs alternate and the best of --repeats is reported; CPU-seconds per
token (all processes) are printed too, since they barely move with other load on the machine.

  python bench/prepare_data.py --input ../shared/data/text/openstax --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torchgpt.data import sources
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", action="append", default=None)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    inputs = args.input or [str(REPO.parent / "shared" / "data" / "text" / "openstax")]
    texts = list(sources.iter_local_documents(sources.resolve_local_files(inputs)))
    best = {"raw": 0.0, "cli": 0.0}
    cpu = {"raw": float("inf"), "cli": float("inf")}
    ratios = []
    print(
        f"corpus: {len(texts)} documents; workers={args.workers}, cpus={os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f} before the first run"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):  # alternate the two so both see the same machine load
            rate, raw_cpu, raw_tokens = raw_rate(texts, args.workers)
            best["raw"], cpu["raw"] = max(best["raw"], rate), min(cpu["raw"], raw_cpu)
            cli, cli_cpu, tokens = cli_rate(inputs, args.workers, Path(tmp))
            best["cli"], cpu["cli"] = max(best["cli"], cli), min(cpu["cli"], cli_cpu)
            assert tokens == raw_tokens, (tokens, raw_tokens)
            ratios.append(cli / rate)
            print(
                f"  run {i + 1}: raw {rate / 1e6:.2f} M tokens/s, tool {cli / 1e6:.2f} M tokens/s"
            )
    print(f"best of {args.repeats}, {raw_tokens:,} text tokens:")
    print(
        f"  tiktoken encode_ordinary_batch (num_threads={args.workers}): "
        f"{best['raw'] / 1e6:6.2f} M tokens/s, {cpu['raw'] / raw_tokens * 1e6:.3f} CPU-s per M"
    )
    print(
        f"  tools/prepare_data.py --workers {args.workers} (wall incl. start-up): "
        f"{best['cli'] / 1e6:6.2f} M tokens/s, {cpu['cli'] / raw_tokens * 1e6:.3f} CPU-s per M"
    )
    print(
        f"  tool rate = {100 * best['cli'] / best['raw']:.0f}% of the raw rate (best vs best), "
        f"{100 * statistics.median(ratios):.0f}% (median of paired runs); raw CPU per token = "
        f"{100 * cpu['raw'] / cpu['cli']:.0f}% of the tool's (all its processes)"
    )


if __name__ == "__main__":
    main()
