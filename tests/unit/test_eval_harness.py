"""TorchGPTLM against direct computation from the model's own logits: loglikelihood (batched,
truncated, empty context), greedy flags, rolling, generate_until; run_harness_eval side effects."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance

from torchgpt.data.tokenizer import EOT_ID, get_tokenizer
from torchgpt.eval.harness import TorchGPTLM, run_harness_eval
from torchgpt.model import GPT, get_model_args

CTX = 64


@pytest.fixture(scope="module")
def model() -> GPT:
    m = GPT(get_model_args("debug", dim=32, n_layers=2, n_heads=2, max_seq_len=CTX))
    m.init_weights(seed=2)
    return m.eval()


def direct_logprob(model: GPT, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """Sum of log p(continuation) from one unbatched forward over the last CTX + 1 tokens."""
    window = (context + continuation)[-(CTX + 1) :]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([window[:-1]]))[0].double(), dim=-1)
    n = len(continuation)
    picked = logp[-n:].gather(1, torch.tensor(continuation)[:, None]).squeeze(1)
    greedy = bool((logp[-n:].argmax(-1) == torch.tensor(continuation)).all())
    return picked.sum().item(), greedy


def make_requests(model: GPT) -> list[tuple]:
    rng = random.Random(0)
    reqs = []
    for n_ctx, n_cont in ((5, 3), (40, 30), (1, 1), (90, 7), (12, 64), (3, 20)):
        ctx = [rng.randrange(50257) for _ in range(n_ctx)]
        reqs.append((None, ctx, [rng.randrange(50257) for _ in range(n_cont)]))
    # A continuation that is exactly the greedy path must be flagged greedy.
    ctx = [11, 22, 33]
    with torch.no_grad():
        path = model.generate(torch.tensor([ctx]), 4, temperature=0.0, eos_id=None)[0, 3:]
    reqs.append((None, ctx, path.tolist()))
    return reqs


def test_loglikelihood_tokens_match_direct_computation_at_any_batch_size(model):
    reqs = make_requests(model)
    expected = [direct_logprob(model, c, k) for _, c, k in reqs]
    assert expected[-1][1] and not any(g for _, g in expected[:-1])
    for batch_size in (1, 4, 16):
        got = TorchGPTLM(model, batch_size=batch_size)._loglikelihood_tokens(reqs)
        for (lp, greedy), (ref_lp, ref_greedy) in zip(got, expected, strict=True):
            assert lp == pytest.approx(ref_lp, abs=2e-4) and greedy == ref_greedy


def test_string_requests_split_like_the_harness(model):
    enc = get_tokenizer()
    lm = TorchGPTLM(model, batch_size=2)
    cases = [("The cat sat on the", " mat."), ("Question: why?\nAnswer: ", "because"), ("", "Hi")]
    reqs = [Instance("loglikelihood", {}, case, i) for i, case in enumerate(cases)]
    got = lm.loglikelihood(reqs)
    # Trailing context spaces move into the continuation; an empty context becomes <|endoftext|>.
    splits = [
        (enc.encode("The cat sat on the"), enc.encode(" mat.")),
        (enc.encode("Question: why?\nAnswer:"), enc.encode(" because")),
        ([EOT_ID], enc.encode("Hi")),
    ]
    for (lp, _), (ctx, cont) in zip(got, splits, strict=True):
        assert lp == pytest.approx(direct_logprob(model, ctx, cont)[0], abs=2e-4)


def test_rolling_loglikelihood_is_the_sum_over_all_tokens(model):
    enc = get_tokenizer()
    text = "It was the best of times, it was the worst of times."
    ids = enc.encode(text)
    expected = direct_logprob(model, [EOT_ID], ids)[0]
    got = TorchGPTLM(model).loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (text,), 0)]
    )
    assert got[0] == pytest.approx(expected, abs=2e-4)


def test_generate_until_is_greedy_decoding_cut_at_the_stop_string(model):
    enc = get_tokenizer()
    lm = TorchGPTLM(model, max_gen_toks=12)
    prompt = "Once upon a time"
    ids = enc.encode(prompt)
    with torch.no_grad():
        full = model.generate(torch.tensor([ids]), 12, temperature=0.0, eos_id=None)[0]
    text = enc.decode(full[len(ids) :].tolist())
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    reqs = [
        Instance("generate_until", {}, (prompt, {"until": [], "do_sample": False}), 0),
        Instance("generate_until", {}, (prompt, {"until": [stop], "do_sample": False}), 1),
    ]
    assert lm.generate_until(reqs) == [text, text.split(stop)[0]]


def test_bfloat16_scoring_is_close_to_float32(model):
    reqs = make_requests(model)[:4]
    fp32 = TorchGPTLM(model, batch_size=4)._loglikelihood_tokens(reqs)
    bf16 = TorchGPTLM(model, batch_size=4, dtype="bfloat16")._loglikelihood_tokens(reqs)
    for (a, _), (b, _) in zip(fp32, bf16, strict=True):
        assert a != b and b == pytest.approx(a, rel=0.02)
    with pytest.raises(ValueError, match="dtype='float16'"):
        TorchGPTLM(model, dtype="float16")


def test_run_harness_eval_leaves_rng_and_mode_untouched(model, shared_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model.train()
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    out = run_harness_eval(model, ["piqa"], limit=4, data_dir=shared_dir / "data" / "eval")
    after = torch.rand(1), random.random(), np.random.rand()
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    assert after == (torch.rand(1), random.random(), np.random.rand())
    assert model.training
    model.eval()
    piqa = out["tasks"]["piqa"]
    assert piqa["num_samples"] == 4 and piqa["acc"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert out["limit"] == 4 and out["data_dir"].endswith("eval") and os.environ["HF_HUB_OFFLINE"]


def test_registered_as_torchgpt_and_built_from_an_arg_string(model, tmp_path):
    from dataclasses import asdict

    from lm_eval.api.registry import get_model

    from torchgpt.checkpoint import save_model_only

    path = save_model_only(model.state_dict(), asdict(model.args), {}, tmp_path / "m.pt")
    cls = get_model("torchgpt")
    assert cls is TorchGPTLM
    lm = cls.create_from_arg_string(f"pretrained={path},batch_size=3", {"device": "cpu"})
    reqs = make_requests(model)[:3]
    assert lm.batch_size == 3 and lm.max_length == CTX
    assert lm._loglikelihood_tokens(reqs) == TorchGPTLM(model)._loglikelihood_tokens(reqs)
    with pytest.raises(ValueError, match="'auto' is not supported"):
        TorchGPTLM(model, batch_size="auto")
