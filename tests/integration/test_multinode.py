"""Two nodes on one machine: train_configs/slurm_example.sbatch with stand-ins for Slurm.

`srun` here starts the script's command once per "node" (SLURM_NODEID 0 and 1), as Slurm does
with --ntasks-per-node=1, and `scontrol` names localhost as the head node; each task is a full
run_train.sh launcher (torchrun with --nnodes 2 and a c10d rendezvous on localhost) with 2
processes. The job trains the debug model with HSDP (replicate 2 across the nodes x shard 2
within each) and must reproduce, in fp32, the losses of the same layout on one node of 4.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.trainer_utils import BASE, launcher_env

REPO = Path(__file__).resolve().parents[2]

SRUN = """#!/usr/bin/env bash
# srun stand-in: one task per node, all at once; the job fails if any task fails.
while [[ "$1" == --* ]]; do shift; done
pids=()
for node in $(seq 0 $((SLURM_NNODES - 1))); do
  SLURM_NODEID=$node SLURM_PROCID=$node "$@" > "$SRUN_LOG_DIR/node$node.log" 2>&1 &
  pids+=($!)
done
code=0
for pid in "${pids[@]}"; do wait "$pid" || code=$?; done
exit $code
"""
SCONTROL = """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] && echo localhost
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _losses(run_dir: Path) -> list[float]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def _overrides(data: Path, dump: Path) -> list[str]:
    return [
        *BASE,
        "--data.dataset_path",
        str(data),
        "--job.dump_folder",
        str(dump),
        "--training.steps",
        "6",
        "--training.global_batch_tokens",
        "1024",
        "--checkpoint.enable",
        "true",
        "--checkpoint.interval",
        "6",
    ]


def _fake_slurm(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_two_nodes_hsdp_match_one_node_of_four(token_shards, tmp_path):
    _fake_slurm(tmp_path / "bin")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = launcher_env(
        {
            "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
            "NGPU": "2",
            "SLURM_JOB_NODELIST": "localhost",
            "SLURM_NNODES": "2",
            "SLURM_JOB_ID": "torchgpt-test",
            "RDZV_PORT": str(_free_port()),
            "SRUN_LOG_DIR": str(logs),
        }
    )
    job = subprocess.run(
        [
            "bash",
            "train_configs/slurm_example.sbatch",
            "train_configs/debug_model.toml",
            *_overrides(token_shards, tmp_path / "nodes"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    node_logs = {p.name: p.read_text() for p in sorted(logs.glob("node*.log"))}
    assert job.returncode == 0, job.stderr[-2000:] + "\n".join(
        f"--- {k}\n{v[-3000:]}" for k, v in node_logs.items()
    )
    assert set(node_logs) == {"node0.log", "node1.log"}
    one_node = subprocess.run(
        [
            "./run_train.sh",
            "train_configs/debug_model.toml",
            *_overrides(token_shards, tmp_path / "single"),
            "--parallelism.dp_replicate",
            "2",
            "--parallelism.dp_shard",
            "2",
        ],
        cwd=REPO,
        env=launcher_env({"NGPU": "4"}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one_node.returncode == 0, one_node.stderr[-3000:]

    nodes_run, single_run = tmp_path / "nodes" / "debug", tmp_path / "single" / "debug"
    (launch,) = json.loads((nodes_run / "run_info.json").read_text())["launches"]
    assert launch["world_size"] == 4
    assert "dp_replicate=2, dp_shard=2" in launch["parallelism"]
    two, four = _losses(nodes_run), _losses(single_run)
    assert len(two) == len(four) == 6
    assert two == pytest.approx(four, rel=1e-5, abs=0)
    assert (nodes_run / "checkpoints" / "step-6").is_dir() and (nodes_run / "model.pt").exists()
