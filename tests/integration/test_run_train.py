"""run_train.sh end to end under torchrun: the debug config on 2 processes, and the 100M recipe.

These launch real torchrun jobs (gloo on CPU), so they are the slowest tests; configs are cut to
a few steps with command-line overrides, exactly as a user would.
"""

import json
import os
import subprocess
from pathlib import Path

from tests.trainer_utils import launcher_env

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], env_extra: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    env = launcher_env(env_extra)
    proc = subprocess.run(
        [str(REPO / "run_train.sh"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_debug_config_two_processes(token_shards, tmp_path):
    proc = _run(
        [
            "train_configs/debug_model.toml",
            "--data.dataset_path",
            str(token_shards),
            "--job.dump_folder",
            str(tmp_path),
            "--training.steps",
            "12",
            "--checkpoint.interval",
            "6",
            "--validation.interval",
            "6",
            "--validation.tokens",
            "8192",
            "--metrics.log_freq",
            "3",
            "--metrics.enable_wandb",
            "true",
        ],
        {"NGPU": "2", "WANDB_MODE": "offline"},
    )
    run_dir = tmp_path / "debug"
    records = _records(run_dir)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train] == [1, 3, 6, 9, 12]
    assert train[-1]["loss"] < train[0]["loss"] - 1.0
    for key in (
        "grad_norm",
        "lr",
        "tokens_per_s",
        "tokens_per_s_per_device",
        "peak_memory_gib",
        "data_share",
        "time_forward_backward_s",
        "tokens_seen",
    ):
        assert key in train[-1], key
    assert train[-1]["tokens_seen"] == 12 * 4096
    assert [r["step"] for r in val] == [6, 12]
    assert list((run_dir / "tb").glob("events.out.tfevents.*")), "no TensorBoard events"
    assert list((run_dir / "wandb").glob("offline-run-*")), "no W&B offline run"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == ["step-12", "step-6"]
    assert (run_dir / "model.pt").exists()
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["training"]["steps"] == 12 and cfg["model"]["flavor"] == "debug"
    assert "step     12/12" in proc.stdout + proc.stderr
    # The run directory has its own log and a record of the launch (command, machine).
    log = (run_dir / "train.log").read_text()
    assert "step     12/12" in log and "checkpoint step 12 ->" in log
    (launch,) = json.loads((run_dir / "run_info.json").read_text())["launches"]
    assert launch["world_size"] == 2 and launch["device"] == "cpu"
    assert "train_configs/debug_model.toml" in launch["command"]
    assert launch["host"]["num_cpus"] == os.cpu_count() and launch["versions"]["torch"]


def test_mini_gpt_100m_recipe_two_real_steps(token_shards, tmp_path):
    """The production config (gpt2-124m, auto precision, compile, auto AC, FSDP2) for 3 steps.

    Only batch geometry and warmup are cut (a 1-step warmup so the lr is not ~0 in 3 steps);
    activation checkpointing stays "auto", sized for this host's memory per rank.
    """
    _run(
        [
            "train_configs/mini_gpt_100m.toml",
            "--data.dataset_path",
            str(token_shards),
            "--data.num_workers",
            "0",
            "--job.dump_folder",
            str(tmp_path),
            "--training.steps",
            "3",
            "--training.seq_len",
            "128",
            "--training.micro_batch_size",
            "1",
            "--training.global_batch_tokens",
            "512",
            "--lr_scheduler.warmup_steps",
            "1",
            "--validation.enable",
            "false",
            "--checkpoint.enable",
            "false",
            "--metrics.log_freq",
            "1",
        ],
        {"NGPU": "2"},
        timeout=900,
    )
    losses = [r["loss"] for r in _records(tmp_path / "mini_gpt_100m") if "loss" in r]
    assert len(losses) == 3 and losses[2] < losses[0]
    run_dir = tmp_path / "mini_gpt_100m"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["activation_checkpoint"]["mode"] in ("none", "selective", "full")
    assert config["training"]["micro_batch_size"] == 1
    # W&B is on in the recipe: offline here (no key), with the command that uploads the run.
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert f"upload it with `wandb sync {offline}`" in (run_dir / "train.log").read_text()
    assert (
        "auto sizing (activation_checkpoint.mode): micro_batch_size 1"
        in (run_dir / "train.log").read_text()
    )


def test_in_training_harness_eval_on_two_processes(token_shards, shared_dir, tmp_path):
    """eval.enable at 2 processes (bf16): both ranks score the step's weights on the training
    device in the training dtype, each its share of the requests; the scores are those of the
    same weights scored afterwards by the harness in one process in bf16."""
    from torchgpt.eval import run_harness_eval
    from torchgpt.eval.loading import load_model

    eval_dir = str(shared_dir / "data" / "eval")
    _run(
        [
            "train_configs/debug_model.toml",
            "--data.dataset_path",
            str(token_shards),
            "--job.dump_folder",
            str(tmp_path),
            "--training.steps",
            "4",
            "--training.mixed_precision",
            "bf16",
            # bf16 shapes kept small: on an AVX2-only CPU a bf16 matmul runs ~65x slower than fp32
            *("--training.seq_len", "64", "--training.micro_batch_size", "2"),
            *("--training.global_batch_tokens", "256"),
            "--validation.enable",
            "false",
            "--eval.enable",
            "true",
            "--eval.interval",
            "4",
            "--eval.tasks",
            "piqa,arc_easy",
            "--eval.limit",
            "12",
            "--eval.data_dir",
            eval_dir,
        ],
        {"NGPU": "2"},
    )
    run_dir = tmp_path / "debug"
    (record,) = [r for r in _records(run_dir) if "eval/piqa/acc" in r]
    assert record["step"] == 4
    log = (run_dir / "train.log").read_text()
    assert "harness (limit 12, cpu in bfloat16, requests sharded over 2 ranks" in log
    model, _ = load_model(run_dir / "model.pt")
    again = run_harness_eval(
        model, tasks=["piqa", "arc_easy"], limit=12, data_dir=eval_dir, dtype="bfloat16"
    )
    for task in ("piqa", "arc_easy"):
        for metric in ("acc", "acc_norm"):
            assert record[f"eval/{task}/{metric}"] == again["tasks"][task][metric], (task, metric)
