"""tools/report.py on a hand-written run folder: tables, '-' for what was not evaluated, sample
checkpoint selection, model card figures from metrics.jsonl, references, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from torchgpt.report import build_report, load_report_data
from torchgpt.report.formatting import MAX_SAMPLE_CHECKPOINTS

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import report as report_tool  # noqa: E402

STEPS = [100, 200, 300, 400, 500, 600, 700, 800]
PROMPTS = ["Alpha", "Beta"]
CONFIG = {
    "job": {"name": "unit-run", "seed": 3},
    "model": {"flavor": "debug"},
    "data": {"dataset_path": "/nonexistent"},
    "training": {"steps": 800, "global_batch_tokens": 1024, "seq_len": 64},
    "optimizer": {"lr": 0.0006, "weight_decay": 0.1},
}


def record(step: int) -> dict:
    rec = {
        "step": step,
        "tokens_seen": step * 1024,
        "val_loss": 6.0 - step / 1000,
        "val_ppl": 2.0 ** (6 - step / 1000),
        "num_params": 7_123_456,
        "model_args": {"n_layers": 2, "dim": 128, "n_heads": 4, "vocab_size": 50257},
        "limit": 50,
        "task_data_dir": "/data/eval",
        "tasks": {
            "hellaswag": {
                "acc": 0.25,
                "acc_norm": 0.2600 + step / 1e5,
                "acc_norm_stderr": 0.0123,
                "acc_stderr": 0.01,
                "num_samples": 50,
            },
            "arc_easy": {
                "acc": 0.31,
                "acc_stderr": 0.021,
                "acc_norm": 0.29,
                "acc_norm_stderr": 0.02,
                "num_samples": 50,
            },
            "piqa": {
                "acc": 0.55,
                "acc_stderr": 0.03,
                "acc_norm": 0.5512,
                "acc_norm_stderr": 0.0301,
                "num_samples": 50,
            },
        },
        "samples": [
            {"prompt": p, "greedy": f" g{step}{p}\n", "sampled": f" s{step}{p}"} for p in PROMPTS
        ],
        "sample_settings": {"max_new_tokens": 8, "temperature": 0.8, "top_k": 50, "seed": 1},
        "versions": {"torch": "9.9", "lm_eval": "0.4.13"},
        "hardware": {"cpu": "Test CPU", "num_cpus": 2},
        "command": f"python tools/eval.py RUN --step {step}",
    }
    if step == 300:  # evaluated without the harness and without val data
        rec.update(tasks={}, val_loss=None, val_ppl=None)
    return rec


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    lines = [
        {
            "step": s,
            "loss": 7 - s / 200,
            "lr": 6e-4,
            "tokens_seen": s * 1024,
            "tokens_per_s": 2048.4,
            "step_time_s": 0.36,
            "peak_memory_gib": 1.5,
        }
        for s in range(10, 801, 10)
    ]
    lines += [{"step": s, "val_loss": 6 - s / 1000, "tokens_seen": s * 1024} for s in STEPS]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "eval").mkdir()
    for step in STEPS:
        (tmp_path / "eval" / f"step-{step}.json").write_text(json.dumps(record(step)))
    return tmp_path


def test_benchmark_has_a_row_per_checkpoint_and_dashes_for_missing(run_dir):
    paths = build_report(run_dir, run_dir / "out")
    assert sorted(p.name for p in paths.values()) == sorted(
        ["BENCHMARK.md", "LOSS_CURVE.png", "SAMPLES.md", "MODEL_CARD.md"]
    )
    bench = paths["BENCHMARK.md"].read_text()
    rows = [line for line in bench.splitlines() if line.startswith("| step-")]
    assert [r.split(" | ")[0] for r in rows] == [f"| step-{s}" for s in STEPS]
    assert rows[0] == (
        "| step-100 | 102,400 | 5.9000 | 59.71 | 0.2610 (0.0123) | 0.3100 (0.0210) "
        "| 0.2900 (0.0200) | 0.5512 (0.0301) |"
    )
    assert rows[2] == "| step-300 | 307,200 | - | - | - | - | - | - |"
    assert "| chance | - | - | 0.2500 | 0.2500 | 0.2500 | 0.5000 |" in bench
    assert "~0.3082" in bench and "| 0.3114 |" in bench and "160m_step123000.json" in bench
    assert "--limit 50: the first 50 of each set" in bench
    assert "python tools/eval.py RUN --step 800" in bench and "- lm_eval: 0.4.13" in bench
    assert '"lr": 0.0006' in bench  # the resolved config is reproduced


def test_samples_follow_prompts_across_at_most_six_checkpoints(run_dir):
    text = build_report(run_dir)["SAMPLES.md"].read_text()
    shown = [s for s in STEPS if f"**step-{s}**" in text]
    assert len(shown) == MAX_SAMPLE_CHECKPOINTS and shown[0] == 100 and shown[-1] == 800
    for step in shown:
        for p in PROMPTS:
            assert f"greedy : {p}| g{step}{p}\\n\n" in text  # newline escaped, one line
            assert f"sampled: {p}| s{step}{p}\n" in text
    assert text.index("## Prompt 1: 'Alpha'") < text.index("## Prompt 2: 'Beta'")
    assert "max_new_tokens=8, temperature=0.8" in text


def test_model_card_figures_come_from_the_files(run_dir):
    card = build_report(run_dir)["MODEL_CARD.md"].read_text()
    assert "7,123,456 parameters" in card and "2 layers, width 128, 4 heads" in card
    assert "tokens seen: 819,200" in card
    assert "0.08 h" in card  # 800 steps x 0.36 s
    assert "throughput at the last log: 2,048 tokens/s" in card
    assert "optimizer: lr=0.0006, weight_decay=0.1" in card and "peak memory" in card
    assert "## Limitations and biases" in card and "## Intended use" in card
    assert "training machine" not in card  # no run_info.json: only the eval machine is known
    assert "- evaluation machine: Test CPU (2 CPUs)" in card


def test_model_card_names_the_training_machine_and_run_files(run_dir):
    launch = {
        "started_at": "2026-01-01T00:00:00+00:00",
        "command": "train.py cfg.toml --training.steps 800",
        "host": {"cpu": "Host CPU", "num_cpus": 96, "cuda": "NVIDIA H100", "cuda_devices": 8},
        "world_size": 8,
        "device": "cuda:0",
    }
    (run_dir / "run_info.json").write_text(json.dumps({"launches": [launch]}))
    (run_dir / "train.log").write_text("step 800/800\n")
    paths = build_report(run_dir)
    card = paths["MODEL_CARD.md"].read_text()
    assert "- training machine: NVIDIA H100 x8 (host CPU Host CPU (96 CPUs)), 8 process(es)" in card
    assert f"`{run_dir / 'train.log'}`" in card and f"`{run_dir / 'config.json'}`" in card
    bench = paths["BENCHMARK.md"].read_text()
    assert f"`{run_dir / 'train.log'}`" in bench and f"`{run_dir / 'config.json'}`" in bench
    assert "train.py cfg.toml --training.steps 800" in bench


def test_errors_and_the_cli(tmp_path, run_dir, capsys):
    with pytest.raises(ValueError, match="no eval/step-N.json and no metrics.jsonl"):
        (tmp_path / "empty").mkdir()
        load_report_data(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        load_report_data(tmp_path / "missing")
    (run_dir / "eval" / "step-900.json").write_text("{not json")
    with pytest.raises(ValueError, match="step-900.json is not valid JSON"):
        load_report_data(run_dir)
    assert report_tool.main([str(run_dir), "--out", str(tmp_path / "r")]) == 2
    assert "step-900.json" in capsys.readouterr().err
    (run_dir / "eval" / "step-900.json").unlink()
    assert report_tool.main([str(run_dir), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "LOSS_CURVE.png").stat().st_size > 20_000


def test_benchmark_markers_keep_hand_written_sections(tmp_path):
    from torchgpt.report.build import BEGIN_MARK, END_MARK, _write_benchmark

    path = tmp_path / "BENCHMARK.md"
    path.write_text(f"# Bench\nthroughput 123\n{BEGIN_MARK}\nold table\n{END_MARK}\nfooter\n")
    _write_benchmark(path, "new table\n")
    assert (
        path.read_text()
        == f"# Bench\nthroughput 123\n{BEGIN_MARK}\nnew table\n{END_MARK}\nfooter\n"
    )
    fresh = tmp_path / "other.md"
    _write_benchmark(fresh, "only the report\n")
    assert fresh.read_text() == "only the report\n"


def test_a_users_task_gets_its_own_columns(run_dir):
    path = run_dir / "eval" / "step-800.json"
    result = json.loads(path.read_text())
    result["tasks"]["my_task"] = {"acc": 0.625, "acc_stderr": 0.1, "num_samples": 8}
    path.write_text(json.dumps(result))
    bench = build_report(run_dir, run_dir / "out")["BENCHMARK.md"].read_text()
    header = next(line for line in bench.splitlines() if line.startswith("| checkpoint"))
    assert header.endswith("| my_task acc |")
    row = next(line for line in bench.splitlines() if line.startswith("| step-800"))
    assert row.endswith("| 0.6250 (0.1000) |")
    row = next(line for line in bench.splitlines() if line.startswith("| step-700"))
    assert row.endswith("| - |")
