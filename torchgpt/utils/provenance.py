"""Where a number came from: the machine, the library versions, the git commit, the command.

Training writes RUN_DIR/run_info.json (one entry per launch) and evaluation stores the same facts
in every result JSON, so a report can name the machine that trained and the one that evaluated.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RUN_INFO_NAME = "run_info.json"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """Short commit of the torchgpt checkout, or None outside a git checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    """The machine this process runs on: CPU, core count, torch threads, GPU, OS."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_name(),
        "num_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if cuda else None,
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "platform": platform.platform(),
    }


def record_launch(run_dir: Path, **facts: Any) -> Path:
    """Append this launch (time, command, host, versions, `facts`) to RUN_DIR/run_info.json.

    Written to a temporary name and renamed, so a crash never leaves a half-written file.
    """
    import torch

    path = Path(run_dir) / RUN_INFO_NAME
    info: dict[str, Any] = {"launches": []}
    if path.exists():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            pass  # unreadable: start a new list rather than fail the training run
    launch = {
        "started_at": now_iso(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "host": host_info(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "git_commit": git_commit(),
        },
        **facts,
    }
    info.setdefault("launches", []).append(launch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
