"""load_model_from_checkpoint / dcp_to_torch in one process: which file or folder a path means
(export, step-N, run directory latest/best/export), the weights it gives, and clear errors."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from torch.distributed.checkpoint import FileSystemWriter

from torchgpt.checkpoint import (
    CheckpointManager,
    ModelState,
    dcp_to_torch,
    load_model_from_checkpoint,
    load_model_only,
    save_model_only,
)
from torchgpt.checkpoint.layout import MARKER_NAME
from torchgpt.checkpoint.manager import WRITER_ENV
from torchgpt.model import GPT, get_model_args

TOKENS = torch.arange(12).reshape(2, 6) * 997


def tiny() -> GPT:
    model = GPT(get_model_args("debug", dim=32, n_layers=1, n_heads=2, max_seq_len=64))
    model.init_weights(seed=0)
    return model.eval()


def logits(model: GPT) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS)


@pytest.fixture
def run(tmp_path):
    """A run that saved steps 2 (best) and 5, exported model.pt after step 5, then went on to 7."""
    model = tiny()
    config = {"training": {"steps": 5}}
    mgr = CheckpointManager(
        tmp_path,
        states={"model": ModelState(model)},
        interval=1,
        keep_latest_k=0,
        extra_metadata={"config": config, "model_args": asdict(model.args)},
    )
    saved = {}
    for step, val_loss in ((2, 3.0), (5, 4.0), (7, 5.0)):
        with torch.no_grad():
            model.tok_embeddings.weight.add_(0.01 * step)
        mgr.save(step, val_loss=val_loss)
        saved[step] = logits(model)
        if step == 5:
            save_model_only(model.state_dict(), asdict(model.args), config, tmp_path / "model.pt")
    return tmp_path, saved


def test_paths_resolve_to_the_right_weights(run):
    run_dir, saved = run
    ckpts = run_dir / "checkpoints"
    cases = [
        (run_dir, "latest", "dcp", 7),  # model.pt (step 5) is older than step-7
        (ckpts, "latest", "dcp", 7),
        (run_dir, "best", "dcp", 2),
        (run_dir, "export", "export", 5),
        (ckpts / "step-5", "latest", "dcp", 5),
        (run_dir / "model.pt", "best", "export", 5),  # which only matters for run directories
    ]
    for path, which, kind, step in cases:
        model, meta = load_model_from_checkpoint(path, which)
        assert (meta["kind"], meta["step"], meta["run_dir"]) == (kind, step, str(run_dir)), path
        assert torch.equal(logits(model), saved[step]), (path, which)
    assert load_model_from_checkpoint(run_dir, "best")[1]["val_loss"] == 3.0
    # A finished run whose export is the newest thing: latest is model.pt.
    for step in (5, 7):
        (ckpts / f"step-{step}" / MARKER_NAME).unlink()
    model, meta = load_model_from_checkpoint(run_dir)
    assert (meta["kind"], meta["source"]) == ("export", str(run_dir / "model.pt"))
    bf16, _ = load_model_from_checkpoint(run_dir, dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_dcp_to_torch_records_step_and_stores_a_tied_head_once(run, tmp_path):
    run_dir, saved = run
    out, model = dcp_to_torch(run_dir, tmp_path / "out" / "m.pt", which="best")
    payload = load_model_only(out)
    assert (payload["step"], payload["val_loss"]) == (2, 3.0)
    weights = payload["model"]
    assert weights["output.weight"] is weights["tok_embeddings.weight"]
    assert torch.equal(logits(model), saved[2])
    assert torch.equal(logits(load_model_from_checkpoint(out)[0]), saved[2])
    # Separate but equal copies (a gathered FSDP state dict) are stored once as well.
    sd = {k: v.clone() for k, v in tiny().state_dict().items()}
    path = save_model_only(sd, asdict(tiny().args), None, tmp_path / "gathered.pt", torch.bfloat16)
    weights = load_model_only(path)["model"]
    assert weights["output.weight"] is weights["tok_embeddings.weight"]
    assert weights["output.weight"].dtype == torch.bfloat16


def test_bad_paths_and_metadata_raise_value_errors(run, tmp_path):
    run_dir, _ = run
    ckpts = run_dir / "checkpoints"
    (ckpts / "step-7" / MARKER_NAME).unlink()
    with pytest.raises(ValueError, match="step-7 is incomplete .*no COMPLETE marker"):
        load_model_from_checkpoint(ckpts / "step-7")
    with pytest.raises(ValueError, match="missing does not exist"):
        load_model_from_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a DCP checkpoint folder .* nor a run directory"):
        load_model_from_checkpoint(tmp_path / "empty")
    with pytest.raises(ValueError, match="which='newest': expected one of"):
        load_model_from_checkpoint(run_dir, "newest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is a file; pass a DCP step-N folder"):
        dcp_to_torch(run_dir / "model.pt", tmp_path / "x.pt")
    (ckpts / "best.json").unlink()
    with pytest.raises(ValueError, match="no usable best checkpoint"):
        load_model_from_checkpoint(run_dir, "best")
    model = tiny()
    args = {**asdict(model.args), "n_experts": 8}
    save_model_only(model.state_dict(), args, None, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"fields \['n_experts'\] are unknown"):
        load_model_from_checkpoint(tmp_path / "future.pt")
    save_model_only(model.state_dict(), None, None, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="carries no model_args"):
        load_model_from_checkpoint(tmp_path / "bare.pt")
    args = {**asdict(model.args), "dim": 64, "n_heads": 4}
    save_model_only(model.state_dict(), args, None, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="the weights do not fit its model_args"):
        load_model_from_checkpoint(tmp_path / "wrong.pt")


calls: list[str] = []


def recording_writer(path: str) -> FileSystemWriter:
    calls.append(path)
    return FileSystemWriter(path)


def test_storage_writer_from_the_environment(tmp_path, monkeypatch):
    model = tiny()
    monkeypatch.setenv(WRITER_ENV, f"{__name__}:recording_writer")
    calls.clear()
    mgr = CheckpointManager(tmp_path, states={"model": ModelState(model)}, interval=1)
    assert mgr.save(3) == tmp_path / "checkpoints" / "step-3"
    assert calls == [str(tmp_path / "checkpoints" / "step-3.tmp")]
    monkeypatch.setenv(WRITER_ENV, "no_such_module:writer")
    with pytest.raises(ValueError, match=f"{WRITER_ENV}='no_such_module:writer' does not name"):
        CheckpointManager(tmp_path, states={"model": ModelState(model)}, interval=1)
