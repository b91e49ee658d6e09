"""Grids under faults: Ctrl-C, SIGKILL, corrupt files and bad input (real runs on tiny synthetic data).

The reference is an uninterrupted run of the same grid with the same thread count: CPU training is
bitwise repeatable at a fixed thread count, so the tables of an interrupted-and-resumed grid must
equal it exactly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from grid_helpers import COMPARED, FAST, RUN, driver, grid_file_fixture, keep_torch_threads, reference, run_grid  # noqa: F401
from resnet_core.cli import run_cli
from resnet_core.grid.report import Report, write_report
from resnet_core.store import RunRecord

grid = grid_file_fixture("faults")


def summary(results: Path) -> pd.DataFrame:
    return pd.read_csv(results / "ablation" / "faults" / "summary.csv")[COMPARED]


def records(results: Path) -> dict[str, dict]:
    """Every record file; json.loads fails the test on a half-written one."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))}


def start(grid: Path, results: Path) -> subprocess.Popen:
    """The grid in its own process group, as a shell runs it (Ctrl-C reaches the whole group)."""
    argv = [sys.executable, str(RUN), "--grid", str(grid), *FAST, "--results", str(results)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_for_record(process: subprocess.Popen, results: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["status"] == "completed" for r in _readable(results)):
        assert time.monotonic() < deadline and process.poll() is None, "no run finished"
        time.sleep(0.05)


def _readable(results: Path) -> list[dict]:
    out = []
    for path in (results / "runs").glob("*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            pass  # polling may race a rename; the assertions later read every file strictly
    return out


def test_sigint_stops_cleanly_and_the_rerun_equals_an_uninterrupted_run(grid, reference, tmp_path):
    results = tmp_path / "results"
    process = start(grid, results)
    wait_for_record(process, results)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()[-800:]
    assert err.decode().strip().splitlines()[-1].startswith("interrupted: finished work is saved")
    before = records(results)
    assert {r["status"] for r in before.values()} <= {"completed", "stopped"}
    assert 1 <= sum(r["status"] == "completed" for r in before.values()) < 4
    for record in before.values():
        RunRecord.from_dict(record)  # every file is a whole record
        if record["status"] == "stopped":
            assert record["stop_reason"] == "KeyboardInterrupt"

    assert run_grid(grid, results) == 0
    after = records(results)
    assert len(after) == 4 and {r["status"] for r in after.values()} == {"completed"}
    for rid, record in before.items():
        if record["status"] == "completed":  # not trained again
            assert after[rid]["provenance"]["created_utc"] == record["provenance"]["created_utc"]
    pd.testing.assert_frame_equal(summary(results), summary(reference), check_exact=True)
    assert {rid: r["final"] for rid, r in after.items()} == {rid: r["final"] for rid, r in records(reference).items()}


def test_sigkill_at_a_random_moment_leaves_no_half_written_file(grid, reference, tmp_path):
    results = tmp_path / "results"
    process = start(grid, results)
    wait_for_record(process, results)
    delay = random.uniform(0.0, 2.0)  # somewhere in the following runs: training, writing, reporting
    print(f"killed {delay:.2f} s after the first record")  # shown if the test fails
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    for path in results.rglob("*.json"):
        json.loads(path.read_text())  # every record and the manifest parse
    for path in results.rglob("*.pt"):
        torch.load(path, weights_only=True)
    for path in (results / "runs").iterdir():  # a leftover temp file is hidden, never a record
        assert path.suffix == ".json" or (path.name.startswith(".") and path.suffix == ".tmp"), path.name

    assert run_grid(grid, results) == 0
    assert {r["status"] for r in records(results).values()} == {"completed"} and len(records(results)) == 4
    pd.testing.assert_frame_equal(summary(results), summary(reference), check_exact=True)


def test_corrupt_and_foreign_files_are_skipped_counted_and_nothing_is_lost(grid, reference, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(reference, results)
    runs = results / "runs"
    victim = sorted(runs.glob("*.json"))[0]
    victim.write_text(victim.read_text()[:200])  # a record cut short (written by something not atomic)
    (runs / "notes.json").write_text('{"hello": "world"}')  # valid JSON, not a run record
    (runs / "list.json").write_text("[1, 2, 3]")

    assert run_grid(grid, results) == 0
    out, err = capsys.readouterr()
    assert "warning: skipped 2 unreadable files in" in err
    assert "1 completed" not in out and "4 completed" in out
    assert json.loads(victim.read_text())["status"] == "completed"  # the cut record's run was trained again
    report = (results / "ablation" / "faults" / "report.md").read_text()
    assert "- Skipped: 2 unreadable files in runs/" in report and "list.json" in report and "notes.json" in report
    pd.testing.assert_frame_equal(summary(results), summary(reference), check_exact=True)

    (runs / "broken.json").write_text("{not json")
    assert run_cli(driver("report").main, ["--grid", str(grid), "--results", str(results)]) == 0
    assert "warning: skipped 3 unreadable files" in capsys.readouterr().err
    assert "- Skipped: 3 unreadable files" in (results / "ablation" / "faults" / "report.md").read_text()


def _unwritable(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("")
    return tmp_path / "a_file" / "results"  # below a regular file: nothing can be created there (even as root)


BAD_INPUTS = {
    # The line names the flag and its value (the shared wording lives in resnet_core/cli.py).
    "epochs": (["--epochs", "-1"], "--epochs -1"),
    "iterations": (["--iterations", "0"], "--iterations 0"),
    "seeds": (["--seeds", "0"], "--seeds 0"),
    "workers": (["--workers", "-1"], "--workers -1"),
    "threads": (["--threads", "0"], "--threads 0"),
    "val_size": (["--val-size", "-5"], "--val-size -5"),
    "grid": (["--grid", "no-such-grid"], "unknown grid 'no-such-grid': expected one of degradation"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_flags_are_one_line_errors_before_training(case, grid, tmp_path, capsys):
    flags, message = BAD_INPUTS[case]
    results = tmp_path / "results"
    fast = [a for a in FAST if a not in ("--epochs", "2")] if "--iterations" in flags else FAST  # exclusive flags
    argv = ["--grid", str(grid), *fast, "--results", str(results), *flags]  # argparse: the last value wins
    assert run_cli(driver("run").main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not results.exists()


GRID_FILES = {
    "malformed TOML": ("name = 'x'\n[axes\ndepth = [8]\n", "malformed TOML: Expected ']'"),
    "python, not data": ("import os\nos.system('touch pwned')\n", "malformed TOML"),
    "unknown preset": ("model = 'resnet999'\n[axes]\ndepth = [8]\n", "unknown model preset 'resnet999': expected one of resnet20"),
    "unknown field": ("[axes]\ndepht = [8]\n", "depht"),
}


@pytest.mark.parametrize("case", sorted(GRID_FILES))
def test_bad_grid_files_are_one_line_errors_and_never_executed(case, tmp_path, capsys, monkeypatch):
    text, message = GRID_FILES[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    monkeypatch.chdir(tmp_path)
    assert run_cli(driver("run").main, ["--grid", str(path), *FAST, "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}") and message in err, err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "results").exists()


def test_unwritable_results_directory_is_one_line_error_before_training(grid, tmp_path, capsys):
    for results in (_unwritable(tmp_path), tmp_path / "a_file"):
        assert run_grid(grid, results) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: results directory '{results}' is not writable: Not a directory" in err


def test_report_files_are_replaced_atomically(tmp_path, monkeypatch):
    """A kill while a report is written leaves the previous files whole, and no stray temp file."""
    import resnet_core.store as store

    def report(text: str) -> Report:
        figure = Figure(figsize=(2, 2))
        figure.subplots().plot([0, 1], [0, 1])
        return Report(summary=pd.DataFrame({"cell": ["a"], "note": [text]}), markdown=text, figures={"fig": figure})

    paths = write_report(report("old"), tmp_path)
    before = {p.name: p.read_bytes() for p in paths}

    def killed(*args):
        raise KeyboardInterrupt  # stands in for the process dying between write and rename

    monkeypatch.setattr(store.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_report(report("new"), tmp_path)
    assert {p.name: p.read_bytes() for p in paths} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "report.md", "summary.csv"]
