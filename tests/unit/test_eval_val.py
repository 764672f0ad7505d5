"""compute_val_loss / evaluate_val: the trainer's loss definition (fp32 token mean) over the fixed
val batches, independent of batching, mode-preserving, with clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from torchgpt.data.loader import build_val_batches
from torchgpt.data.shards import ShardWriter
from torchgpt.eval.val import compute_val_loss, evaluate_val, perplexity
from torchgpt.model import GPT, get_model_args

TOK = {"name": "gpt2", "vocab_size": 50257, "eot_id": 50256}


@pytest.fixture(scope="module")
def model() -> GPT:
    m = GPT(get_model_args("debug", dim=32, n_layers=1, n_heads=2, max_seq_len=64))
    m.init_weights(seed=1)
    return m


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    entries = []
    for split, n in (("train", 500), ("val", 700)):
        writer = ShardWriter(out, split, n, TOK)
        writer.write(rng.integers(0, 50257, n, dtype=np.uint16))
        writer.finish()
        entries += writer.shards
    (out / "manifest.json").write_text(json.dumps({"tokenizer": TOK, "shards": entries}))
    return out


def reference_loss(model: GPT, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """-mean log p(target), in float64 from the logits: an independent formula."""
    with torch.no_grad():
        logp = torch.log_softmax(model(inputs).double(), dim=-1)
    return -logp.gather(-1, targets[..., None]).mean().item()


def test_val_loss_is_the_token_mean_whatever_the_batching(model, data_dir):
    kw = dict(seq_len=16, num_tokens=16 * 24, dp_rank=0, dp_world_size=1)
    by_4 = build_val_batches(data_dir, micro_batch_size=4, **kw)
    by_8 = build_val_batches(data_dir, micro_batch_size=8, **kw)
    inputs = torch.cat([x for x, _ in by_4])
    targets = torch.cat([y for _, y in by_4])
    expected = reference_loss(model, inputs, targets)
    assert compute_val_loss(model, by_4) == pytest.approx(expected, abs=2e-6)
    assert compute_val_loss(model, by_8) == pytest.approx(expected, abs=2e-6)
    # Random init over a 50257 vocabulary: about log(50257) = 10.82 nats.
    assert abs(expected - math.log(50257)) < 0.2


def test_evaluate_val_uses_the_trainers_val_windows(model, data_dir):
    batches = build_val_batches(
        data_dir, seq_len=16, micro_batch_size=4, num_tokens=640, dp_rank=0, dp_world_size=1
    )
    out = evaluate_val(model, data_dir, seq_len=16, num_tokens=640, micro_batch_size=4)
    assert out["val_loss"] == compute_val_loss(model, batches)
    assert out["val_tokens"] == 640 and out["val_ppl"] == pytest.approx(math.exp(out["val_loss"]))
    bf16 = evaluate_val(
        model,
        data_dir,
        seq_len=16,
        num_tokens=640,
        micro_batch_size=4,
        autocast_dtype=torch.bfloat16,
    )
    assert bf16["val_loss"] != out["val_loss"] and bf16["val_loss"] == pytest.approx(
        out["val_loss"], abs=0.05
    )


def test_training_mode_is_restored_and_empty_input_is_an_error(model):
    model.train()
    x = torch.zeros(1, 8, dtype=torch.long)
    compute_val_loss(model, [(x, x)])
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="no validation batches"):
        compute_val_loss(model, [])
    assert perplexity(100.0) == math.exp(50.0)  # capped like the trainer's val_ppl
