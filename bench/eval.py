#!/usr/bin/env python
"""Items/s of the torchgpt lm-eval adapter vs the harness's own `hf` backend on the same model.

python bench/eval.py                                   # gpt2-d384-l6, random init, 100 items/task
python bench/eval.py --checkpoint RUN_DIR --limit 200 --batch-size 32
python bench/eval.py --only generate --prompts 50        # generate_until only

The model is exported with export_hf (plus the GPT-2 tokenizer from the shared BPE files) so both
backends score the same weights, the same requests and the same batch size in float32. Only the
harness's evaluate call is timed (task data is loaded beforehand, untimed); each backend gets a
short warm-up, then the backends alternate for --repeats rounds and each one's best run counts.
generate_until is timed the same way on --prompts greedy requests (lines of tiny-shakespeare,
stop at --until, --max-gen-toks each), and the share of identical outputs is printed.
Prints tables; never asserts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TORCHGPT_SHARED_DIR", REPO.parent / "shared"))
os.environ.setdefault("TORCHGPT_GPT2_BPE_DIR", str(SHARED / "tokenizers" / "gpt2"))

import torch  # noqa: E402
from lm_eval.evaluator import simple_evaluate  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from torchgpt.eval.harness import TorchGPTLM  # noqa: E402
from torchgpt.eval.hf_export import write_hf_folder  # noqa: E402
from torchgpt.eval.loading import load_model  # noqa: E402
from torchgpt.eval.tasks import build_task_manager, load_tasks  # noqa: E402
from torchgpt.model import GPT, get_model_args  # noqa: E402


def timed_run(lm, tasks: list[str], data_dir: Path, limit: int, work: Path) -> tuple[float, int]:
    """Seconds of one simple_evaluate over preloaded tasks, and the number of items scored."""
    manager = build_task_manager(tasks, data_dir, work)
    loaded = load_tasks(manager, tasks, data_dir)
    start = time.perf_counter()
    results = simple_evaluate(
        model=lm, tasks=list(loaded["tasks"].values()), limit=limit, task_manager=manager
    )
    seconds = time.perf_counter() - start
    items = sum(n["effective"] for n in results["n-samples"].values())
    return seconds, items


def generation_requests(n: int, max_gen_toks: int, until: list[str]) -> list:
    from lm_eval.api.instance import Instance

    text = (SHARED / "data/text/tinyshakespeare/input.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if len(line) > 20][:n]
    kwargs = {"until": until, "do_sample": False, "max_gen_toks": max_gen_toks}
    return [Instance("generate_until", {}, (line, dict(kwargs)), i) for i, line in enumerate(lines)]


def generation_table(backends: dict, args: argparse.Namespace) -> None:
    reqs = generation_requests(args.prompts, args.max_gen_toks, args.until.split("|"))
    for lm in backends.values():  # warm-up
        lm.generate_until(reqs[:2])
    best: dict[str, float] = {name: float("inf") for name in backends}
    outputs: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, lm in backends.items():
            start = time.perf_counter()
            outputs[name] = lm.generate_until(reqs)
            best[name] = min(best[name], time.perf_counter() - start)
    same = sum(a == b for a, b in zip(outputs["hf"], outputs["torchgpt"], strict=True))
    print(
        f"\ngenerate_until: {len(reqs)} greedy prompts, max_gen_toks {args.max_gen_toks}, "
        f"until {args.until.split('|')}, batch {args.batch_size}; mean output "
        f"{sum(len(t) for t in outputs['torchgpt']) / len(reqs):.0f} characters"
    )
    print(f"{'backend':<10} {'prompts':>7} {'seconds':>8} {'prompts/s':>9}")
    for name, seconds in best.items():
        print(f"{name:<10} {len(reqs):>7} {seconds:>8.2f} {len(reqs) / seconds:>9.2f}")
    print(
        f"torchgpt / hf speed: {best['hf'] / best['torchgpt']:.2f}x; identical outputs "
        f"{same}/{len(reqs)}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", help="torchgpt checkpoint (default: random-init --flavor)")
    p.add_argument("--flavor", default="gpt2-d384-l6")
    p.add_argument("--tasks", default="hellaswag,arc_easy,piqa")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--data-dir", default=str(SHARED / "data" / "eval"))
    p.add_argument("--only", choices=("score", "generate"), help="one table only")
    p.add_argument("--prompts", type=int, default=50, help="generate_until prompts")
    p.add_argument("--max-gen-toks", type=int, default=64)
    p.add_argument(
        "--until", default="\n|.", help="stop strings, |-separated (default: newline or period)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, _ = load_model(args.checkpoint)
    else:
        model = GPT(get_model_args(args.flavor))
        model.init_weights(seed=0)
    model.eval()
    tasks = args.tasks.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        export = write_hf_folder(model, Path(tmp) / "hf")
        backends = {
            "hf": HFLM(
                pretrained=str(export), device="cpu", dtype="float32", batch_size=args.batch_size
            ),
            "torchgpt": TorchGPTLM(model, batch_size=args.batch_size),
        }
        if args.only != "score":
            generation_table(backends, args)
        if args.only == "generate":
            return 0
        runs: dict[str, list[tuple[float, int]]] = {name: [] for name in backends}
        for name, lm in backends.items():
            timed_run(lm, tasks[:1], Path(args.data_dir), 2, Path(tmp) / f"warm-{name}")
        # Interleaved so that load from other jobs on a shared machine hits both alike.
        for i in range(args.repeats):
            for name, lm in backends.items():
                work = Path(tmp) / f"{name}{i}"
                runs[name].append(timed_run(lm, tasks, Path(args.data_dir), args.limit, work))
        rows = {name: min(r) for name, r in runs.items()}
    print(
        f"model {args.checkpoint or args.flavor} ({sum(p.numel() for p in model.parameters()):,} "
        f"params), tasks {args.tasks}, limit {args.limit}, batch {args.batch_size}, float32, "
        f"{args.threads} threads"
    )
    print(f"{'backend':<10} {'items':>6} {'seconds':>8} {'items/s':>8}")
    for name, (seconds, items) in rows.items():
        print(f"{name:<10} {items:>6} {seconds:>8.2f} {items / seconds:>8.2f}")
    speedup = rows["hf"][0] / rows["torchgpt"][0]
    print(f"torchgpt / hf speed: {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
