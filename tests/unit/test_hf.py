"""Tests of torchgpt.model.hf: export to transformers (GPT-2, Llama, Qwen3) and import back,
checked by logits parity in fp32 and by transformers' own greedy generate."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from torchgpt.model import GPT, get_model_args  # noqa: E402
from torchgpt.model.hf import export_hf, hf_family, import_hf  # noqa: E402

CASES = [
    # (flavor, overrides, transformers class): depth cut to 2 to stay fast.
    ("gpt2-124m", {"n_layers": 2}, "GPT2LMHeadModel"),
    ("modern-124m", {"n_layers": 2}, "LlamaForCausalLM"),
    ("debug-modern", {"qk_norm": True}, "Qwen3ForCausalLM"),
    ("debug-modern", {"bias": True, "tie_embeddings": False}, "LlamaForCausalLM"),
    ("debug", {"tie_embeddings": False, "ffn_hidden_dim": 320}, "GPT2LMHeadModel"),
]


def build(flavor: str, **overrides) -> GPT:
    model = GPT(get_model_args(flavor, **overrides))
    model.init_weights(seed=0)
    return model.eval()


def random_tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 50257, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("flavor,overrides,hf_class", CASES)
def test_export_import_roundtrip_logits(tmp_path, flavor, overrides, hf_class):
    model = build(flavor, **overrides)
    out = export_hf(model, tmp_path / "hf")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [hf_class]
    assert config["vocab_size"] == 50257  # the real vocabulary, padding stripped

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf_model).__name__ == hf_class
    tokens = random_tokens(2, 64)
    with torch.no_grad():
        ours = model(tokens)
        theirs = hf_model(tokens).logits
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)

    back = import_hf(out)
    assert back.args == model.args
    assert (back.output.weight is back.tok_embeddings.weight) == model.args.tie_embeddings
    with torch.no_grad():
        torch.testing.assert_close(back(tokens), ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flavor,overrides,hf_class", CASES[:3])
def test_transformers_greedy_generate_matches_ours(tmp_path, flavor, overrides, hf_class):
    # A wider init than GPT-2's 0.02 keeps a random model from repeating one token.
    model = build(flavor, init_std=0.1, **overrides)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(export_hf(model, tmp_path))
    prompt = random_tokens(2, 8, seed=1)
    ours = model.generate(prompt, 24, temperature=0.0, eos_id=50256)
    theirs = hf_model.eval().generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=24,
        eos_token_id=50256,
        pad_token_id=50256,
    )
    assert torch.equal(theirs, ours)
    assert min(len(set(row[8:].tolist())) for row in ours) > 4


def test_import_of_a_transformers_initialized_model():
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=50257, resid_pdrop=0.0
    )
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    model = import_hf(hf_model)
    assert (model.args.dim, model.args.n_layers, model.args.max_seq_len) == (64, 2, 128)
    assert torch.all(model.tok_embeddings.weight[50257:] == 0)  # padding rows inert
    tokens = random_tokens(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf_model(tokens).logits, rtol=1e-5, atol=1e-5)


def test_export_in_bfloat16(tmp_path):
    model = build("debug-modern")
    out = export_hf(model, tmp_path, dtype=torch.bfloat16)
    tensors = safetensors_torch.load_file(out / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert "lm_head.weight" not in tensors  # tied: stored once
    back = import_hf(out)
    expected = model.tok_embeddings.weight[:50257].to(torch.bfloat16).float()
    assert torch.equal(back.tok_embeddings.weight[:50257], expected)


def test_unexportable_architectures_raise():
    for overrides in (
        {"pos_embedding": "rope"},  # GPT-2 layout with RoPE: no transformers class
        {"bias": False},  # GPT-2 has biases everywhere
    ):
        with pytest.raises(ValueError, match="no transformers architecture"):
            hf_family(get_model_args("debug", **overrides))
    with pytest.raises(ValueError, match="bias=True"):
        hf_family(get_model_args("debug-modern", qk_norm=True, bias=True))


def test_import_rejects_unsupported_configs(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        import_hf(tmp_path)
    gqa = transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
        intermediate_size=128, vocab_size=1000,
    )  # fmt: skip
    with pytest.raises(ValueError, match="grouped-query"):
        import_hf(transformers.LlamaForCausalLM(gqa))
