"""One rule finds the GPT-2 BPE files for every tool (flag > TORCHGPT_GPT2_BPE_DIR >
TORCHGPT_SHARED_DIR/tokenizers/gpt2 > network), and a failed fetch is one error line, exit 2,
nothing written (issue #27)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import requests
import tiktoken.load
import tiktoken.registry

from torchgpt.checkpoint import save_model_only
from torchgpt.data import tokenizer as tok
from torchgpt.model import GPT, get_model_args

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No BPE variable set, an empty tiktoken cache, no encoding loaded in this process."""
    monkeypatch.delenv(tok.BPE_DIR_ENV, raising=False)
    monkeypatch.delenv(tok.SHARED_DIR_ENV, raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken_cache"))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(tok, "_ENCODING", None)


@pytest.fixture
def no_network(clean_env, monkeypatch):
    """Every download fails as with no network; returns the hub calls made. HF_HUB_OFFLINE is
    off whatever the environment says (an offline CI exports it), so the no-network path runs."""
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    from torchgpt.eval import hf_export

    def offline_read(url):
        raise requests.exceptions.ConnectionError(f"Failed to resolve host for {url}")

    calls = []
    real = AutoTokenizer.from_pretrained

    def hub(name, *args, **kwargs):
        if str(name) != "gpt2":
            return real(name, *args, **kwargs)  # a local folder (the staged check)
        calls.append(kwargs)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(tiktoken.load, "read_file", offline_read)
    monkeypatch.setattr(hf_export, "hub_unreachable", lambda: "cannot reach hub (ConnectError)")
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", hub)
    return calls


def shared_tree(root: Path, bpe: Path) -> Path:
    """A TORCHGPT_SHARED_DIR whose tokenizers/gpt2 links to the real BPE files."""
    folder = root / "tokenizers" / "gpt2"
    folder.mkdir(parents=True)
    for name in tok.GPT2_FILES:
        (folder / name).symlink_to(bpe / name)
    return root


def test_resolution_order_flag_then_bpe_var_then_shared_then_network(
    tmp_path, clean_env, monkeypatch
):
    flag, bpe, shared = tmp_path / "flag", tmp_path / "bpe", tmp_path / "shared"
    assert tok.resolve_bpe_dir() is None  # nothing set: the network (or a cache)
    monkeypatch.setenv(tok.SHARED_DIR_ENV, str(shared))
    assert tok.resolve_bpe_dir() == shared / "tokenizers" / "gpt2"
    monkeypatch.setenv(tok.BPE_DIR_ENV, str(bpe))
    assert tok.resolve_bpe_dir() == bpe
    assert tok.resolve_bpe_dir(flag) == flag
    assert tok.resolve_bpe_dir(str(flag)) == flag
    monkeypatch.setenv(tok.BPE_DIR_ENV, "")  # empty counts as unset
    assert tok.resolve_bpe_dir("") == shared / "tokenizers" / "gpt2"
    monkeypatch.setenv(tok.SHARED_DIR_ENV, "")
    assert tok.resolve_bpe_dir() is None


def test_shared_dir_alone_serves_both_tokenizers_offline(
    tmp_path, gpt2_bpe_dir, no_network, monkeypatch
):
    from torchgpt.eval.hf_export import load_gpt2_tokenizer

    monkeypatch.setenv(tok.SHARED_DIR_ENV, str(shared_tree(tmp_path / "shared", gpt2_bpe_dir)))
    assert tok.get_tokenizer().encode_ordinary("Hello world") == [15496, 995]
    assert load_gpt2_tokenizer()("Hello world")["input_ids"] == [15496, 995]
    assert no_network == []  # the hub was never asked


def test_flag_wins_over_a_broken_env_folder(tmp_path, gpt2_bpe_dir, no_network, monkeypatch):
    from torchgpt.eval.hf_export import load_gpt2_tokenizer

    monkeypatch.setenv(tok.BPE_DIR_ENV, str(tmp_path / "missing"))
    monkeypatch.setenv(tok.SHARED_DIR_ENV, str(tmp_path / "missing_too"))
    assert tok.get_tokenizer(gpt2_bpe_dir).encode_ordinary("Hello world") == [15496, 995]
    assert load_gpt2_tokenizer(gpt2_bpe_dir)("Hello world")["input_ids"] == [15496, 995]
    with pytest.raises(ValueError) as err:  # without the flag the env folder is used, and named
        load_gpt2_tokenizer()
    message = str(err.value)
    assert str(tmp_path / "missing" / "vocab.bpe") in message and tok.BPE_DIR_ENV in message


def test_shared_dir_without_the_files_is_named(tmp_path, clean_env, monkeypatch):
    monkeypatch.setenv(tok.SHARED_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError) as err:
        tok.get_tokenizer()
    message = str(err.value)
    assert str(tmp_path / "tokenizers" / "gpt2" / "vocab.bpe") in message
    assert f"from ${tok.SHARED_DIR_ENV}" in message and "\n" not in message


def test_hub_failure_is_one_line_without_network_retries(no_network):
    from torchgpt.eval.hf_export import load_gpt2_tokenizer

    with pytest.raises(tok.TokenizerUnavailable) as err:
        load_gpt2_tokenizer()
    message = str(err.value)
    assert "\n" not in message and "gpt2" in message
    # Online the quick check found the hub unreachable; under CI's HF_HUB_OFFLINE=1 it is skipped.
    assert "cannot reach hub" in message or "HF_HUB_OFFLINE" in message, message
    for option in (tok.BPE_DIR_ENV, tok.SHARED_DIR_ENV, "--tokenizer-dir"):
        assert option in message
    # The hub was unreachable: transformers was asked for its local cache only, so it could not
    # spend its ~50 s of retries.
    assert no_network == [{"local_files_only": True}]


def test_write_hf_folder_failure_leaves_no_tmp(tmp_path, gpt2_bpe_dir, monkeypatch):
    from torchgpt.eval import hf_export

    model = GPT(get_model_args("debug", dim=32, n_layers=1, n_heads=2, max_seq_len=64))
    model.init_weights(seed=0)
    out = tmp_path / "hf"
    monkeypatch.setattr(hf_export, "CHECK", ("Hello world", [0, 1]))  # fails after the writes
    with pytest.raises(ValueError, match="exported tokenizer gives"):
        hf_export.write_hf_folder(model, out, bpe_dir=gpt2_bpe_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture
def export_run(tmp_path) -> Path:
    """RUN_DIR with model.pt of a tiny model and a model card."""
    run = tmp_path / "run"
    model = GPT(get_model_args("debug", dim=32, n_layers=1, n_heads=2, max_seq_len=64))
    model.init_weights(seed=0)
    save_model_only(model.state_dict(), asdict(model.args), {}, run / "model.pt", step=3)
    (run / "report").mkdir()
    (run / "report" / "MODEL_CARD.md").write_text("# card\n")
    return run


def test_eval_tool_offline_is_exit_2_and_writes_nothing(export_run, no_network, capsys):
    import eval as eval_cli

    out = export_run / "results"
    assert eval_cli.main([str(export_run / "model.pt"), "--out", str(out), "--tasks", "none"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "cannot load the GPT-2 tokenizer" in line and tok.SHARED_DIR_ENV in line
    assert not out.exists()


def test_push_to_hub_offline_is_exit_2_and_stages_nothing(export_run, no_network, capsys):
    import push_to_hub

    stage = export_run / "hub"
    argv = [str(export_run), "--repo-id", "me/x", "--which", "export", "--stage", str(stage)]
    assert push_to_hub.main(argv + ["--dry-run"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "GPT-2 tokenizer" in line and "--tokenizer-dir" in line
    assert not stage.exists() and not (export_run / "hub.tmp").exists()


def test_prepare_tool_offline_is_exit_2_and_leaves_no_folder(tmp_path, no_network, capsys):
    import prepare_data

    (tmp_path / "doc.txt").write_text("Stars form in clouds of gas.")
    out = tmp_path / "shards"
    argv = ["--out", str(out), "--input", str(tmp_path / "doc.txt"), "--workers", "0"]
    assert prepare_data.main(argv + ["--no-progress"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "cannot load the GPT-2 tokenizer" in line and tok.BPE_DIR_ENV in line
    assert not out.exists()


def test_prepare_hub_dataset_unreachable_fails_at_once(tmp_path, monkeypatch, capsys):
    import prepare_data

    from torchgpt.data import sources

    monkeypatch.setattr(prepare_data, "hub_unreachable", lambda: "cannot reach hub (ConnectError)")
    monkeypatch.setattr(sources, "open_hub_documents", lambda *a, **k: pytest.fail("hub asked"))
    out = tmp_path / "shards"
    assert prepare_data.main(["--out", str(out), "--workers", "0", "--no-progress"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "cannot reach hub" in line and "--input" in line
    assert not out.exists()

    # A failure after the output folder was made (datasets gives up): the folder goes too.
    def gives_up(*args, **kwargs):
        raise RuntimeError("cannot stream dataset 'x': Couldn't reach 'x' on the Hub")

    monkeypatch.setattr(prepare_data, "hub_unreachable", lambda: None)
    monkeypatch.setattr(sources, "open_hub_documents", gives_up)
    assert prepare_data.main(["--out", str(out), "--workers", "0", "--no-progress"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "Couldn't reach" in line and not out.exists()
