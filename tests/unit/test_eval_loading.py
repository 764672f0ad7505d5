"""load_model: export file, DCP step folder and run directory (latest / best / model.pt) give the
saved model; tokens_seen comes from metrics.jsonl; bad paths and mismatches raise clear errors."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from torchgpt.checkpoint import CheckpointManager, ModelState, save_model_only
from torchgpt.eval.loading import (
    check_vocab,
    list_checkpoints,
    load_model,
    read_metrics,
    tokens_seen_at,
)
from torchgpt.model import GPT, get_model_args

CONFIG = {"training": {"global_batch_tokens": 1000, "steps": 7}}


def tiny(seed: int = 0, **overrides) -> GPT:
    args = get_model_args("debug", dim=32, n_layers=1, n_heads=2, max_seq_len=64, **overrides)
    model = GPT(args)
    model.init_weights(seed=seed)
    return model.eval()


def logits(model: GPT) -> torch.Tensor:
    tokens = torch.arange(12).reshape(2, 6) * 997
    with torch.no_grad():
        return model(tokens)


@pytest.fixture
def run_dir(tmp_path):
    """A run with DCP checkpoints at steps 2 (best) and 5 and a metrics.jsonl."""
    model = tiny()
    mgr = CheckpointManager(
        tmp_path,
        states={"model": ModelState(model)},
        interval=1,
        keep_latest_k=0,
        extra_metadata={"config": CONFIG, "model_args": asdict(model.args)},
    )
    saved = {}
    for step, val_loss in ((2, 3.0), (5, 4.0)):
        with torch.no_grad():
            model.tok_embeddings.weight.add_(0.01 * step)
        mgr.save(step, val_loss=val_loss)
        saved[step] = logits(model)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    records = [{"step": 2, "loss": 5.0, "tokens_seen": 2222}, {"step": 5, "val_loss": 4.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path, saved


def test_export_file_round_trip_in_float32(tmp_path):
    model = tiny(seed=3)
    path = save_model_only(
        model.state_dict(), asdict(model.args), CONFIG, tmp_path / "m.pt", dtype=torch.bfloat16
    )
    loaded, meta = load_model(path)
    assert loaded.tok_embeddings.weight.dtype == torch.float32 and not loaded.training
    assert loaded.output.weight is loaded.tok_embeddings.weight  # tie restored
    ref = {k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()}
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0)
    # No recorded step: the export's run length (training.steps of its config), no run dir.
    assert meta["kind"] == "export" and meta["run_dir"] is None
    assert meta["step"] == CONFIG.get("training", {}).get("steps")


def test_dcp_folder_and_run_dir_pick_the_right_checkpoint(run_dir):
    root, saved = run_dir
    assert [s for s, _ in list_checkpoints(root)] == [2, 5]
    for target, which, step in (
        (root / "checkpoints" / "step-2", "latest", 2),
        (root, "latest", 5),
        (root, "best", 2),
    ):
        model, meta = load_model(target, which)
        torch.testing.assert_close(logits(model), saved[step], rtol=0, atol=0)
        assert meta["step"] == step and meta["kind"] == "dcp" and meta["config"] == CONFIG
    assert load_model(root, "best")[1]["tokens_seen"] == 2222  # from metrics.jsonl
    assert load_model(root)[1]["tokens_seen"] == 5 * 1000  # no record: step x batch tokens


def test_run_dir_export_is_the_last_step(run_dir):
    root, _ = run_dir
    model = tiny(seed=9)
    save_model_only(model.state_dict(), asdict(model.args), CONFIG, root / "model.pt")
    loaded, meta = load_model(root, "export")
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    assert meta["step"] == 7 and meta["run_dir"] == str(root)


def test_tokens_seen_skips_a_torn_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 3, "tokens_seen": 33}\n{"step": 4, "tok')
    assert tokens_seen_at(tmp_path, 3, None) == 33 and tokens_seen_at(tmp_path, 4, None) is None


def test_errors_name_the_path_and_the_fix(tmp_path, run_dir):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a DCP checkpoint folder"):
        load_model(tmp_path / "empty")
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    (tmp_path / "fresh" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no complete checkpoint"):
        load_model(tmp_path / "fresh")
    root, _ = run_dir
    with pytest.raises(ValueError, match="has no model.pt"):
        load_model(root, "export")
    model = tiny()
    bad_args = {**asdict(model.args), "n_experts": 8}
    path = save_model_only(model.state_dict(), bad_args, {}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"fields \['n_experts'\]"):
        load_model(path)
    wrong_args = {**asdict(model.args), "dim": 64}
    path = save_model_only(model.state_dict(), wrong_args, {}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="weights do not fit its model_args"):
        load_model(path)


def test_check_vocab_rejects_a_different_vocabulary():
    check_vocab(tiny())
    with pytest.raises(ValueError, match="vocab_size=1000 but the GPT-2 tokenizer has 50257"):
        check_vocab(tiny(vocab_size=1000), source="ckpt")


def test_metrics_after_a_resume_count_each_step_once(tmp_path):
    """Launch 1 logs steps 1-15 (val at 10) and dies; launch 2 resumes from the step-10
    checkpoint and logs 11-20. Reports see steps 1-20 once, and the logged step time is
    the sum over those steps (the fault probe saw 38.9 s reported for 52.2 s of steps)."""
    from torchgpt.report import logged_step_seconds

    first = [{"step": s, "loss": 10.0 - s / 10, "step_time_s": 1.0} for s in range(1, 16)]
    first.insert(10, {"step": 10, "val_loss": 9.0})
    second = [{"step": s, "loss": 9.0 - s / 10, "step_time_s": 2.0} for s in range(11, 21)]
    lines = [json.dumps(r) for r in first + second]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    records = read_metrics(tmp_path)
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 21))
    assert all(r["step_time_s"] == (1.0 if r["step"] <= 10 else 2.0) for r in train)
    assert [r["step"] for r in records if "val_loss" in r] == [10]
    assert logged_step_seconds(train) == 10 * 1.0 + 10 * 2.0


def test_a_resume_mark_drops_the_abandoned_validation_records(tmp_path):
    """Crash at 107 with log_freq 10 and validation every 5, resume from 100: the step-105
    validation of the abandoned timeline goes, although no training record repeats it."""
    records = [{"step": s, "loss": 1.0, "step_time_s": 1.0} for s in (90, 100)]
    records += [{"step": 100, "val_loss": 2.0}, {"step": 105, "val_loss": 2.1}]
    records += [{"step": 100, "resumed_from": 100}, {"step": 105, "val_loss": 2.05}]
    records += [{"step": 110, "loss": 0.9, "step_time_s": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    got = read_metrics(tmp_path)
    assert [(r["step"], r["val_loss"]) for r in got if "val_loss" in r] == [(100, 2.0), (105, 2.05)]
    assert [r["step"] for r in got if "loss" in r] == [90, 100, 110]
    assert not any("resumed_from" in r for r in got)
