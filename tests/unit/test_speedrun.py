"""The speedrun flavor and recipe (issue #26): the block is modern + SPEEDRUN_OPTIONS, every one
of those options is an arm of bench/speedrun.py's ablation, the bench's speedrun arm is the
recipe at CPU size, and the recipe differs from modern + Muon only in the block and schedule."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys

import pytest

from tests.conftest import REPO_ROOT as REPO
from torchgpt.config.job_config import ConfigError
from torchgpt.config.manager import load_config
from torchgpt.estimation.memory import analytic_memory
from torchgpt.estimation.plan import TrainingPlan
from torchgpt.estimation.trace import trace_memory
from torchgpt.model.args import FLAVORS, SPEEDRUN_OPTIONS, get_model_args
from torchgpt.model.hf import hf_family
from torchgpt.step.config import TrainModuleConfig

DEBUG = REPO / "train_configs" / "debug_model.toml"
RECIPE = REPO / "train_configs" / "speedrun_124m.toml"
MODERN_MUON = REPO / "train_configs" / "modern_muon_100m.toml"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("speedrun_bench", REPO / "bench/speedrun.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "bench"))
    return module


def _as_config_value(text: str) -> object:
    return {"true": True, "false": False}.get(text, int(text) if text.isdigit() else text)


def _pairs(overrides: list[str]) -> dict[str, object]:
    """["--model.mlp_type", "relu2", ...] -> {"model.mlp_type": "relu2", ...}"""
    assert len(overrides) % 2 == 0, overrides
    keys, values = overrides[::2], overrides[1::2]
    return {k.removeprefix("--"): _as_config_value(v) for k, v in zip(keys, values, strict=True)}


@pytest.mark.parametrize(
    "flavor,modern",
    [
        ("speedrun-d384-l6", FLAVORS["modern-d384-l6"]),
        ("speedrun-124m", FLAVORS["modern-124m"]),
        ("debug-speedrun", dataclasses.replace(FLAVORS["debug-modern"], n_layers=4)),
    ],
)
def test_the_speedrun_flavors_are_modern_plus_the_options(flavor, modern):
    assert FLAVORS[flavor] == dataclasses.replace(modern, **SPEEDRUN_OPTIONS)


def test_every_speedrun_option_is_an_arm_of_the_ablation(bench):
    """Not taken on faith: each option of the block was measured alone on top of the baseline."""
    ablated = {}
    for extra in bench.OPTIONS.values():
        ablated.update(_pairs(extra))
    for key, value in SPEEDRUN_OPTIONS.items():
        assert ablated.get(f"model.{key}") == value, key


def test_the_bench_speedrun_arm_is_the_recipe_at_cpu_size(bench):
    flavor, overrides = bench.ARMS["speedrun"]
    base_flavor, base = bench.ARMS["base"]
    assert FLAVORS[flavor] == dataclasses.replace(FLAVORS[base_flavor], **SPEEDRUN_OPTIONS)
    assert overrides[: len(base)] == base
    cfg = load_config(RECIPE, [], world_size=None)
    assert cfg.model.flavor == "speedrun-124m"
    for key, value in _pairs(overrides).items():
        section, name = key.split(".")
        got = getattr(getattr(cfg, section), name)
        assert got == pytest.approx(float(value)) if isinstance(got, float) else got == value, key


def test_the_recipe_is_modern_muon_but_for_block_and_schedule():
    ours = load_config(RECIPE, [], world_size=None).to_dict()
    theirs = load_config(MODERN_MUON, [], world_size=None).to_dict()
    changed = {f"{s}.{k}" for s in ours for k in ours[s] if ours[s][k] != theirs[s][k]}
    assert changed == {"job.name", "model.flavor", "lr_scheduler.decay_type"}


def test_unset_block_keys_keep_the_flavors_options_and_set_ones_replace_them():
    def args(*flags):
        cfg = load_config(DEBUG, ["--model.flavor=debug-speedrun", *flags], world_size=1)
        return TrainModuleConfig.from_job(cfg, mixed_precision="fp32").model_args

    assert args() == FLAVORS["debug-speedrun"]
    assert args("--model.tie_embeddings=true", "--model.value_embeds=0") == dataclasses.replace(
        FLAVORS["debug-speedrun"], tie_embeddings=True, value_embeds=0
    )


def test_tensor_parallelism_names_the_flavors_options_it_cannot_take():
    flags = ["--model.flavor=debug-speedrun", "--parallelism.tp=2", "--optimizer.name=adamw"]
    with pytest.raises(ConfigError) as refused:
        load_config(DEBUG, [*flags, "--model.qkv_layout=per_head"], world_size=2)
    named = [p for p in refused.value.problems if "(flavor debug-speedrun)" in p]
    assert [p.split()[0] for p in named] == [
        "model.tie_embeddings",
        "model.unet_skips",
        "model.value_embeds",
    ]


def test_the_speedrun_block_is_refused_by_the_hf_export_by_name():
    with pytest.raises(ValueError) as refused:
        hf_family(get_model_args("speedrun-124m"))
    for named in ("model.value_embeds = 2", "model.unet_skips", 'model.mlp_type = "relu2"'):
        assert named in str(refused.value)


@pytest.mark.parametrize("nproc", [1, 2])
def test_the_estimator_counts_the_whole_block_as_the_trace_sees_it(nproc):
    flags = ["--model.flavor=debug-speedrun", "--activation_checkpoint.mode=selective"]
    cfg = load_config(DEBUG, flags, world_size=nproc)
    plan = TrainingPlan.from_config(cfg, nproc)
    assert dataclasses.replace(plan.args, **SPEEDRUN_OPTIONS) == plan.args
    assert analytic_memory(plan).peak_bytes == pytest.approx(
        trace_memory(plan).peak_bytes, rel=0.01
    )


def test_the_speedrun_recipe_trains_compiled(token_shards, tmp_path):
    """The recipe as users run it (compiled, its schedule and optimizer), at debug size."""
    from tests.trainer_utils import read_metrics, train_in_process

    run_dir = train_in_process(
        str(RECIPE),
        [
            *("--model.flavor", "debug-speedrun", "--data.dataset_path", str(token_shards)),
            *("--data.num_workers", "0", "--job.dump_folder", str(tmp_path)),
            *("--training.steps", "5", "--training.seq_len", "64"),
            *("--training.micro_batch_size", "4", "--training.global_batch_tokens", "512"),
            *("--lr_scheduler.warmup_steps", "1", "--validation.enable", "false"),
            *("--checkpoint.enable", "false", "--metrics.log_freq", "1"),
            *("--metrics.enable_wandb", "false", "--metrics.enable_tensorboard", "false"),
        ],
    )
    losses = read_metrics(run_dir)
    assert len(losses) == 5 and losses[-1] < losses[0]
    lrs = read_metrics(run_dir, "lr")
    # wsd, 1 decay step: the peak, then the last step at the minimum ("lr" is logged after
    # each step's scheduler update, so step k shows the lr of step k + 1)
    assert lrs == pytest.approx([0.02, 0.02, 0.02, 0.002, 0.002])


def test_the_step_time_mode_steps_every_arm_in_turn(bench, token_shards, tmp_path, monkeypatch):
    # the arms at debug size: the mechanism, not the figures
    monkeypatch.setitem(bench.ARMS, "base", ("debug-modern", bench.BASE))
    monkeypatch.setitem(bench.ARMS, "speedrun", ("debug-speedrun", bench.BASE + bench.SPEEDRUN_RUN))
    args = argparse.Namespace(
        tokens=1024, batch_tokens=256, seq_len=64, micro_batch=4, val_interval=100,
        val_tokens=256, seed=0, adamw_lr=3e-3, out=tmp_path, rounds=2,
        overrides=["--validation.enable=false", "--metrics.enable_wandb=false"],
    )  # fmt: skip
    times = bench.step_times(["base", "speedrun"], args, token_shards)
    assert [len(t["rounds_s"]) for t in times.values()] == [2, 2]
    assert times["base"]["vs_base"] == 1.0 and times["speedrun"]["vs_base"] > 0
    assert bench.report_step_times(times, tmp_path / "step_time.json") == 0
    assert json.loads((tmp_path / "step_time.json").read_text()) == times
