"""ablation/run.py end to end on tiny synthetic grids: records, summary, figures, resume, failures."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from resnet_core.cli import run_cli
from resnet_core.grid.cells import expand
from resnet_core.grid.spec import load_grid
from resnet_core.runner import run_all
from resnet_core.stats import mean_interval

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "ablation" / "run.py"
FAST = ["--data", "synthetic:200", "--val-size", "40", "--subset", "120", "--epochs", "1", "--device", "cpu"]

TINY = """
name = "tiny"
report = "degradation"
seeds = 2
[fixed]
batch_size = 32
eval_batch_size = 200
checkpoint = false
[axes]
residual = [true, false]
depth = [8, 14]
"""

BROKEN = """
name = "broken"
seeds = 1
[fixed]
depth = 8
norm = "none"
batch_size = 32
[axes]
lr = [0.05, 1e6]  # lr 1e6 without normalisation: NaN loss within one epoch
"""


def driver(name: str):
    """The grid command behind ``ablation/<name>.py``: ``run`` is resnet-grid, ``report`` resnet-grid-report."""
    return importlib.import_module({"run": "resnet_core.commands.grid", "report": "resnet_core.commands.grid_report"}[name])


def grid_file(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))}


def test_tiny_grid_end_to_end_with_two_workers(tmp_path, capsys):
    grid, results = grid_file(tmp_path, TINY, "tiny"), tmp_path / "results"
    code = run_cli(driver("run").main, ["--grid", str(grid), *FAST, "--workers", "2", "--results", str(results)])
    assert code == 0, capsys.readouterr().err
    found = records(results)
    assert len(found) == 8 and {r["status"] for r in found.values()} == {"completed"}
    assert {(r["config"]["model"]["residual"], r["config"]["model"]["depth"], r["config"]["seed"]) for r in found.values()} == {
        (res, d, s) for res in (True, False) for d in (8, 14) for s in (0, 1)}
    assert {r["provenance"]["train_size"] for r in found.values()} == {120}

    out = results / "ablation" / "tiny"
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["cell"]) == ["residual=true, depth=8", "residual=true, depth=14",
                                     "residual=false, depth=8", "residual=false, depth=14"]
    for _, row in summary.iterrows():
        mine = [r for r in found.values() if r["config"]["model"]["residual"] == row["residual"]
                and r["config"]["model"]["depth"] == row["depth"]]
        for metric in ("test_error", "train_error", "val_error"):
            expected = mean_interval([r["final"][metric] for r in mine])
            assert row[f"{metric}_mean"] == pytest.approx(expected["mean"])
            assert row[f"{metric}_std"] == pytest.approx(expected["std"], nan_ok=True)
            assert row[f"{metric}_n"] == 2
        assert row["params"] == mine[0]["params"] and row["macs"] == mine[0]["macs"] > 0
        assert row["seconds_mean"] == pytest.approx(np.mean([r["wall_seconds"] for r in mine]))

    report = (out / "report.md").read_text()
    assert "120 train / 40 val" in report and "1 epoch per run" in report and "Seeds: 2 per cell" in report
    assert "Plain half: degradation" in report and "Residual half" in report and "He et al. 2015, Table 6" in report and (out / "trends.csv").is_file()
    for name in ("curves", "final_vs_depth", "grad_norms", "test_error_by_cell"):
        png = out / f"{name}.png"
        assert png.stat().st_size > 10_000, name
        width, height = Image.open(png).size
        assert width >= 500 and height >= 300, name


def test_dry_run_trains_nothing(tmp_path, capsys):
    grid, results = grid_file(tmp_path, TINY, "tiny"), tmp_path / "results"
    code = run_cli(driver("run").main, ["--grid", str(grid), *FAST, "--results", str(results), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "residual=false, depth=14" in out and "8 runs, 0 already done" in out and "estimated" in out
    assert not (results / "runs").exists() and not (results / "ablation").exists()


def test_diverged_cell_is_reported_not_fatal(tmp_path, capsys):
    grid, results = grid_file(tmp_path, BROKEN, "broken"), tmp_path / "results"
    code = run_cli(driver("run").main, ["--grid", str(grid), *FAST, "--results", str(results)])
    out = capsys.readouterr().out
    assert code == 0 and "diverged: lr=1000000.0" in out and "1 completed, 1 diverged" in out
    assert sorted(r["status"] for r in records(results).values()) == ["completed", "diverged"]
    summary = pd.read_csv(results / "ablation" / "broken" / "summary.csv").set_index("lr")
    assert summary.loc[1e6, "diverged"] == 1 and summary.loc[1e6, "test_error_n"] == 0
    assert "| 1000000 | diverged (1/1) |" in (results / "ablation" / "broken" / "report.md").read_text()


def test_interrupted_grid_resumes_without_training_twice(tmp_path):
    grid, results = grid_file(tmp_path, TINY.replace("seeds = 2", "seeds = 1"), "tiny"), tmp_path / "results"
    argv = [sys.executable, str(RUN), "--grid", str(grid), *FAST, "--results", str(results)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while not any(r["status"] == "completed" for r in records(results).values()):
        assert time.monotonic() < deadline and process.poll() is None, "no run finished"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()[-500:]
    before = {rid: r for rid, r in records(results).items() if r["status"] == "completed"}
    assert 1 <= len(before) < 4

    code = run_cli(driver("run").main, ["--grid", str(grid), *FAST, "--results", str(results)])
    after = records(results)
    assert code == 0 and len(after) == 4 and {r["status"] for r in after.values()} == {"completed"}
    for rid, record in before.items():  # finished runs were not trained again
        assert after[rid]["provenance"]["created_utc"] == record["provenance"]["created_utc"]
        assert after[rid]["wall_seconds"] == record["wall_seconds"]


def test_runner_skips_finished_runs(tmp_path):
    spec = load_grid(str(grid_file(tmp_path, BROKEN, "broken")), tmp_path)
    runs = [c.run for c in expand(spec, {"data.source": "synthetic:200", "val_size": 40, "subset": 120, "epochs": 1,
                                         "device": "cpu"})]
    first = run_all(runs[:1], tmp_path, workers=1, progress=False)
    both = run_all(runs, tmp_path, workers=1, progress=False)
    assert [o.trained_now for o in first] == [True]
    assert [o.trained_now for o in both] == [False, True] and [o.status for o in both] == ["completed", "diverged"]
    assert both[0].test_error == first[0].test_error


def test_device_slots_are_exclusive(tmp_path):
    from resnet_core.runner import _device_slot

    devices = ("cuda:0", "cuda:1")
    with _device_slot(devices, str(tmp_path)) as first:
        with _device_slot(devices, str(tmp_path)) as second:
            assert (first, second) == ("cuda:0", "cuda:1")
            with pytest.raises(RuntimeError, match="no free device slot"):
                with _device_slot(devices, str(tmp_path)):
                    pass
        with _device_slot(devices, str(tmp_path)) as again:
            assert again == "cuda:1"  # released when the run ended
    assert [_slot(devices, tmp_path) for _ in range(2)] == ["cuda:0", "cuda:0"]


def _slot(devices, lock_dir) -> str:
    from resnet_core.runner import _device_slot

    with _device_slot(devices, str(lock_dir)) as device:
        return device
