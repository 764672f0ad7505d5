"""README's "Use the model" section: every code block, run in order on a small trained run.

Paths in the snippets are the README's own (`outputs/mini_gpt_100m`, `hf_out`, `my_tasks/`...),
replaced here by the test's folders; `python` is this interpreter. A snippet that stops working
fails this test, so the README cannot drift from the code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.integration.test_ecosystem import TASK, offline_env, write_task
from tests.trainer_utils import run_trainer

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def snippets() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Use the model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(python|bash)\n(.*?)```", section, flags=re.S)


def test_the_section_has_python_and_shell_snippets():
    kinds = [kind for kind, _ in snippets()]
    assert kinds.count("python") >= 3 and kinds.count("bash") >= 3


def test_every_use_the_model_snippet_runs(token_shards, shared_dir, gpt2_bpe_dir, tmp_path):
    run_trainer(
        str(token_shards),
        str(tmp_path / "outputs"),
        [
            *("--training.steps", "2", "--checkpoint.enable", "true", "--checkpoint.interval", "2"),
            *("--validation.enable", "true", "--validation.interval", "2"),
            *("--validation.tokens", "8192"),
        ],
    )
    run_dir = tmp_path / "outputs" / "torchgpt"
    tasks = write_task(tmp_path / "my_tasks")
    replace = [
        ("outputs/mini_gpt_100m", str(run_dir)),
        ("../shared/data/eval", str(shared_dir / "data" / "eval")),
        ("my_tasks/", str(tasks)),
        ("my_task ", f"{TASK} "),
        ('"hf_out"', repr(str(tmp_path / "hf_out"))),
        ("hf_out/", str(tmp_path / "hf_out")),
        (" model.pt", f" {tmp_path / 'model.pt'}"),
        ("torchgpt-lm-eval ", f"{BIN / 'torchgpt-lm-eval'} "),
    ]
    env = offline_env(gpt2_bpe_dir)
    namespace: dict = {}
    old_env = dict(os.environ)
    os.environ.update(env)
    try:
        for kind, code in snippets():
            for before, after in replace:
                code = code.replace(before, after)
            if kind == "python":
                exec(compile(code, "README.md", "exec"), namespace)
                continue
            for line in code.strip().splitlines():
                line = line.split("  #")[0]
                if line.startswith("python "):
                    line = f"{sys.executable} {line[len('python ') :]}"
                proc = subprocess.run(
                    line, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
                )
                assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    assert namespace["meta"]["step"] == 2 and 0.0 <= namespace["scores"]["tasks"]["piqa"]["acc"]
    assert (tmp_path / "hf_out" / "tokenizer.json").is_file()
