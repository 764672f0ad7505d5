#!/usr/bin/env python
"""Items/s of the torchgpt lm-eval adapter vs the harness's own `hf` backend on the same model.

python bench/eval.py                                   # gpt2-d384-l6, random init, 100 items/task
python bench/eval.py --checkpoint RUN_DIR --limit 200 --batch-size 32

The model is exported with export_hf (plus the GPT-2 tokenizer from the shared BPE files) so both
backends score the same weights, the same requests and the same batch size in float32. Only the
harness's evaluate call is timed (task data is loaded beforehand, untimed); each backend gets a
short warm-up, then the backends alternate for --repeats rounds and each one's best run counts.
Prints a table; never asserts.
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
from torchgpt.eval.hf_export import export_for_hf_backend  # noqa: E402
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
        export = export_for_hf_backend(model, Path(tmp) / "hf")
        backends = {
            "hf": HFLM(
                pretrained=str(export), device="cpu", dtype="float32", batch_size=args.batch_size
            ),
            "torchgpt": TorchGPTLM(model, batch_size=args.batch_size),
        }
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
