"""Validation's bits per byte (issue #25): the summed loss in bits over the UTF-8 bytes of the
validation targets' decoded text, checked against the text decoded here."""

from __future__ import annotations

import json
import math

import pytest

from tests.trainer_utils import BASE, train_in_process
from torchgpt.data.loader import build_val_batches
from torchgpt.data.tokenizer import get_tokenizer


def test_val_bpb_is_the_loss_in_bits_over_the_decoded_bytes(token_shards, tmp_path, gpt2_bpe_dir):
    args = ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
    args += ["--training.steps", "2", "--validation.enable", "true", "--validation.interval", "1"]
    args += ["--validation.tokens", "1024"]
    run_dir = train_in_process(None, BASE + args)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_loss" in r]
    assert len(val) == 2
    enc = get_tokenizer(gpt2_bpe_dir)
    batches = build_val_batches(
        token_shards, seq_len=64, micro_batch_size=2, num_tokens=1024, dp_rank=0, dp_world_size=1
    )
    tokens = sum(t.numel() for _, t in batches)
    n_bytes = sum(len(enc.decode_bytes(row.tolist())) for _, t in batches for row in t)
    assert tokens == 1024 and n_bytes > tokens  # real byte counts, not one per token
    for r in val:
        assert r["val_bpb"] == pytest.approx(r["val_loss"] * tokens / n_bytes / math.log(2))


def test_without_the_bpe_files_validation_has_no_bpb(token_shards, tmp_path, monkeypatch):
    from torchgpt.data import tokenizer

    def unavailable(*args, **kwargs):
        raise tokenizer.TokenizerUnavailable("no GPT-2 BPE files (test)")

    monkeypatch.setattr("torchgpt.training.callbacks.get_tokenizer", unavailable)
    args = ["--data.dataset_path", str(token_shards), "--job.dump_folder", str(tmp_path)]
    args += ["--training.steps", "2", "--validation.enable", "true", "--validation.tokens", "1024"]
    run_dir = train_in_process(None, BASE + args)
    val = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if "val_loss" in r]
    assert val and all("val_bpb" not in r for r in val)
