"""tools/dcp_to_torch.py on a checkpoint saved by 2 FSDP ranks, read back with no process group:
the single file and the transformers folder give the logits of the checkpointed model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer_utils import run_trainer
from torchgpt.checkpoint import (
    CheckpointManager,
    ModelState,
    dcp_to_torch,
    load_model_from_checkpoint,
)
from torchgpt.model import GPT, ModelArgs, get_model_args
from torchgpt.testing import run_distributed_test

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import dcp_to_torch as dcp_to_torch_cli  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(token_shards, tmp_path_factory) -> Path:
    """RUN_DIR/checkpoints/step-2 of a 2-rank FSDP2 run of the debug model."""
    dump = tmp_path_factory.mktemp("dcp_to_torch")
    overrides = ["--training.steps", "2", "--checkpoint.enable", "true"]
    overrides += ["--checkpoint.interval", "2", "--job.name", "run"]
    run_distributed_test(run_trainer, 2, args=(str(token_shards), str(dump), overrides))
    return dump / "run" / "checkpoints" / "step-2"


def live_model(checkpoint: Path) -> GPT:
    """A fresh GPT (other weights) loaded from the checkpoint as a resuming trainer would."""
    model = GPT(get_model_args("debug"))
    model.init_weights(seed=123)
    run_dir = checkpoint.parent.parent
    manager = CheckpointManager(run_dir, states={"model": ModelState(model)}, interval=1)
    assert manager.load(load_path=str(checkpoint)) == 2
    return model.eval()


def tokens() -> torch.Tensor:
    return torch.randint(0, 50257, (2, 48), generator=torch.Generator().manual_seed(0))


def test_single_file_and_hf_folder_give_the_checkpoint_logits(checkpoint, tmp_path):
    out, hf_dir = tmp_path / "model.pt", tmp_path / "hf"
    cmd = [sys.executable, str(REPO / "tools" / "dcp_to_torch.py"), str(checkpoint), str(out)]
    proc = subprocess.run(cmd + ["--hf", str(hf_dir)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout and f"wrote {hf_dir}" in proc.stdout

    payload = torch.load(out, map_location="cpu", weights_only=True)  # plain tensors and dicts
    model_args = ModelArgs(**payload["model_args"])
    assert model_args == get_model_args("debug")
    assert payload["step"] == 2 and payload["config"]["training"]["steps"] == 2
    weights = payload["model"]
    assert set(weights) == set(GPT(model_args).state_dict())  # no wrapper or "model." prefixes
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert weights["output.weight"] is weights["tok_embeddings.weight"]  # tied: stored once

    model = GPT(model_args)
    model.load_state_dict(weights)
    model.init_buffers()
    with torch.no_grad():
        expected = live_model(checkpoint)(tokens())
        assert torch.equal(model.eval()(tokens()), expected)
        assert torch.equal(load_model_from_checkpoint(out)[0](tokens()), expected)

    transformers = pytest.importorskip("transformers")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        theirs = hf_model.eval()(tokens()).logits
    torch.testing.assert_close(theirs, expected, rtol=1e-5, atol=1e-5)


def test_bf16_conversion_and_bad_paths(checkpoint, tmp_path, capsys):
    run_dir = checkpoint.parent.parent  # a run directory: its newest checkpoint, not model.pt
    path, _ = dcp_to_torch(run_dir, tmp_path / "bf16.pt", dtype=torch.bfloat16)
    weights = torch.load(path, weights_only=True)["model"]
    fp32 = live_model(checkpoint).state_dict()
    for key, value in fp32.items():
        assert weights[key].dtype == torch.bfloat16 and torch.equal(
            weights[key], value.to(torch.bfloat16)
        ), key

    assert dcp_to_torch_cli.main([str(tmp_path), str(tmp_path / "x.pt")]) == 2
    assert f"error: {tmp_path} is neither a DCP checkpoint folder" in capsys.readouterr().err
