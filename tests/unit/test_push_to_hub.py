"""tools/push_to_hub.py: the staged folder loads in transformers, equal logits, and a Hub card."""

import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from torchgpt.checkpoint import save_model_only
from torchgpt.data.tokenizer import BPE_DIR_ENV
from torchgpt.model import GPT, get_model_args

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import push_to_hub  # noqa: E402


@pytest.fixture
def run_dir(tmp_path, gpt2_bpe_dir, monkeypatch):
    monkeypatch.setenv(BPE_DIR_ENV, str(gpt2_bpe_dir))
    model = GPT(get_model_args("debug", dim=32, n_layers=1, n_heads=2, max_seq_len=64))
    model.init_weights(seed=0)
    config = {"data": {"dataset_path": "data/fineweb_edu"}}
    save_model_only(model.state_dict(), asdict(model.args), config, tmp_path / "model.pt", step=7)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "MODEL_CARD.md").write_text("# Model card: tiny\n\nval_loss 9.9\n")
    (tmp_path / "report" / "BENCHMARK.md").write_text("# Benchmark\n")
    return tmp_path, model


def test_dry_run_stages_a_checked_transformers_folder(run_dir, capsys):
    run, model = run_dir
    stage = run / "hub"
    argv = [str(run), "--repo-id", "me/tiny", "--which", "export", "--stage", str(stage)]
    assert push_to_hub.main(argv + ["--dry-run"]) == 0
    assert "--dry-run: not uploading" in capsys.readouterr().out
    names = {p.name for p in stage.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "BENCHMARK.md"} <= names
    assert "tokenizer.json" in names and not (run / "hub.tmp").exists()
    readme = (stage / "README.md").read_text()
    assert readme.startswith("---\nlanguage: en\nlicense: bsd-3-clause\n")
    assert "datasets: [HuggingFaceFW/fineweb-edu]" in readme and "val_loss 9.9" in readme

    # Independently of the tool's own check: transformers reloads it with torchgpt's logits.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(stage)("Stars form in clouds")["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(stage).eval()
    with torch.no_grad():
        ours = model.eval()(torch.tensor([ids]))
        theirs = hf(torch.tensor([ids])).logits[..., : ours.shape[-1]]
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)

    # Restaging over our own folder is allowed; over an unrelated folder it is refused.
    assert push_to_hub.main(argv + ["--dry-run"]) == 0
    other = run / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    argv[-1] = str(other)
    assert push_to_hub.main(argv + ["--dry-run"]) == 2
    assert "is not a torchgpt staging folder" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"


def test_missing_card_is_a_clear_error(run_dir, capsys):
    run, _ = run_dir
    (run / "report" / "MODEL_CARD.md").unlink()
    argv = [str(run), "--repo-id", "me/tiny", "--which", "export", "--dry-run"]
    assert push_to_hub.main(argv) == 2
    err = capsys.readouterr().err
    assert "MODEL_CARD.md does not exist" in err and "tools/report.py" in err
