"""torchgpt inside the tools its users already run: lm-eval's own CLI, transformers, tools/eval.py
with a user's task YAML. Each runs as a user would, in a subprocess, offline, on a task the
test writes (a small multiple-choice set in a local JSON-lines file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchgpt.checkpoint.export import export_model
from torchgpt.model import GPT
from torchgpt.model.args import get_model_args

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TASK = "torchgpt_test_choice"

_ITEMS = [
    ("The sun rises in the", ["east", "west", "sea"], 0),
    ("Water freezes at zero degrees", ["Celsius", "Fahrenheit", "Kelvin"], 0),
    ("A week has seven", ["days", "hours", "years"], 0),
    ("Cats like to chase", ["mice", "trains", "clouds"], 0),
    ("The opposite of hot is", ["cold", "warm", "loud"], 0),
    ("Bread is made from", ["flour", "stone", "glass"], 0),
]


def write_task(folder: Path) -> Path:
    """A user's own harness task: a YAML and its data, nothing from the hub."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "items.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in _ITEMS)
    )
    (folder / f"{TASK}.yaml").write_text(
        f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""
    )
    return folder


def offline_env(gpt2_bpe_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TORCHGPT_GPT2_BPE_DIR": str(gpt2_bpe_dir),
    }


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    args = get_model_args("debug")
    model = GPT(args)
    model.init_weights()
    out = tmp_path_factory.mktemp("model") / "model.pt"
    from dataclasses import asdict

    return export_model(model, out, model_args=asdict(args), config={})


def _results(folder: Path) -> dict:
    (path,) = folder.rglob("results_*.json")
    return json.loads(path.read_text())["results"][TASK]


def lm_eval(command: list[str], model_args: str, tasks: Path, out: Path, bpe: Path) -> str:
    """Run an lm-eval CLI on the test's task; return its stdout (results under `out`)."""
    proc = subprocess.run(
        [*command, "--model_args", model_args, "--tasks", TASK, "--include_path", str(tasks)]
        + ["--output_path", str(out)],
        env=offline_env(bpe),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_lm_eval_cli_runs_torchgpt_models(model_file, gpt2_bpe_dir, tmp_path):
    tasks = write_task(tmp_path / "tasks")
    out = tmp_path / "out"
    stdout = lm_eval(
        [str(BIN / "torchgpt-lm-eval"), "--model", "torchgpt"],
        f"pretrained={model_file}",
        tasks,
        out,
        gpt2_bpe_dir,
    )
    ours = _results(out)
    # The harness's own table, printed by its own CLI.
    assert f"|{TASK}" in stdout.replace(" ", "") and "acc" in stdout
    from torchgpt.eval import run_harness_eval
    from torchgpt.eval.loading import load_model

    model, _ = load_model(model_file)
    direct = run_harness_eval(model, tasks=[TASK], include_paths=[str(tasks)])
    assert ours["acc,none"] == direct["tasks"][TASK]["acc"]
    assert ours["acc_norm,none"] == direct["tasks"][TASK]["acc_norm"]


@pytest.fixture(scope="module", params=["debug", "debug-modern"])
def trained_run(request, token_shards, tmp_path_factory) -> Path:
    """A 2-step run with a DCP checkpoint, per flavor (GPT-2 layout; the modern one is Llama)."""
    from tests.trainer_utils import run_trainer

    dump = tmp_path_factory.mktemp(f"run-{request.param}")
    run_trainer(
        str(token_shards),
        str(dump),
        [
            "--model.flavor",
            request.param,
            "--training.steps",
            "2",
            "--checkpoint.enable",
            "true",
            "--checkpoint.interval",
            "2",
        ],
    )
    return dump / "torchgpt"


def test_dcp_to_torch_hf_folder_works_in_transformers_and_lm_eval(
    trained_run, gpt2_bpe_dir, tmp_path
):
    hf_dir = tmp_path / "hf"
    proc = subprocess.run(
        [
            sys.executable,
            "tools/dcp_to_torch.py",
            str(trained_run),
            str(tmp_path / "model.pt"),
            "--hf",
            str(hf_dir),
            "--tokenizer-dir",
            str(gpt2_bpe_dir),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {p.name for p in hf_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md"} <= names
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.eos_token == "<|endoftext|>" and tok.decode([15496, 995]) == "Hello world"
    family = json.loads((hf_dir / "config.json").read_text())["model_type"]
    assert family == ("llama" if "modern" in str(trained_run.parent) else "gpt2")
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    from torchgpt.eval.loading import load_model

    ours, _ = load_model(tmp_path / "model.pt")
    ids = torch.tensor([tok("The cat sat on the mat")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(
            hf_model(ids).logits[..., : ours.args.vocab_size], ours(ids), rtol=1e-4, atol=1e-4
        )
    # The harness's own hf backend loads the folder with no other argument.
    tasks = write_task(tmp_path / "tasks")
    results = {}
    for name, cmd, model_args in (
        ("hf", [str(BIN / "lm_eval"), "--model", "hf"], f"pretrained={hf_dir}"),
        (
            "torchgpt",
            [str(BIN / "torchgpt-lm-eval"), "--model", "torchgpt"],
            f"pretrained={tmp_path / 'model.pt'}",
        ),
    ):
        out = tmp_path / f"out-{name}"
        lm_eval(cmd, model_args, tasks, out, gpt2_bpe_dir)
        results[name] = _results(out)
    for metric in ("acc,none", "acc_norm,none"):
        assert results["torchgpt"][metric] == pytest.approx(results["hf"][metric], abs=1e-6)


def test_tools_eval_scores_a_users_task_yaml(model_file, gpt2_bpe_dir, shared_dir, tmp_path):
    tasks = write_task(tmp_path / "tasks")
    out = tmp_path / "eval"
    proc = subprocess.run(
        [
            sys.executable,
            "tools/eval.py",
            str(model_file),
            "--tasks",
            f"{TASK},piqa",
            "--include-path",
            str(tasks),
            "--data-dir",
            str(shared_dir / "data" / "eval"),
            "--limit",
            "4",
            "--no-samples",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=offline_env(gpt2_bpe_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = out.glob("*.json")
    record = json.loads(result.read_text())
    assert set(record["tasks"]) == {TASK, "piqa"} and record["task_include_paths"] == [str(tasks)]
    assert record["tasks"][TASK]["num_samples"] == 4
    assert f"{TASK}: acc {record['tasks'][TASK]['acc']:.4f}" in proc.stdout
    from torchgpt.eval import run_harness_eval
    from torchgpt.eval.loading import load_model

    model, _ = load_model(model_file)
    direct = run_harness_eval(model, tasks=[TASK], limit=4, include_paths=[str(tasks)])
    assert record["tasks"][TASK]["acc"] == direct["tasks"][TASK]["acc"]


def test_an_include_path_that_is_not_a_folder_is_a_clear_error(model_file, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "tools/eval.py",
            str(model_file),
            "--tasks",
            TASK,
            "--include-path",
            str(tmp_path / "nope"),
            "--no-samples",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        proc.returncode == 2 and "--include-path" in proc.stderr and "Traceback" not in proc.stderr
    )
