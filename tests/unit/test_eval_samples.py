"""The fixed prompts file and the samples: greedy = argmax decoding, sampled = reproducible per
prompt seed, continuations stop at <|endoftext|>."""

from __future__ import annotations

import pytest
import torch

from torchgpt.data.tokenizer import EOT_ID, get_tokenizer
from torchgpt.eval.samples import SampleSettings, generate_samples, load_prompts
from torchgpt.model import GPT, get_model_args


@pytest.fixture(scope="module")
def model() -> GPT:
    m = GPT(get_model_args("debug", dim=32, n_layers=1, n_heads=2, max_seq_len=64))
    m.init_weights(seed=4)
    return m.eval()


def test_default_prompts_file_has_five_prompts_and_settings():
    prompt_set = load_prompts()
    assert len(prompt_set.prompts) == 5 and prompt_set.prompts[0] == "The mitochondria is"
    assert prompt_set.settings == SampleSettings(max_new_tokens=48, temperature=0.8, top_k=50)


@pytest.mark.parametrize(
    "text, match",
    [
        ("[generation]\nmax_new_tokens = 4\n", "needs \\[\\[prompts\\]\\]"),
        ("[[prompts]]\ntext = 'a'\n[generation]\nbeams = 2\n", "unknown keys \\['beams'\\]"),
        ("[[prompts]\n", "not valid TOML"),
    ],
)
def test_bad_prompt_files_are_rejected(tmp_path, text, match):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_prompts(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_prompts(tmp_path / "missing.toml")


def test_greedy_and_seeded_samples(model):
    enc = get_tokenizer()
    prompts = ["Hello there", "The sky is"]
    settings = SampleSettings(max_new_tokens=8, temperature=1.0, top_k=None, seed=11)
    first = generate_samples(model, prompts, settings)
    assert first == generate_samples(model, prompts, settings)  # reproducible
    for i, (prompt, sample) in enumerate(zip(prompts, first, strict=True)):
        ids = enc.encode(prompt)
        greedy = model.generate(torch.tensor([ids]), 8, temperature=0.0, eos_id=EOT_ID)[0]
        new = greedy[len(ids) :].tolist()
        new = new[: new.index(EOT_ID)] if EOT_ID in new else new
        assert sample["greedy"] == enc.decode(new) and sample["seed"] == 11 + i
        sampled = model.generate(torch.tensor([ids]), 8, temperature=1.0, seed=11 + i)[0]
        assert (
            sample["sampled"] == enc.decode(sampled[len(ids) :].tolist()).split("<|endoftext|>")[0]
        )
    other = generate_samples(model, prompts, SampleSettings(8, 1.0, None, seed=12))
    assert [s["sampled"] for s in other] != [s["sampled"] for s in first]
