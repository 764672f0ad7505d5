"""Batched generate_until (left padding, per-request stops) gives the tokens of the one-at-a-time
path, for both position schemes (learned table: gpt2; RoPE: modern)."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance

from torchgpt.data.tokenizer import get_tokenizer
from torchgpt.eval.harness import TorchGPTLM
from torchgpt.model import GPT, KVCache
from torchgpt.model.args import get_model_args

PROMPTS = [
    "Once upon a time",
    "The capital of France is",
    "Q: What is two plus two?\nA:",
    "def add(a, b):\n",
    "In 1905, Albert Einstein published",
    "Hi",
    "The quick brown fox jumps over the lazy dog because the dog was",
    "Water boils at",
    "A list of fruits: apple, banana,",
    "Photosynthesis converts",
    "x",
]


def _model(flavor: str) -> GPT:
    torch.manual_seed(0)
    model = GPT(get_model_args(flavor, max_seq_len=128))
    model.init_weights(seed=0)
    return model.eval()


def _requests(kwargs_for) -> list[Instance]:
    return [
        Instance("generate_until", {}, (prompt, kwargs_for(i)), i)
        for i, prompt in enumerate(PROMPTS)
    ]


@pytest.mark.parametrize("flavor", ["debug", "debug-modern"])
def test_batched_decoding_gives_the_unbatched_tokens(flavor):
    model = _model(flavor)
    reqs = _requests(lambda i: {"until": [], "do_sample": False, "max_gen_toks": 16})
    one = TorchGPTLM(model, batch_size=1).generate_until(reqs)
    for batch_size in (4, 16):
        assert TorchGPTLM(model, batch_size=batch_size).generate_until(reqs) == one
    # Not trivially equal: the continuations differ between prompts.
    assert len(set(one)) > len(PROMPTS) // 2 and all(len(t) > 0 for t in one)


def test_each_request_stops_on_its_own_string():
    model = _model("debug")
    free = _requests(lambda i: {"until": [], "do_sample": False, "max_gen_toks": 16})
    texts = TorchGPTLM(model, batch_size=1).generate_until(free)
    # A stop string from the middle of each row's own continuation (rows without one: none).
    stops = [t[len(t) // 2 : len(t) // 2 + 2] if len(t) > 4 else "\x00" for t in texts]
    reqs = _requests(lambda i: {"until": [stops[i]], "do_sample": False, "max_gen_toks": 16})
    got = TorchGPTLM(model, batch_size=16).generate_until(reqs)
    assert got == [t.split(s)[0] for t, s in zip(texts, stops, strict=True)]
    assert TorchGPTLM(model, batch_size=1).generate_until(reqs) == got
    assert sum(len(g) < len(t) for g, t in zip(got, texts, strict=True)) >= len(PROMPTS) // 2


def test_budgets_and_sampling_are_per_request():
    model = _model("debug")
    reqs = _requests(
        lambda i: {"until": [], "do_sample": i % 3 == 0, "temperature": 0.8, "max_gen_toks": 4 + i}
    )
    assert TorchGPTLM(model, batch_size=8).generate_until(reqs) == TorchGPTLM(
        model, batch_size=1
    ).generate_until(reqs)


def test_left_padded_logits_match_each_row_alone():
    model = _model("debug-modern")
    enc = get_tokenizer()
    prompts = [enc.encode(p) for p in PROMPTS[:4]]
    width = max(map(len, prompts))
    pad = torch.tensor([width - len(p) for p in prompts])
    tokens = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    with torch.no_grad():
        cache = KVCache(model.args.n_layers, model.args.max_seq_len)
        batched = model(tokens, kv_cache=cache, start_pos=0, pad=pad)[:, -1]
        for row, p in enumerate(prompts):
            alone = model(torch.tensor([p]))[0, -1]
            torch.testing.assert_close(batched[row], alone, rtol=0, atol=1e-5)
