"""What a study tells its user, checked on tiny synthetic studies: the plan names the sizes the trials
really use and one line per searched parameter, --iterations sets a trial's length, the reproduce
command trains as printed, and the report's header names the data's fingerprint and the code."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_core.cli import run_cli
from resnet_core.commands import study as run_driver
from resnet_core.identity import run_id
from resnet_core.store import load_runs
from resnet_core.study.plan import plan
from resnet_core.study.spec import trial_config
from resnet_core.study.tables import reproduce_command
from study_helpers import tiny_request
from test_study import _quiet_env, space, tiny_args  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]


def _plan_output(tmp_path: Path, space: Path, capsys, *extra: str) -> str:
    assert run_cli(run_driver.main, tiny_args(tmp_path, space, "--trials", "2", "--dry-run", *extra)) == 0
    return capsys.readouterr().out


def test_the_plan_names_the_sizes_flags_chose_not_the_budgets(tmp_path, space, capsys):
    out = _plan_output(tmp_path, space, capsys, "--budget", "quick")
    budget_line = next(line for line in out.splitlines() if line.startswith("budget"))
    assert "on 200 training images, judged on 100 validation images" in budget_line  # --subset 200 --val-size 100
    assert "3,250" not in budget_line and "2,000" not in budget_line  # the quick budget's own sizes


def test_the_plan_gives_one_line_per_searched_parameter_with_its_untuned_value(tmp_path, space, capsys):
    lines = _plan_output(tmp_path, space, capsys).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("space"))
    assert "2 searched parameters" in lines[start]
    params = lines[start + 1:start + 3]
    assert params[0].split()[0] == "lr" and "(untuned: " in params[0]
    assert params[1].split()[0] == "momentum" and "(untuned: 0.9)" in params[1]
    assert all(len(line) < 120 for line in lines[start:start + 3])


def test_iterations_set_the_length_of_a_full_trial(tmp_path, space, capsys):
    args = tiny_args(tmp_path, space, "--trials", "2", "--dry-run")
    at = args.index("--epochs")
    del args[at:at + 2]
    assert run_cli(run_driver.main, args + ["--iterations", "8"]) == 0
    out = capsys.readouterr().out
    assert "trials of up to 8 iterations" in out
    setup, _ = plan(tiny_request(tmp_path, space, epochs=None, iterations=8))
    assert setup.spec.base.train.iterations == 8 and setup.spec.budget_epochs == 2  # 200 images / 50 a batch
    with pytest.raises(SystemExit) as refused:  # one length only: argparse's one-line error, exit 2
        run_cli(run_driver.main, args + ["--iterations", "8", "--epochs", "2"])
    assert refused.value.code == 2


def test_a_reproduce_command_with_no_validation_epochs_trains_the_same_run(tmp_path, space):
    setup, _ = plan(tiny_request(tmp_path, space, pruner="none", epochs=1))
    run = trial_config(setup.spec, {"lr": 0.05, "momentum": 0.8}, "cpu")
    assert run.train.val_epochs == ()  # no rung: validation at the last epoch only
    command = reproduce_command(run, setup.spec.model, setup.spec.recipe)
    assert "val_epochs=()" in command and not command.rstrip().endswith("=")
    argv = shlex.split(command)[3:] + ["--results", str(tmp_path / "again"), "--device", "cpu", "--quiet"]
    env = {"PYTHONPATH": str(ROOT), "RESNET_CORE_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "resnet_core.train", *argv], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    runs = load_runs(tmp_path / "again")
    assert list(runs["run_id"]) == [run_id(run)] and list(runs["status"]) == ["completed"]


def test_the_report_header_names_the_data_fingerprint_and_the_code(tmp_path, space):
    assert run_cli(run_driver.main, tiny_args(tmp_path, space, "--trials", "2")) in (0, 1)
    report = (tmp_path / "studies" / "tiny" / "report.md").read_text()
    fingerprint = load_runs(tmp_path)["provenance.data_fingerprint"].iloc[0]
    assert f"fingerprint {fingerprint}" in report
    code = next(line for line in report.splitlines() if line.startswith("| code that ran the trials"))
    assert "git " in code and ("clean tree" in code or "uncommitted changes" in code or "unknown" in code)
    assert any(line.startswith("| report built by") for line in report.splitlines())
    space_row = next(line for line in report.splitlines() if line.startswith("| search space"))
    assert "2 searched parameters<br>lr float [0.01, 0.2] log (untuned: 0.1)<br>momentum" in space_row
