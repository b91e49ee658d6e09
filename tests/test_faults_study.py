"""Faults of studies/run.py on the default journal store: Ctrl-C (SIGINT) and SIGTERM stop cleanly
with exit code 130 and the next run resumes; SIGKILL at random moments leaves no half-written
record, checkpoint, report or journal; bad input is one line with exit code 2 before any training."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from resnet_core.cli import run_cli
from resnet_core.store import checkpoint_path, find_record, iter_records, read_record
from resnet_core.study.common import FINISHED
from resnet_core.study.storage import default_storage, open_storage
from resnet_core.study.recovery import _pid_alive

REPO = Path(__file__).resolve().parents[1]
from resnet_core.commands import study as run_driver  # resnet-study (studies/run.py in a checkout)

SPACE = '[params.lr]\ntype = "float"\nlow = 0.01\nhigh = 0.2\nlog = true\n'


@pytest.fixture(autouse=True)
def _quiet():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_args(tmp_path: Path, *extra: str, epochs: int = 2) -> list[str]:
    """A depth-8 study on 200 synthetic images, one CPU thread, journal store under tmp_path/res."""
    space = tmp_path / "tiny.toml"
    space.write_text(SPACE)
    return ["--space", str(space), "--data", "synthetic:300", "--subset", "200", "--val-size", "100",
            "--epochs", str(epochs), "--set", "depth=8", "--set", "widths=4,8,16", "--set", "batch_size=50",
            "--set", "eval_batch_size=500", "--device", "cpu", "--results", str(tmp_path / "res"),
            "--study-name", "tiny", "--quiet", "--no-figures", "--sampler", "random", "--threads", "1",
            "--pruner", "median", "--final-seeds", "0",
            "--set", f"val_epochs={','.join(map(str, range(1, epochs + 1)))}", *extra]  # a report every epoch


def start(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "studies" / "run.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def load(results: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=open_storage(default_storage(results, "tiny")))


def wait_until(condition, proc: subprocess.Popen, timeout: float = 90) -> bool:
    """True once ``condition()`` holds; False if the process ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    pytest.fail("timed out waiting for the study to make progress")


def assert_whole_files(results: Path) -> None:
    """Every record, checkpoint and report is complete: parseable, never half written."""
    records, skipped = iter_records(results)
    assert skipped == [], skipped
    for path in (results / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        assert state["run_id"] == path.stem and state["history"]
    report = results / "studies" / "tiny"
    if (report / "best.json").exists():
        json.loads((report / "best.json").read_text())
    if (report / "trials.csv").exists():
        assert not pd.read_csv(report / "trials.csv").empty
    if (report / "report.md").exists():
        assert (report / "report.md").read_text().startswith("# Study `tiny`")
    if (results / "studies" / "tiny.log").exists():
        load(results).trials  # the journal replays


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_mid_trial_exits_130_and_the_rerun_resumes(tmp_path, signum):
    results = tmp_path / "res"
    args = study_args(tmp_path, "--trials", "1", epochs=15)
    proc = start(args)
    started = wait_until(lambda: any((results / "checkpoints").glob("*.pt")), proc)
    assert started, proc.communicate()[1][-2000:]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: finished work is saved")

    study = load(results)
    stopped, queued = study.trials
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"].startswith("interrupted")
    assert queued.state == TrialState.WAITING and queued.system_attrs["fixed_params"] == stopped.params  # re-queued
    record = find_record(results, stopped.user_attrs["run_id"])
    assert record.status == "stopped" and record.stop_reason == "KeyboardInterrupt"  # its record was flushed
    checkpoint = torch.load(checkpoint_path(results, record.run_id), weights_only=True)
    assert_whole_files(results)

    assert run_driver.main(args) == 0
    study = load(results)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    resumed = study.trials[1]
    assert resumed.user_attrs["run_id"] == record.run_id and resumed.user_attrs["retry_of"] == 0
    assert min(resumed.intermediate_values) == len(checkpoint["history"]) + 1  # continued, not restarted
    final = find_record(results, record.run_id)
    assert final.status == "completed" and [h["epoch"] for h in final.history] == list(range(1, 16))
    assert not checkpoint_path(results, record.run_id).exists()
    assert_whole_files(results)


def test_ctrl_c_stops_every_worker_process_and_the_rerun_completes(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group: the driver and its spawned workers."""
    results = tmp_path / "res"
    args = study_args(tmp_path, "--trials", "2", "--workers", "2", epochs=15)
    proc = start(args, start_new_session=True)  # a process group of its own, like a terminal's job
    started = wait_until(lambda: len(list((results / "checkpoints").glob("*.pt"))) >= 2, proc, timeout=120)
    assert started, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err[-2000:]

    study = load(results)
    stopped = study.get_trials(states=(TrialState.FAIL,))
    assert len(stopped) == 2 and not study.get_trials(states=(TrialState.RUNNING,))
    assert all(t.user_attrs["fail_reason"].startswith("interrupted") for t in stopped)
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2
    assert not any(_pid_alive(t.user_attrs["pid"]) for t in stopped)  # no worker left behind
    assert {find_record(results, t.user_attrs["run_id"]).status for t in stopped} == {"stopped"}
    assert_whole_files(results)

    assert run_driver.main(_with(args, ["--workers", "1"])) == 0
    study = load(results)
    resumed = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs["retry_of"] for t in resumed) == sorted(t.number for t in stopped)
    assert all(min(t.intermediate_values) > 1 for t in resumed)  # both continued from their checkpoints
    assert_whole_files(results)


def test_sigkill_at_random_moments_leaves_only_whole_files(tmp_path):
    """Three workers killed at random moments (start-up, training, reports), then a run to the end."""
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    results = tmp_path / "res"
    args = study_args(tmp_path, "--trials", "3", epochs=3)
    progress = [lambda: True,  # anywhere in start-up, planning or the first trial
                lambda: any((results / "runs").glob("*.json")),  # once a record exists
                lambda: len(list((results / "runs").glob("*.json"))) >= 2]
    for condition in progress:
        proc = start(args)
        if wait_until(condition, proc):
            time.sleep(rng.uniform(0.0, 2.0))
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert_whole_files(results), f"FAULT_SEED={seed}"

    assert run_driver.main(args) == 0, f"FAULT_SEED={seed}"
    study = load(results)
    assert len(study.get_trials(states=FINISHED)) == 3, f"FAULT_SEED={seed}"
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING)), f"FAULT_SEED={seed}"
    for trial in study.get_trials(states=FINISHED):
        assert read_record(results / "runs" / f"{trial.user_attrs['run_id']}.json").status in ("completed", "stopped")
    assert_whole_files(results)
    best = json.loads((results / "studies" / "tiny" / "best.json").read_text())
    assert best["value"] == min(t.value for t in study.get_trials(states=(TrialState.COMPLETE,)))


# ---------------------------------------------------------------------------- bad input


def _file_in_the_way(tmp_path: Path) -> str:
    (tmp_path / "a-file").write_text("not a folder")
    return str(tmp_path / "a-file" / "results")


BAD_INPUT = {  # case -> (flags replacing or added to the tiny study's, start of the error message)
    "malformed space": (["--space", "{bad_toml}"], "space {bad_toml}: invalid TOML"),
    "unknown preset": (["--model", "resnet21"], "unknown model preset 'resnet21': expected one of resnet20,"),
    "negative epochs": (["--epochs", "-1"], "--epochs -1: expected an integer >= 1"),
    "zero epochs": (["--epochs", "0"], "--epochs 0: expected an integer >= 1"),
    "negative trials": (["--trials", "-1"], "--trials -1: expected an integer >= 0"),
    "negative add": (["--add", "-1", "--trials", None], "--add -1: expected an integer >= 0"),
    "negative workers": (["--workers", "-1"], "--workers -1: expected an integer >= 0"),
    "zero threads": (["--threads", "0"], "--threads 0: expected an integer >= 1"),
    "negative subset": (["--subset", "-5"], "--subset -5: expected an integer >= 1"),
    "negative timeout": (["--timeout", "-5"], "--timeout -5.0: expected a number of seconds > 0"),
    "zero stale-after": (["--stale-after", "0"], "--stale-after 0.0: expected a number of seconds > 0"),
    "unwritable results": (["--results", "{in_a_file}"], "results directory '{in_a_file}' is not writable: Not a directory"),
    "storage is a folder": (["--storage", "{tmp}"], "storage {tmp} is a directory"),
    "unreachable storage": (["--storage", "postgresql://user:secret@127.0.0.1:1/x"],
                            "storage postgresql://user:***@127.0.0.1:1/x"),
    "unknown storage scheme": (["--storage", "nosuchdb://user:secret@host/x"],
                               "storage nosuchdb://user:***@host/x cannot be opened: Can't load plugin"),
}


def _with(args: list[str], changes: list[str | None]) -> list[str]:
    args = list(args)
    for flag, value in zip(changes[::2], changes[1::2]):
        if flag in args:
            index = args.index(flag)
            args[index:index + 2] = [] if value is None else [flag, value]
        elif value is not None:
            args += [flag, value]
    return args


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_before_any_training(case, tmp_path, capsys):
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[params.lr\n")
    names = {"bad_toml": bad_toml, "in_a_file": _file_in_the_way(tmp_path), "tmp": tmp_path}
    changes, message = BAD_INPUT[case]
    changes = [c.format(**names) if c else c for c in changes]
    args = _with(study_args(tmp_path, "--trials", "1"), changes)
    assert run_cli(run_driver.main, args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # failed before the plan was printed (no data loaded, no timing measured)
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"error: {message.format(**names)}"), captured.err
    assert "secret" not in captured.err
    assert not (tmp_path / "res" / "runs").exists() and not (tmp_path / "res" / "studies").exists()
