"""End to end: a real tiny run (trained here, DCP checkpoints, metrics.jsonl) -> tools/eval.py
-> tools/report.py, and the lm-eval adapter against the harness's own `hf` backend."""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torchgpt.checkpoint import CheckpointManager, ModelState
from torchgpt.data.loader import build_val_batches
from torchgpt.data.shards import ShardWriter
from torchgpt.data.tokenizer import EOT_ID, get_tokenizer
from torchgpt.eval.val import compute_val_loss
from torchgpt.model import GPT, get_model_args, num_params
from torchgpt.report.formatting import one_line

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import eval as eval_tool  # noqa: E402  (the CLIs under test)
import report as report_tool  # noqa: E402

pytestmark = pytest.mark.slow

TOK = {"name": "gpt2", "vocab_size": 50257, "eot_id": EOT_ID}
SEQ, MB, STEPS, SAVE_EVERY, LOG_EVERY, VAL_TOKENS = 64, 4, 16, 8, 4, 2048
TASKS = ["hellaswag", "arc_easy", "piqa"]


@pytest.fixture(scope="module", autouse=True)
def _offline_single_thread():
    # The harness and datasets must never wait on the network in CI. One thread: these tiny
    # models run small ops, which two OpenMP threads on a shared, busy 2-core box slow down
    # by an order of magnitude.
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for k, v in old.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _tiny_args():
    return get_model_args("debug", dim=64, n_layers=2, n_heads=2, max_seq_len=128)


def _write_shards(out: Path, shared_dir: Path) -> tuple[np.ndarray, Path]:
    """Real text -> train/val shards + manifest, as tools/prepare_data.py lays them out."""
    out.mkdir(parents=True)
    text = (shared_dir / "data/text/tinyshakespeare/input.txt").read_text()[:80_000]
    ids = np.array([EOT_ID, *get_tokenizer().encode_ordinary(text)], dtype=np.uint16)
    cut = int(0.85 * len(ids))
    entries = []
    for split, part in (("train", ids[:cut]), ("val", ids[cut:])):
        writer = ShardWriter(out, split, len(part), TOK)
        writer.write(part)
        writer.finish()
        entries += writer.shards
    manifest = {
        "tokenizer": TOK,
        "shards": entries,
        "tokens": {"train": cut, "val": len(ids) - cut},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return ids[:cut].astype(np.int64), out


def _config(data_dir: Path) -> dict:
    return {
        "job": {"name": "tiny-eval", "seed": 0},
        "model": {"flavor": "debug"},
        "data": {"dataset_path": str(data_dir)},
        "training": {
            "steps": STEPS,
            "global_batch_tokens": SEQ * MB,
            "micro_batch_size": MB,
            "seq_len": SEQ,
            "mixed_precision": "fp32",
        },
        "optimizer": {"lr": 3e-3, "weight_decay": 0.1},
        "validation": {"tokens": VAL_TOKENS, "micro_batch_size": MB},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_dir):
    """Train a tiny GPT for real: DCP checkpoints, metrics.jsonl and config.json as the trainer
    writes them, with val_loss computed the trainer's way on the fixed val batches."""
    root = tmp_path_factory.mktemp("run")
    train_ids, data_dir = _write_shards(root / "data", shared_dir)
    run_dir = root / "tiny-eval"
    cfg = _config(data_dir)
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(cfg))
    model = GPT(_tiny_args())
    model.init_weights(seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    val_batches = build_val_batches(
        data_dir,
        seq_len=SEQ,
        micro_batch_size=MB,
        num_tokens=VAL_TOKENS,
        dp_rank=0,
        dp_world_size=1,
    )
    mgr = CheckpointManager(
        run_dir,
        states={"model": ModelState(model)},
        interval=SAVE_EVERY,
        keep_latest_k=0,
        extra_metadata={"config": cfg, "model_args": asdict(model.args)},
    )
    gen = torch.Generator().manual_seed(0)
    records, models = [], {}
    for step in range(1, STEPS + 1):
        starts = torch.randint(0, len(train_ids) - SEQ - 1, (MB,), generator=gen)
        window = torch.stack([torch.from_numpy(train_ids[s : s + SEQ + 1]) for s in starts])
        loss = F.cross_entropy(model(window[:, :-1]).flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        tokens = step * SEQ * MB
        if step % LOG_EVERY == 0 or step == 1:
            records.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "lr": 3e-3 * (1 - step / (2 * STEPS)),
                    "tokens_seen": tokens,
                    "tokens_per_s": 5000.0,
                    "step_time_s": 0.1,
                }
            )
        if step % SAVE_EVERY == 0:
            val = compute_val_loss(model, val_batches)
            records.append(
                {"step": step, "val_loss": val, "val_ppl": math.exp(val), "tokens_seen": tokens}
            )
            mgr.save(step, val_loss=val)
            models[step] = {k: v.clone() for k, v in model.state_dict().items()}
    with open(run_dir / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return {"dir": run_dir, "data": data_dir, "records": records, "model": model}


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _metric_at(records: list[dict], step: int, key: str):
    return next(r[key] for r in records if r["step"] == step and key in r)


def test_eval_all_checkpoints_then_report(run, shared_dir, capsys):
    run_dir, eval_dir = run["dir"], shared_dir / "data" / "eval"
    argv = [str(run_dir), "--all", "--data", str(run["data"]), "--data-dir", str(eval_dir)]
    assert eval_tool.main(argv + ["--limit", "10", "--batch-size", "32"]) == 0
    results = {}
    for step in (SAVE_EVERY, STEPS):
        rec = json.loads((run_dir / "eval" / f"step-{step}.json").read_text())
        results[step] = rec
        assert rec["step"] == step and rec["tokens_seen"] == step * SEQ * MB
        # The acceptance check: the checkpoint's val loss is the trainer's at that step.
        assert rec["val_loss"] == pytest.approx(
            _metric_at(run["records"], step, "val_loss"), abs=1e-6
        )
        assert rec["val_ppl"] == pytest.approx(math.exp(rec["val_loss"]))
        assert rec["val_tokens"] == VAL_TOKENS and rec["limit"] == 10
        assert set(rec["tasks"]) == set(TASKS)
        for scores in rec["tasks"].values():
            assert scores["num_samples"] == 10 and 0.0 <= scores["acc_norm"] <= 1.0
            assert scores["acc_stderr"] > 0 and scores["version"] == 1.0
        assert [s["prompt"] for s in rec["samples"]][0] == "The mitochondria is"
        assert len(rec["samples"]) == 5 and all(s["greedy"] for s in rec["samples"])
        assert rec["versions"]["lm_eval"] and rec["num_params"] == num_params(_tiny_args())
    assert results[STEPS]["val_loss"] < results[SAVE_EVERY]["val_loss"]  # it did learn

    assert report_tool.main([str(run_dir)]) == 0
    out = run_dir / "report"
    bench = (out / "BENCHMARK.md").read_text()
    samples = (out / "SAMPLES.md").read_text()
    card = (out / "MODEL_CARD.md").read_text()
    for step, rec in results.items():
        row = next(line for line in bench.splitlines() if line.startswith(f"| step-{step} |"))
        assert f"| {rec['tokens_seen']:,} | {rec['val_loss']:.4f} | {rec['val_ppl']:.2f} |" in row
        t = rec["tasks"]
        for task, metric in (("hellaswag", "acc_norm"), ("arc_easy", "acc"), ("piqa", "acc_norm")):
            assert f"{t[task][metric]:.4f} ({t[task][metric + '_stderr']:.4f})" in row
        assert rec["command"] in bench
        for s in rec["samples"]:
            assert f"greedy : {s['prompt']}|{one_line(s['greedy'])}" in samples
            assert f"sampled: {s['prompt']}|{one_line(s['sampled'])}" in samples
    assert "| chance | - | - | 0.2500 |" in bench and "0.3114" in bench  # GPT-2 124M reference
    assert f"{num_params(_tiny_args()):,} parameters" in card and "lr=0.003" in card
    assert f"tokens seen: {STEPS * SEQ * MB:,}" in card
    assert _png_size(out / "LOSS_CURVE.png") == (1080, 600)
    import matplotlib.image

    pixels = (matplotlib.image.imread(out / "LOSS_CURVE.png")[..., :3] * 255).round()
    for rgb in ((31, 119, 180), (255, 127, 14)):  # train (tab:blue) and val (tab:orange) lines
        assert (np.abs(pixels - rgb).sum(-1) < 30).sum() > 50


def _harness_run(lm, tasks: list[str], data_dir: Path, limit: int, yaml_dir: Path) -> dict:
    from lm_eval.evaluator import simple_evaluate

    from torchgpt.eval.tasks import build_task_manager, load_tasks

    manager = build_task_manager(tasks, data_dir, yaml_dir)
    loaded = load_tasks(manager, tasks, data_dir)
    return simple_evaluate(
        model=lm, tasks=list(loaded["tasks"].values()), limit=limit, task_manager=manager
    )


def test_adapter_matches_the_harness_hf_backend(run, tmp_path, shared_dir, gpt2_bpe_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from torchgpt.eval.harness import TorchGPTLM
    from torchgpt.eval.hf_export import write_hf_folder

    model = run["model"].eval()
    export = write_hf_folder(model, tmp_path / "hf", bpe_dir=gpt2_bpe_dir)
    hf = HFLM(pretrained=str(export), device="cpu", dtype="float32", batch_size=16)
    ours = TorchGPTLM(model, batch_size=16)
    eval_dir, limit = shared_dir / "data" / "eval", 25
    res = {
        name: _harness_run(lm, TASKS, eval_dir, limit, tmp_path / name)
        for name, lm in (("hf", hf), ("ours", ours))
    }
    for task in TASKS:
        a, b = res["hf"]["results"][task], res["ours"]["results"][task]
        for metric in ("acc,none", "acc_norm,none"):
            assert b[metric] == pytest.approx(a[metric], abs=1e-3), (task, metric)
        pairs = list(zip(res["hf"]["samples"][task], res["ours"]["samples"][task], strict=True))
        assert len(pairs) == limit
        for sa, sb in pairs:
            assert sa["doc_id"] == sb["doc_id"] and sa["arguments"] == sb["arguments"]
            for (ll_a, greedy_a), (ll_b, greedy_b) in zip(
                sa["filtered_resps"], sb["filtered_resps"], strict=True
            ):
                # 1e-4, or 3e-7 relative (about 2-3 fp32 ulps) for |ll| > ~330: both backends
                # sum fp32 log-probs and are each ~1e-4 from the fp64 value at |ll| ~ 1000.
                assert abs(ll_a - ll_b) <= max(1e-4, 3e-7 * abs(ll_a)) and greedy_a == greedy_b

    text = (shared_dir / "data/text/tinyshakespeare/input.txt").read_text()[:2500]
    rolling = [Instance("loglikelihood_rolling", {}, (t,), 0) for t in (text, "Hello world")]
    # 2500 chars is ~700 tokens: several 128-token windows, the rolling path's hard case.
    expected, got = hf.loglikelihood_rolling(rolling), ours.loglikelihood_rolling(rolling)
    for a, b in zip(expected, got, strict=True):
        assert b == pytest.approx(a, abs=1e-3, rel=1e-6)
    gen_kwargs = {"until": ["\n\n", "."], "max_gen_toks": 24, "do_sample": False}
    prompts = ["First Citizen:\nBefore we proceed", "The king", "x"]
    gen = [Instance("generate_until", {}, (p, dict(gen_kwargs)), 0) for p in prompts]
    assert ours.generate_until(gen) == hf.generate_until(gen)


def test_eval_tool_errors_say_what_to_fix(run, tmp_path, shared_dir, capsys):
    from torchgpt.checkpoint import save_model_only

    ckpt = str(run["dir"] / "checkpoints" / f"step-{STEPS}")
    base = [ckpt, "--out", str(tmp_path / "out"), "--no-samples"]
    assert eval_tool.main(base + ["--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "task data for 'hellaswag' not found" in err and "../shared/data/eval" in err

    eval_dir = str(shared_dir / "data" / "eval")
    assert eval_tool.main(base + ["--data-dir", eval_dir, "--tasks", "hellaswag,arc_easyy"]) == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task(s): 'arc_easyy' (did you mean arc_easy" in err

    small = GPT(get_model_args("debug", dim=64, n_layers=1, n_heads=2, vocab_size=1000))
    small.init_weights(seed=0)
    path = save_model_only(small.state_dict(), asdict(small.args), {}, tmp_path / "small.pt")
    assert eval_tool.main([str(path), "--out", str(tmp_path / "o"), "--tasks", "none"]) == 2
    assert "vocab_size=1000 but the GPT-2 tokenizer has 50257 tokens" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
