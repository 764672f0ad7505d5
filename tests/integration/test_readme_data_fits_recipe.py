"""The README's prepare command and the recipe agree (issue #22): data prepared exactly as the
README says, at 1/100 of its size, passes the recipe's preflight at 1/100 of its val set; a val
or train split too small for the run is refused by preflight, exit 2, before a model exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_launcher import fresh_env, launch
from torchgpt.config.job_config import ConfigError
from torchgpt.config.manager import load_config
from torchgpt.data.prepare import DEFAULT_VAL_FRACTION
from torchgpt.run.preflight import preflight

REPO = Path(__file__).resolve().parents[2]
RECIPES = [
    REPO / "train_configs" / n
    for n in ("mini_gpt_100m.toml", "modern_muon_100m.toml", "speedrun_124m.toml")
]
SCALE = 100  # 1e9 tokens -> 1e7: about 3 s of tokenizing on 2 cores


def readme_prepare_command() -> list[str]:
    """The README's hub prepare line (the one that feeds the recipe), as argv."""
    text = (REPO / "README.md").read_text()
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("python tools/prepare_data.py --out data/fineweb_edu")
    )
    return shlex.split(line.split("#")[0])


def _max_tokens(argv: list[str]) -> float:
    return float(argv[argv.index("--max-tokens") + 1])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_the_recipe_val_set_fits_the_readme_holdout_with_margin(recipe):
    """At the README's size the hash holdout is ~val_fraction of the tokens, give or take
    document noise and each shard's last partial window: the recipe asks at most 90% of it."""
    cfg = load_config(recipe, [], world_size=None)
    held_windows = (
        DEFAULT_VAL_FRACTION * _max_tokens(readme_prepare_command()) / (cfg.training.seq_len + 1)
    )
    asked = cfg.validation.tokens // cfg.training.seq_len
    assert asked <= 0.9 * held_windows, (asked, held_windows)


@pytest.fixture(scope="module")
def readme_data(tmp_path_factory, shared_dir) -> Path:
    """The README's command at 1/SCALE size, the hub source swapped for the shared parquet."""
    argv = readme_prepare_command()
    assert argv[:2] == ["python", "tools/prepare_data.py"]
    out = tmp_path_factory.mktemp("readme") / "fineweb_edu"
    args = argv[2:]
    args[args.index("--out") + 1] = str(out)
    args[args.index("--max-tokens") + 1] = f"{_max_tokens(argv) / SCALE:.0f}"
    args += ["--input", str(shared_dir / "data" / "text" / "openstax"), "--no-progress"]
    subprocess.run(
        [sys.executable, "tools/prepare_data.py", *args], cwd=REPO, check=True, timeout=300
    )
    return out


@pytest.mark.parametrize("world_size", [1, 8])
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_the_recipe_preflight_passes_on_the_readme_data_scaled(readme_data, recipe, world_size):
    cfg = load_config(recipe, [], world_size=world_size)
    val_tokens = cfg.validation.tokens // SCALE // 1024 * 1024
    cfg = preflight(
        recipe,
        [f"--data.dataset_path={readme_data}", f"--validation.tokens={val_tokens}"]
        + ([f"--parallelism.dp_shard={world_size}"] if world_size > 1 else []),
        world_size=world_size,
    )
    assert cfg.validation.tokens == val_tokens


def test_a_val_set_beyond_the_holdout_is_refused_naming_both_numbers(readme_data):
    recipe = RECIPES[0]
    with pytest.raises(ConfigError) as e:
        preflight(
            recipe,
            [f"--data.dataset_path={readme_data}", "--validation.tokens=10485760"],
            world_size=1,
        )
    (problem,) = e.value.problems
    windows = re.search(r"holds ([\d,]+) windows", problem).group(1)
    assert problem.startswith("validation.tokens: 10,485,760 needs 10,240 windows"), problem
    assert f"lower validation.tokens to at most {int(windows.replace(',', '')) * 1024:,}" in (
        problem
    )


def test_run_train_refuses_small_splits_with_exit_2_before_a_model_is_built(readme_data, tmp_path):
    runs = tmp_path / "runs"
    proc = launch(
        [
            "train_configs/mini_gpt_100m.toml",
            f"--data.dataset_path={readme_data}",
            "--validation.tokens=10485760",
            "--training.global_batch_tokens=1073741824",  # one step: 1M windows, more than exist
            f"--job.dump_folder={runs}",
        ],
        fresh_env(),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "validation.tokens: 10,485,760 needs 10,240 windows" in proc.stderr
    assert "one optimizer step reads 1,048,576" in proc.stderr
    assert "Traceback" not in proc.stderr and "model" not in proc.stdout
    assert not runs.exists()
