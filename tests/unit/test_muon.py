"""MuonWithAdamW on one process: the parameter split, torch.optim.Muon's math bit for bit, AdamW's
for the rest, and a state_dict round trip that keeps both halves working."""

from __future__ import annotations

import copy

import pytest
import torch

from torchgpt.config.job_config import Optimizer
from torchgpt.model import GPT
from torchgpt.model.args import get_model_args
from torchgpt.optim.lr_schedule import build_lr_scheduler
from torchgpt.optim.muon import MuonWithAdamW, muon_parameter_names
from torchgpt.optim.registry import optimizer_spec

MUON = {"muon_lr": 0.02, "muon_momentum": 0.95, "muon_weight_decay": 0.01}


def _model(flavor: str) -> GPT:
    torch.manual_seed(0)
    model = GPT(get_model_args(flavor))
    model.init_weights(seed=0)
    return model


def _backward(model: GPT, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 1000, (2, 16), generator=g)
    model(tokens).float().logsumexp(-1).mean().backward()


def test_parameter_split_gpt2():
    muon, adamw = muon_parameter_names(_model("debug"))
    assert muon and all(n.startswith("layers.") and n.endswith(".weight") for n in muon)
    assert {n.split(".", 2)[2] for n in muon} == {
        "attn.qkv.weight",
        "attn.proj.weight",
        "mlp.fc.weight",
        "mlp.proj.weight",
    }
    # Embeddings (tied with the lm-head: one tensor), positions, norms and biases: AdamW.
    assert "tok_embeddings.weight" in adamw and "pos_embeddings.weight" in adamw
    assert "output.weight" not in adamw + muon
    assert all(("norm" in n or n.endswith(".bias") or "embeddings" in n) for n in adamw)


def test_parameter_split_sees_through_wrappers():
    model = _model("debug")
    wrapped = torch.nn.Module()
    wrapped.module = model  # as DDP names them: module.layers.0...
    assert muon_parameter_names(wrapped)[0] == [
        f"module.{n}" for n in muon_parameter_names(model)[0]
    ]


def test_parameter_split_modern():
    model = _model("debug-modern")
    muon, adamw = muon_parameter_names(model)
    assert {n.split(".", 2)[2] for n in muon} == {
        "attn.qkv.weight",
        "attn.proj.weight",
        "mlp.fc.weight",
        "mlp.gate.weight",
        "mlp.proj.weight",
    }
    assert "tok_embeddings.weight" in adamw
    assert ("output.weight" in adamw) == (not model.args.tie_embeddings)  # the lm-head: AdamW
    params = dict(model.named_parameters())
    assert all(params[n].dim() == 1 for n in adamw if "norm" in n)
    assert len(muon) + len(adamw) == len(params)


def test_one_step_is_torch_muon_and_torch_adamw_bitwise():
    model = _model("debug-modern")
    twin = copy.deepcopy(model)
    ours = MuonWithAdamW(model, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **MUON)
    muon_names, adamw_names = muon_parameter_names(twin)
    p = dict(twin.named_parameters())
    ref_muon = torch.optim.Muon(
        [p[n] for n in muon_names], lr=0.02, weight_decay=0.01, momentum=0.95, nesterov=True
    )
    ref_adamw = torch.optim.AdamW(
        [
            {"params": [p[n] for n in adamw_names if p[n].dim() >= 2]},
            {"params": [p[n] for n in adamw_names if p[n].dim() < 2], "weight_decay": 0.0},
        ],
        lr=1e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=0.1,
    )
    for step in range(3):
        for m in (model, twin):
            m.zero_grad()
            _backward(m, step)
        ours.step()
        ref_muon.step()
        ref_adamw.step()
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_state_dict_round_trip_and_schedule():
    model = _model("debug")
    section = Optimizer(name="muon", lr=1e-3, weight_decay=0.1, **MUON)
    opt = optimizer_spec("muon").build(model, section, "cpu")
    sched = build_lr_scheduler(opt, warmup_steps=2, total_steps=10)
    _backward(model, 0)
    opt.step()
    sched.step()
    # The schedule scales both halves from their own peaks.
    lrs = {g["muon"]: g["lr"] for g in opt.param_groups}
    assert lrs[True] == pytest.approx(0.02 * 1.0) and lrs[False] == pytest.approx(1e-3 * 1.0)
    saved = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(model)
    restored = optimizer_spec("muon").build(twin, section, "cpu")
    restored.load_state_dict(saved)
    assert restored._adamw.state is restored.state  # the inner AdamW still sees the state
    for m, o in ((model, opt), (twin, restored)):
        m.zero_grad()
        _backward(m, 1)
        o.step()
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_the_muon_recipe_trains_compiled_in_bf16(token_shards, tmp_path):
    from tests.trainer_utils import read_metrics, train_in_process

    run_dir = train_in_process(
        "train_configs/modern_muon_100m.toml",
        [
            *("--model.flavor", "debug-modern", "--data.dataset_path", str(token_shards)),
            *("--data.num_workers", "0", "--job.dump_folder", str(tmp_path)),
            *("--training.steps", "4", "--training.seq_len", "64"),
            *("--training.micro_batch_size", "4", "--training.global_batch_tokens", "512"),
            *("--lr_scheduler.warmup_steps", "1", "--validation.enable", "false"),
            *("--checkpoint.enable", "false", "--metrics.log_freq", "1"),
            *("--metrics.enable_wandb", "false", "--metrics.enable_tensorboard", "false"),
        ],
    )
    losses = read_metrics(run_dir)
    assert len(losses) == 4 and losses[-1] < losses[0]
