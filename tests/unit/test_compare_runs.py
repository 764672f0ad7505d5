"""tools/compare_runs.py: rows and the plot come from the run files, errors name the folder."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import compare_runs  # noqa: E402


def fake_run(root: Path, name: str, flavor: str, step_time: float, val: list[float]) -> Path:
    run = root / name
    run.mkdir()
    config = {"model": {"flavor": flavor, "qk_norm": False}, "optimizer": {"lr": 3e-3}}
    (run / "config.json").write_text(json.dumps(config))
    launch = {"started_at": "2026-01-01T00:00:00+00:00"}
    (run / "run_info.json").write_text(json.dumps({"launches": [launch]}))
    t0, lines = 1767225600.0, []  # 2026-01-01T00:00:00Z
    for i, v in enumerate(val, start=1):
        step = 10 * i
        t = t0 + 30 + step * step_time
        lines.append(
            {
                "time": t,
                "step": step,
                "loss": v + 0.1,
                "tokens_seen": step * 1000,
                "step_time_s": step_time,
            }
        )
        lines.append({"time": t + 1, "step": step, "val_loss": v, "tokens_seen": step * 1000})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


def test_rows_table_and_plot(tmp_path, capsys):
    a = fake_run(tmp_path, "a", "gpt2-d128-l4", 2.0, [7.0, 6.0, 5.5])
    b = fake_run(tmp_path, "b", "modern-d128-l4", 2.5, [6.8, 5.9, 5.6, 5.4])
    assert compare_runs.main([str(a), str(b), "--out", str(tmp_path / "ABL")]) == 0
    rows = json.loads((tmp_path / "ABL.json").read_text())
    assert (tmp_path / "ABL.png").stat().st_size > 1000
    ra, rb = rows
    assert ra["steps"] == 30 and ra["tokens_seen"] == 30_000 and rb["steps"] == 40
    assert ra["tokens_per_s"] == 30_000 / (30 * 2.0)
    assert abs(ra["wall_clock_min"] - (30 + 60 + 1) / 60) < 1e-9  # launch to the last record
    assert ra["final_val_loss"] == 5.5 and rb["best_val_loss"] == 5.4 and rb["best_val_step"] == 40
    assert ra["params"] == 7_357_312 and ra["params_non_embedding"] == 793_344
    assert [p["val_loss"] for p in rb["val_curve"]] == [6.8, 5.9, 5.6, 5.4]
    out = capsys.readouterr().out
    assert (
        "| a | gpt2-d128-l4 | 7,357,312 (793,344) | 30 | 30,000 | 1.5 min | 500 | 5.5000 |" in out
    )


def test_not_a_run_is_a_clear_error(tmp_path, capsys):
    assert compare_runs.main([str(tmp_path)]) == 2
    assert f"{tmp_path}/config.json does not exist" in capsys.readouterr().err
