"""Config system: precedence, every bad-config class reported at once, --help, exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from torchgpt.config.job_config import ConfigError, JobConfig
from torchgpt.config.manager import field_docs, help_text, load_config

REPO = Path(__file__).resolve().parents[2]


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_precedence_cli_over_toml_over_default(tmp_path):
    path = _toml(tmp_path, "[training]\nsteps = 7\nseq_len = 128\n[optimizer]\nlr = 1e-3\n")
    cfg = load_config(path, ["--training.steps", "20", "--compile.enable=false"])
    assert cfg.training.steps == 20  # CLI beats TOML
    assert cfg.training.seq_len == 128  # TOML beats default
    assert cfg.optimizer.lr == 1e-3
    assert cfg.training.micro_batch_size == JobConfig().training.micro_batch_size  # default
    assert cfg.compile.enable is False


def test_cli_types_are_coerced(tmp_path):
    cfg = load_config(
        None,
        ["--compile.enable", "true", "--optimizer.lr", "3e-4", "--eval.tasks", "piqa,arc_easy"],
    )
    assert cfg.compile.enable is True and cfg.optimizer.lr == 3e-4
    assert cfg.eval.tasks == ["piqa", "arc_easy"]


def test_every_problem_reported_once(tmp_path):
    path = _toml(
        tmp_path,
        '[training]\nstpes = 3\nmicro_batch_size = "eight"\n[optimizer]\nlr = -1.0\n'
        '[activation_checkpoint]\nmode = "partial"\n[modle]\nflavor = "debug"\n',
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, ["--training.seq_len", "abc", "--nope.key", "1"])
    msg = str(err.value)
    assert "unknown key 'training.stpes' (did you mean 'training.steps'?)" in msg
    assert "training.micro_batch_size: expected an integer or 'auto', got 'eight'" in msg
    assert "optimizer.lr: must be > 0, got -1.0" in msg
    assert "activation_checkpoint.mode: 'partial' is not one of none, full, selective" in msg
    assert "unknown key 'modle.flavor' (did you mean 'model.flavor'?)" in msg
    assert "training.seq_len: expected an integer, got 'abc'" in msg
    assert "unknown key 'nope.key'" in msg
    assert len(err.value.problems) == 7


def test_inconsistent_batch_arithmetic_names_the_factors():
    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            [
                "--training.global_batch_tokens",
                "1000",
                "--training.micro_batch_size",
                "2",
                "--training.seq_len",
                "64",
            ],
            world_size=2,
        )
    assert "not divisible by micro_batch_size x seq_len x data-parallel degree = 2 x 64 x 2" in str(
        err.value
    )


def test_layout_must_match_world_size():
    with pytest.raises(
        ConfigError, match=r"dp_replicate\(3\) x dp_shard\(2\) = 6 != world_size\(4\)"
    ):
        load_config(
            None, ["--parallelism.dp_replicate", "3", "--parallelism.dp_shard", "2"], world_size=4
        )


def test_unknown_flavor_and_too_long_seq():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["--model.flavor", "gpt2-124", "--training.steps", "0"])
    assert "unknown flavor 'gpt2-124'" in str(err.value) and "gpt2-124m" in str(err.value)
    assert "training.steps: must be > 0" in str(err.value)
    with pytest.raises(ConfigError, match="exceeds the context"):
        load_config(None, ["--model.flavor", "gpt2-124m", "--training.seq_len", "4096"])


def test_help_lists_every_key_with_type_default_doc():
    text = help_text()
    cfg = JobConfig().to_dict()
    for section, fields in cfg.items():
        for name in fields:
            assert f"--{section}.{name}  (" in text, f"{section}.{name} missing from --help"
    assert "--training.steps  (int, default 100)" in text
    assert "Optimizer steps to run." in text
    # Every field carries a doc string.
    from torchgpt.config import job_config as c

    for cls in (c.Job, c.Model, c.Data, c.Training, c.Optimizer, c.Checkpoint, c.Eval):
        assert set(field_docs(cls)) == set(cls.__dataclass_fields__), cls


@pytest.mark.parametrize("config", sorted((REPO / "train_configs").glob("*.toml")))
def test_shipped_configs_are_valid(config):
    # one process, or the fewest a tensor-parallel recipe runs on
    tp = tomllib.loads(config.read_text()).get("parallelism", {}).get("tp", 1)
    load_config(config, world_size=tp)


def test_bad_config_exits_2_before_starting(tmp_path):
    path = _toml(tmp_path, "[training]\nstpes = 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "torchgpt.train", str(path), "--optimizer.lr", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "did you mean 'training.steps'" in proc.stderr
    assert "optimizer.lr: expected a number, got 'x'" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_help_exits_0():
    proc = subprocess.run(
        [sys.executable, "-m", "torchgpt.train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "--checkpoint.keep_latest_k" in proc.stdout
    json.dumps(JobConfig().to_dict())  # the resolved config is JSON-serialisable
