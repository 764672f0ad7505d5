"""Model-only export (one torch.save file) and reading DCP model weights with no process group."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from torchgpt.checkpoint import (
    CheckpointManager,
    ModelState,
    export_model,
    load_full_model_state_dict,
    load_model_only,
    save_model_only,
)


@dataclass
class TinyArgs:
    dim: int = 16
    n_layers: int = 2
    flavor: str = "tiny"


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    model.register_buffer("positions", torch.arange(5))  # an integer buffer stays integer
    return model


def test_model_only_round_trip_casts_floats_only(tmp_path):
    model = _model()
    config = {"run": {"dump_folder": tmp_path}, "training": {"lr": 3e-4}}
    path = save_model_only(
        model.state_dict(), TinyArgs(), config, tmp_path / "model.pt", torch.bfloat16
    )
    assert path == tmp_path / "model.pt" and sorted(p.name for p in tmp_path.iterdir()) == [
        "model.pt"
    ]
    loaded = load_model_only(path)
    assert loaded["model_args"] == {"dim": 16, "n_layers": 2, "flavor": "tiny"}
    assert loaded["config"] == {"run": {"dump_folder": str(tmp_path)}, "training": {"lr": 3e-4}}
    weights = loaded["model"]
    assert set(weights) == set(model.state_dict())
    assert weights["0.weight"].dtype == torch.bfloat16
    assert torch.equal(weights["0.weight"], model[0].weight.detach().to(torch.bfloat16))
    assert weights["positions"].dtype == torch.int64 and torch.equal(
        weights["positions"], torch.arange(5)
    )

    full = save_model_only(model.state_dict(), None, None, tmp_path / "fp32.pt")
    assert torch.equal(load_model_only(full)["model"]["2.weight"], model[2].weight.detach())
    assert (
        load_model_only(export_model(model, tmp_path / "e.pt"))["model"]["2.bias"].dtype
        == torch.float32
    )


def test_load_model_only_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path / 'missing.pt'} does not exist"):
        load_model_only(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="is a folder: for a DCP checkpoint use load_full_model"):
        load_model_only(tmp_path)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a torchgpt model export"):
        load_model_only(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt is unreadable"):
        load_model_only(tmp_path / "junk.pt")


def test_full_model_state_dict_from_dcp_without_process_group(tmp_path):
    model = _model()
    path = CheckpointManager(tmp_path, states={"model": ModelState(model)}, interval=1).save(1)
    weights = load_full_model_state_dict(path)
    expected = model.state_dict()
    assert set(weights) == set(expected)
    for key, value in expected.items():
        assert torch.equal(weights[key], value), key
    with pytest.raises(ValueError, match="not a DCP checkpoint folder"):
        load_full_model_state_dict(Path(tmp_path))
    with pytest.raises(ValueError, match="holds no tensors under 'ema.'"):
        load_full_model_state_dict(path, prefix="ema")
