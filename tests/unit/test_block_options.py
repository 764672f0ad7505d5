"""The [model] block options (issue #26): ReLU^2 MLP, logit soft-cap, untied embeddings,
zero-initialised projections. Each reaches the model from its config key, computes what it
says against a by-hand reference, is counted by the estimator as the trace sees it, and is
exported or refused by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from torchgpt.config.job_config import ConfigError
from torchgpt.config.manager import load_config
from torchgpt.estimation.memory import analytic_memory
from torchgpt.estimation.plan import TrainingPlan
from torchgpt.estimation.trace import trace_memory
from torchgpt.model.args import get_model_args, num_params
from torchgpt.model.gpt import GPT
from torchgpt.model.hf import hf_family
from torchgpt.step.config import TrainModuleConfig

DEBUG = Path(__file__).resolve().parents[2] / "train_configs" / "debug_model.toml"


def _model(**options) -> GPT:
    torch.manual_seed(0)
    model = GPT(get_model_args("debug", **options))
    model.init_weights(seed=0)
    return model.eval()


def _args(cfg):
    return TrainModuleConfig.from_job(cfg, mixed_precision="fp32").model_args


def test_the_config_keys_reach_the_model_args():
    keys = ["--model.mlp_type", "relu2", "--model.tie_embeddings", "false"]
    keys += ["--model.zero_init_proj", "true", "--model.logit_softcap", "30"]
    args = _args(load_config(None, keys, world_size=1))
    assert (args.mlp_type, args.tie_embeddings, args.zero_init_proj) == ("relu2", False, True)
    assert args.logit_softcap == 30.0
    flavor = load_config(DEBUG, ["--model.flavor", "debug-modern"], world_size=1)
    assert _args(flavor).mlp_type == "swiglu"  # "" keeps the flavor's
    with pytest.raises(ConfigError, match="model.logit_softcap: must be >= 0"):
        load_config(None, ["--model.logit_softcap", "-1"], world_size=1)


def test_relu2_mlp_is_relu_squared():
    model = _model(mlp_type="relu2")
    mlp, x = model.layers[0].mlp, torch.randn(2, 5, 128)
    assert mlp.gate is None and mlp.fc.out_features == 4 * 128
    expected = F.linear(F.relu(F.linear(x, mlp.fc.weight, mlp.fc.bias)) ** 2, mlp.proj.weight)
    torch.testing.assert_close(mlp(x), expected + mlp.proj.bias)
    assert model.num_params() == num_params(model.args, padded_vocab=True)


def test_logit_softcap_is_c_tanh_of_the_logits_over_c():
    plain, capped = _model(), _model(logit_softcap=0.5)
    tokens = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        raw, out = plain(tokens), capped(tokens)
    assert raw.abs().max() > 0.5 > out.abs().max()  # the cap binds on these logits
    torch.testing.assert_close(out, 0.5 * torch.tanh(raw / 0.5))


def test_zero_init_proj_starts_every_block_as_the_identity():
    model = _model(zero_init_proj=True)
    for block in model.layers:
        assert not block.attn.proj.weight.any() and not block.mlp.proj.weight.any()
        assert block.attn.qkv.weight.std() > 0.01  # the rest keeps GPT-2's init
    tokens = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        x = model.tok_embeddings(tokens) + model.pos_embeddings(torch.arange(8))
        expected = model.output(model.norm(x))[..., :50257]
        torch.testing.assert_close(model(tokens), expected)


def test_untied_embeddings_are_two_matrices():
    tied, untied = _model(), _model(tie_embeddings=False)
    assert untied.output.weight is not untied.tok_embeddings.weight
    assert not torch.equal(untied.output.weight, untied.tok_embeddings.weight)
    extra = untied.num_params() - tied.num_params()
    assert (
        extra
        == 50304 * 128
        == num_params(untied.args, padded_vocab=True) - num_params(tied.args, padded_vocab=True)
    )
    assert hf_family(untied.args) == "gpt2"  # GPT-2 with tie_word_embeddings = false


def test_unet_skips_add_the_mirror_blocks_outputs():
    args = dataclasses.replace(get_model_args("debug"), n_layers=5)  # odd: the middle has none
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(args, unet_skips=True))
    model.init_weights(seed=0)
    model.eval()
    assert model.skip_weights.tolist() == [1.0, 1.0]
    with torch.no_grad():
        model.skip_weights.copy_(torch.tensor([0.5, -2.0]))
        tokens = torch.randint(0, 50257, (2, 8))
        x = model.tok_embeddings(tokens) + model.pos_embeddings(torch.arange(8))
        outs = []
        for i, block in enumerate(model.layers):
            if i == 3:  # block 3 gets w_0 x block 1's output, block 4 w_1 x block 0's
                x = x + 0.5 * outs[1]
            if i == 4:
                x = x - 2.0 * outs[0]
            x = block(x)
            outs.append(x)
        expected = model.output(model.norm(x))[..., :50257]
        torch.testing.assert_close(model(tokens), expected)
    assert model.num_params() == num_params(model.args, padded_vocab=True)


def test_value_embeddings_mix_a_token_table_into_the_values(monkeypatch):
    """Table j feeds blocks j and n - k + j: SDPA gets l0 * v + l1 * table_j[tokens] (by heads)
    there and the plain v elsewhere; with l0 = 1, l1 = 0 the model is the plain one."""
    from torchgpt.model import attention

    args = dataclasses.replace(get_model_args("debug"), n_layers=4)
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(args, value_embeds=1)).eval()
    model.init_weights(seed=0)
    assert [b.attn.ve_lambda is not None for b in model.layers] == [True, False, False, True]
    seen = []

    def spy(q, k, v):
        seen.append(v)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    monkeypatch.setattr(attention, "_causal_attention", spy)
    tokens = torch.randint(0, 50257, (2, 8))
    with torch.no_grad():
        model.layers[0].attn.ve_lambda.copy_(torch.tensor([1.0, 0.0]))
        model.layers[3].attn.ve_lambda.copy_(torch.tensor([0.25, 3.0]))
        model(tokens)
        mixed = seen[3]
        table = model.value_embeddings[0](tokens).view(2, 8, 4, 32).transpose(1, 2)
        model.layers[3].attn.ve_lambda.copy_(torch.tensor([1.0, 0.0]))  # block 3's own v
        plain = GPT(args).eval()
        plain.load_state_dict(model.state_dict(), strict=False)
        torch.testing.assert_close(model(tokens), plain(tokens))
    torch.testing.assert_close(mixed, 0.25 * seen[-1] + 3.0 * table)
    assert model.num_params() == num_params(model.args, padded_vocab=True)


@pytest.mark.parametrize(
    "options,key",
    [
        ({"logit_softcap": 30.0}, "model.logit_softcap = 30"),
        ({"mlp_type": "relu2"}, "relu2"),
        ({"unet_skips": True}, "model.unet_skips"),
        ({"value_embeds": 1}, "model.value_embeds = 1"),
    ],
)
def test_the_export_refuses_what_transformers_cannot_run(options, key):
    with pytest.raises(ValueError, match=key):
        hf_family(get_model_args("debug", **options))


@pytest.mark.parametrize(
    "overrides,nproc",
    [
        (["--model.mlp_type=relu2", "--activation_checkpoint.mode=none"], 1),
        (["--model.mlp_type=relu2", "--activation_checkpoint.mode=selective"], 1),
        (["--model.logit_softcap=30"], 1),
        (["--model.logit_softcap=30", "--compile.enable=true"], 1),
        (["--model.tie_embeddings=false", "--model.zero_init_proj=true"], 2),
        # under tensor parallelism: the soft-cap on vocabulary shards
        (["--model.logit_softcap=30", "--parallelism.tp=2"], 2),
        (["--model.mlp_type=relu2", "--parallelism.tp=2"], 2),
        (["--model.unet_skips=true"], 1),
        (["--model.unet_skips=true", "--model.flavor=debug-modern"], 2),  # FSDP2, bf16 params
        (["--model.value_embeds=1"], 1),
        (["--model.value_embeds=1", "--activation_checkpoint.mode=selective"], 2),
        (["--model.value_embeds=1", "--model.flavor=debug-modern"], 1),
        # Muon's state: its matrices counted on the whole model (one block can't hold a table)
        (["--model.value_embeds=1", "--optimizer.name=muon"], 1),
    ],
)
def test_the_estimator_counts_each_option_as_the_trace_sees_it(overrides, nproc):
    tp = ["--model.qkv_layout=per_head"] if any("tp=" in o for o in overrides) else []
    cfg = load_config(DEBUG, [*overrides, *tp], world_size=nproc)
    plan = TrainingPlan.from_config(cfg, nproc)
    analytic, traced = analytic_memory(plan), trace_memory(plan)
    assert analytic.peak_bytes == pytest.approx(traced.peak_bytes, rel=0.01)
    four = [
        analytic_memory(_layers(plan, 6)).peak_bytes - analytic_memory(_layers(plan, 2)).peak_bytes,
        trace_memory(_layers(plan, 6)).peak_bytes - trace_memory(_layers(plan, 2)).peak_bytes,
    ]
    # the blocks' share, to 0.5% (one U-net skip's B*T x d is 0.9% of the 4 blocks' share)
    assert four[0] == pytest.approx(four[1], rel=5e-3)


def _layers(plan: TrainingPlan, n: int) -> TrainingPlan:
    args = dataclasses.replace(plan.args, n_layers=n)
    return dataclasses.replace(plan, step=dataclasses.replace(plan.step, model_args=args))
