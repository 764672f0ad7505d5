"""Tests of torchgpt.model args and the GPT module: parameter and FLOP counts, causality,
meta-device materialization, GPT-2 init, vocabulary padding and input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from torchgpt.model import (
    FLAVORS,
    GPT,
    ModelArgs,
    flops_per_token,
    get_model_args,
    num_matmul_params,
    num_params,
)
from torchgpt.model.generate import check_token_ids

GPT2_SMALL_PARAMS = 124_439_808  # published GPT-2 small count (tied, vocab 50257)


def build(flavor: str, seed: int = 0, **overrides) -> GPT:
    model = GPT(get_model_args(flavor, **overrides))
    model.init_weights(seed=seed)
    return model


def build_meta(args: ModelArgs) -> GPT:
    with torch.device("meta"):
        return GPT(args)


def test_gpt2_124m_param_count():
    args = get_model_args("gpt2-124m")
    assert num_params(args) == GPT2_SMALL_PARAMS
    padded = GPT2_SMALL_PARAMS + (50304 - 50257) * 768
    assert args.padded_vocab_size == 50304
    assert num_params(args, padded_vocab=True) == padded
    model = build_meta(args)
    assert model.num_params() == padded == sum(p.numel() for p in model.parameters())
    # Non-embedding count (Kaplan et al.): minus token and position tables.
    assert num_params(args, embeddings=False) == GPT2_SMALL_PARAMS - 50257 * 768 - 1024 * 768


VARIANTS = [(name, {}) for name in FLAVORS] + [
    ("debug", {"tie_embeddings": False}),
    ("debug", {"bias": False}),
    ("debug-modern", {"qk_norm": True, "bias": True, "tie_embeddings": False}),
    ("debug-modern", {"ffn_hidden_dim": 200, "vocab_size": 1000}),
    ("debug", {"norm_type": "rmsnorm", "mlp_type": "swiglu"}),
]


@pytest.mark.parametrize("flavor,overrides", VARIANTS)
def test_num_params_equals_sum_of_numels(flavor, overrides):
    args = get_model_args(flavor, **overrides)
    model = build_meta(args)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert model.num_params() == sum(unique.values())
    assert num_params(args, padded_vocab=True) == model.num_params()
    embed = model.tok_embeddings.weight.numel()
    if model.pos_embeddings is not None:
        embed += model.pos_embeddings.weight.numel()
    embed += sum(t.weight.numel() for t in model.value_embeddings or [])  # lookups as well
    assert num_params(args, embeddings=False, padded_vocab=True) == model.num_params(False)
    assert model.num_params(embeddings=False) == model.num_params() - embed
    tied = model.output.weight is model.tok_embeddings.weight
    assert tied == args.tie_embeddings


def test_modern_124m_shape():
    args = get_model_args("modern-124m")
    assert (args.dim, args.n_layers, args.n_heads, args.max_seq_len) == (768, 12, 12, 1024)
    assert args.hidden_dim == 2048  # 8/3 * 768, a multiple of 64
    model = build_meta(args)
    assert model.pos_embeddings is None
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    # Same matmul size as gpt2-124m: 3 * d * 8d/3 == 2 * d * 4d.
    assert num_matmul_params(args) == num_matmul_params(get_model_args("gpt2-124m"))


def counted_training_flops(args: ModelArgs, seq_len: int) -> int:
    """Forward + backward FLOPs FlopCounterMode sees, on the meta device.

    On CPU tensors SDPA dispatches to a fused kernel that FlopCounterMode does not count
    (torch 2.13); on meta it decomposes into counted bmm's, so we count there.
    """
    model = build_meta(args)
    tokens = torch.randint(0, args.vocab_size, (1, seq_len)).to("meta")
    with FlopCounterMode(display=False) as counter:
        logits = model(tokens)
        F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten()).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "flavor,seq_len", [("debug", 512), ("debug", 64), ("gpt2-124m", 1024), ("modern-124m", 256)]
)
def test_flops_per_token_matches_flop_counter(flavor, seq_len):
    args = get_model_args(flavor)
    counted = counted_training_flops(args, seq_len) / seq_len
    predicted = flops_per_token(args, seq_len)
    assert abs(predicted - counted) / counted < 0.05, (predicted, counted)
    # The attention term is real: dropping it would miss the count at long sequences.
    attention = 12 * args.n_layers * args.dim * seq_len
    if attention / counted > 0.05:
        assert abs(predicted - attention - counted) / counted > 0.05


def test_flops_per_token_rejects_bad_seq_len():
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(get_model_args("debug"), 0)


@pytest.mark.parametrize("flavor,overrides", [("debug", {}), ("debug-modern", {"qk_norm": True})])
def test_causality(flavor, overrides):
    model = build(flavor, **overrides).eval()
    tokens = torch.randint(0, 50257, (2, 48), generator=torch.Generator().manual_seed(1))
    t = 20
    changed = tokens.clone()
    changed[:, t] = (tokens[:, t] + 1) % 50257
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert (after[:, t:] - before[:, t:]).abs().amax(dim=-1).min() > 1e-4


@pytest.mark.parametrize("flavor,overrides", [("debug", {}), ("debug-modern", {"qk_norm": True})])
def test_meta_materialize_matches_direct_init(flavor, overrides):
    args = get_model_args(flavor, **overrides)
    direct = GPT(args)
    direct.init_weights(seed=7)
    meta = build_meta(args)
    meta.to_empty(device="cpu")
    meta.init_weights(seed=7)
    assert meta.output.weight is meta.tok_embeddings.weight  # the tie survives to_empty
    direct_state, meta_state = direct.state_dict(), meta.state_dict()
    assert direct_state.keys() == meta_state.keys()
    for key in direct_state:
        assert torch.equal(direct_state[key], meta_state[key]), key
    for (name, a), (_, b) in zip(direct.named_buffers(), meta.named_buffers(), strict=True):
        assert torch.equal(a, b), name
    tokens = torch.randint(0, 50257, (2, 16))
    assert torch.equal(direct(tokens), meta(tokens))
    other = GPT(args)
    other.init_weights(seed=8)
    assert not torch.equal(other.layers[0].attn.qkv.weight, direct.layers[0].attn.qkv.weight)


def test_init_weights_seed_restores_global_rng():
    model = GPT(get_model_args("debug"))  # construction itself draws from the global RNG
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model.init_weights(seed=5)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(123)
    model.init_weights()  # no seed: draws from (and advances) the global RNG
    assert not torch.equal(torch.rand(3), expected)


def test_gpt2_init_statistics():
    model = build("gpt2-d256-l4", seed=0)
    std = 0.02
    residual_std = std / math.sqrt(2 * 4)  # GPT-2 section 2.3 scaled residual init
    block = model.layers[0]
    for weight, want in [
        (block.attn.qkv.weight, std),
        (block.mlp.fc.weight, std),
        (block.attn.proj.weight, residual_std),
        (block.mlp.proj.weight, residual_std),
        (model.tok_embeddings.weight, std),
    ]:
        assert abs(weight.std().item() - want) / want < 0.03
        assert abs(weight.mean().item()) < want / 20
    assert torch.all(block.attn.qkv.bias == 0) and torch.all(block.mlp.proj.bias == 0)
    assert torch.all(block.attn_norm.weight == 1) and torch.all(block.attn_norm.bias == 0)


def test_padded_vocab_never_leaves_the_model():
    model = build("debug")
    tokens = torch.randint(0, 50257, (2, 16))
    logits = model(tokens)
    assert logits.shape == (2, 16, 50257)
    assert model.tok_embeddings.weight.shape[0] == 50304
    F.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten()).backward()
    grad = model.tok_embeddings.weight.grad
    assert torch.all(grad[50257:] == 0) and grad[:50257].abs().sum() > 0
    with torch.no_grad():
        model.tok_embeddings.weight[50257:] = 1e3  # also the tied head rows
        assert torch.equal(model(tokens), logits.detach())


def test_bf16_autocast_keeps_compute_dtype():
    model = build("debug-modern", qk_norm=True)
    tokens = torch.randint(0, 50257, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(tokens)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), model(tokens), rtol=0, atol=0.05)


def test_token_id_out_of_range_raises_in_generate_not_in_forward():
    # forward() reads no token values (that would be a host sync per micro-step on a GPU);
    # generate() checks its prompt once, the training loader checks every window.
    model = build("debug")
    for bad in (50257, 50300, -1):
        tokens = torch.zeros(1, 8, dtype=torch.long)
        tokens[0, 3] = bad
        with pytest.raises(ValueError, match="vocab_size=50257"):
            check_token_ids(tokens, model.args.vocab_size)
        with pytest.raises(ValueError, match="vocab_size=50257"):
            model.generate(tokens, 2)
    check_token_ids(torch.tensor([[0, 50256]]), 50257)


@pytest.mark.parametrize("flavor", ["debug", "debug-modern"])
def test_sequence_longer_than_context_raises(flavor):
    model = build(flavor, max_seq_len=32)
    model(torch.zeros(1, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="start_pos=30"):
        model(torch.zeros(1, 3, dtype=torch.long), start_pos=30)


def test_bad_args_raise_value_errors():
    with pytest.raises(ValueError, match="n_heads=5 does not divide dim=128"):
        get_model_args("debug", n_heads=5)
    with pytest.raises(ValueError, match="does not divide"):
        GPT(ModelArgs(dim=100, n_heads=3))
    with pytest.raises(ValueError, match="gpt2-124m"):
        get_model_args("gpt3")
    with pytest.raises(ValueError, match="n_layer"):
        get_model_args("debug", n_layer=3)
    with pytest.raises(ValueError) as info:
        ModelArgs(norm_type="batchnorm", mlp_type="relu", max_seq_len=0).validate()
    message = str(info.value)
    assert "norm_type" in message and "mlp_type" in message and "max_seq_len" in message
