"""Local task YAMLs: they include the stock task (same prompts and metrics), read the local files,
keep the stock names, and fail clearly on missing data or unknown names."""

from __future__ import annotations

import shutil

import pytest
import yaml

from torchgpt.eval.tasks import (
    LOCAL_TASKS,
    _lm_eval_tasks_dir,
    _unknown_task_error,
    build_task_manager,
    load_tasks,
    local_task_config,
)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_configs_include_the_stock_yaml_and_point_at_local_files(shared_dir):
    eval_dir = shared_dir / "data" / "eval"
    for task, spec in LOCAL_TASKS.items():
        cfg = local_task_config(task, eval_dir)
        assert cfg["task"] == task and cfg["include"].endswith(spec.stock_yaml)
        assert (_lm_eval_tasks_dir() / spec.stock_yaml).is_file()
        assert cfg["dataset_path"] == "json" and cfg["training_split"] is None
        files = cfg["dataset_kwargs"]["data_files"]
        assert files[spec.eval_split] == str(
            (eval_dir / dict(spec.files)[spec.eval_split]).resolve()
        )
    assert set(local_task_config("arc_easy", eval_dir)["dataset_kwargs"]["data_files"]) == {
        "test",
        "validation",
    }


def test_missing_optional_split_is_dropped_and_missing_eval_split_is_an_error(tmp_path, shared_dir):
    (tmp_path / "arc_easy").mkdir()
    shutil.copy(shared_dir / "data/eval/arc_easy/test.jsonl", tmp_path / "arc_easy/test.jsonl")
    cfg = local_task_config("arc_easy", tmp_path)
    assert list(cfg["dataset_kwargs"]["data_files"]) == ["test"]
    assert cfg["validation_split"] is None
    with pytest.raises(ValueError, match="task data for 'piqa' not found") as err:
        local_task_config("piqa", tmp_path)
    assert "piqa/validation.jsonl" in str(err.value) and "../shared/data/eval" in str(err.value)


def test_local_tasks_keep_the_stock_prompts_and_metrics(tmp_path, shared_dir, offline):
    eval_dir = shared_dir / "data" / "eval"
    manager = build_task_manager(["piqa"], eval_dir, tmp_path)
    # Only our YAML is indexed (no 20 s scan of the harness's 15k task configs).
    assert manager.all_tasks == ["piqa"]
    task = load_tasks(manager, ["piqa"], eval_dir)["tasks"]["piqa"]
    stock = yaml.safe_load((_lm_eval_tasks_dir() / "piqa/piqa.yaml").read_text())
    assert task.config.doc_to_text == stock["doc_to_text"]
    assert task.config.doc_to_choice == stock["doc_to_choice"]
    assert [m["metric"] for m in task.config.metric_list] == ["acc", "acc_norm"]
    doc = task.validation_docs()[0]
    assert task.doc_to_text(doc).startswith("Question: ") and len(task.validation_docs()) == 1838


def test_unknown_task_names_get_suggestions():
    err = _unknown_task_error(["hellaswg", "zzz_nothing"], ["hellaswag", "piqa", "arc_easy"])
    assert "'hellaswg' (did you mean hellaswag?)" in str(err)
    assert "'zzz_nothing'" in str(err) and "lm_eval ls tasks" in str(err)
    with pytest.raises(ValueError, match="no tasks given"):
        build_task_manager([], None, None)
