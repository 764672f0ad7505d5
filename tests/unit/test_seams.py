"""The seams: a new optimizer is one file defining SPEC plus the config value, and the Trainer
and the estimator both pick it up; unknown model or optimizer names are refused by the config."""

from __future__ import annotations

import sys

import pytest

import torchgpt.optim
from tests.trainer_utils import BASE, read_metrics, train_in_process
from torchgpt.config.job_config import ConfigError
from torchgpt.config.manager import load_config
from torchgpt.estimation.memory import analytic_memory
from torchgpt.estimation.plan import TrainingPlan
from torchgpt.optim import registry
from torchgpt.step import spec

SGD_FILE = '''"""Plain SGD with momentum: a test optimizer of one file."""
import torch
from torchgpt.optim.adamw import local_params
from torchgpt.optim.registry import OptimizerSpec


def _build(model, section, device_type):
    return torch.optim.SGD(model.parameters(), lr=section.lr, momentum=0.9)


def _state(args, shard, tp):
    return [("SGD momentum", "optimizer state", 4 * local_params(args, shard, tp))]


SPEC = OptimizerSpec(
    build=_build,
    state_rows=_state,
    step_rows=lambda args, shard, sharded, section, tp: [],
    doc="SGD with momentum",
)
'''


@pytest.fixture
def sgd_file(tmp_path, monkeypatch):
    """torchgpt/optim/sgd_test.py, as a user would add it (here in a folder on the package's
    search path, so the checkout stays untouched)."""
    (tmp_path / "sgd_test.py").write_text(SGD_FILE)
    monkeypatch.setattr(torchgpt.optim, "__path__", [*torchgpt.optim.__path__, str(tmp_path)])
    yield
    sys.modules.pop("torchgpt.optim.sgd_test", None)


def test_the_registries_list_what_is_there():
    assert registry.available() == ["adamw", "muon"]
    assert spec.available() == ["gpt"]


def test_a_new_optimizer_file_trains_and_is_estimated(sgd_file, token_shards, tmp_path):
    assert "sgd_test" in registry.available()
    args = ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
    run_dir = train_in_process(None, BASE + args + ["--optimizer.name", "sgd_test"])
    losses = read_metrics(run_dir)
    assert len(losses) == 10 and losses[-1] < losses[0]  # SGD trained the model
    cfg = load_config(None, BASE + ["--optimizer.name", "sgd_test"], world_size=1)
    plan = TrainingPlan.from_config(cfg, 1)
    rows = {i.name: i.nbytes for i in analytic_memory(plan).items}
    adamw = TrainingPlan.from_config(load_config(None, BASE, world_size=1), 1)
    # Its own memory model: one fp32 buffer per parameter where AdamW keeps two.
    n = {i.name: i.nbytes for i in analytic_memory(adamw).items}["fp32 master weights"]
    assert rows.get("SGD momentum") == n


@pytest.mark.parametrize(
    ("key", "value", "known"),
    [("optimizer.name", "adamw2", "adamw, muon"), ("model.name", "llama", "gpt")],
)
def test_unknown_names_are_refused_with_the_list(key, value, known):
    with pytest.raises(ConfigError, match=f"{key}: unknown '{value}'.*known: {known}"):
        load_config(None, [f"--{key}", value])
