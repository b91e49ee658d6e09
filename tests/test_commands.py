"""The command-line layer: the shared flags mean the same in every command, and the package works
as a plain (non-editable) install from any directory, with its built-in grids and spaces inside."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from resnet_core.commands import train
from resnet_core.cli import SHARED_FLAGS, UsageError, add_flags, check_flags, run_cli
from resnet_core.commands import grid, grid_report, study, study_report
from resnet_core.progress import progress_bar

REPO = Path(__file__).resolve().parents[1]
PARSERS = {"resnet-grid": grid.build_parser, "resnet-study": study.build_parser, "resnet-train": train.build_parser}
MAINS = {"resnet-grid": (grid.main, ["--grid", "degradation"]), "resnet-study": (study.main, ["--trials", "1"]),
         "resnet-train": (train.main, [])}
# A valid value for each shared flag that takes one (and the value argparse should produce).
VALUES = {"data": ("synthetic:300", "synthetic:300"), "subset": ("120", 120), "val_size": ("40", 40),
          "epochs": ("2", 2), "iterations": ("30", 30), "budget": ("quick", "quick"), "seed": ("3", 3),
          "seeds": ("2", 2), "device": ("cpu", "cpu"), "workers": ("1", 1), "workers_per_gpu": ("2", 2),
          "gpu_memory_fraction": ("0.5", 0.5), "threads": ("1", 1), "fuse": ("off", "off"), "results": ("out", "out"), "set": ("depth=8", ["depth=8"]),
          "model": ("resnet32", "resnet32"), "grid": ("degradation", "degradation"), "study_name": ("s1", "s1"),
          "storage": ("s1.log", "s1.log")}


def flags_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions}


def test_every_shared_flag_has_a_test_value_or_is_a_switch():
    switches = {name for name, flag in SHARED_FLAGS.items() if flag.action == "store_true"}
    assert set(VALUES) | switches == set(SHARED_FLAGS)


@pytest.mark.parametrize("command", PARSERS)
def test_shared_flags_have_the_shared_default_and_parse_alike(command):
    actions = flags_of(PARSERS[command]())
    shared = [name for name in SHARED_FLAGS if name in actions]
    assert {"data", "subset", "val_size", "epochs", "device", "results", "set", "quiet", "dry_run"} <= set(shared)
    for name in shared:
        flag = SHARED_FLAGS[name]
        assert actions[name].option_strings == [flag.name]
        assert actions[name].default == ([] if flag.action == "append" else False if flag.action else flag.default)
    for name in shared:
        if name in VALUES:
            text, expected = VALUES[name]
            required = ["--grid", "g"] if command == "resnet-grid" else []
            parsed = PARSERS[command]().parse_args([*required, SHARED_FLAGS[name].name, text])
            assert getattr(parsed, name) == expected, (command, name)


def test_the_commands_share_one_default_for_workers_and_budget():
    grid_flags, study_flags = flags_of(grid.build_parser()), flags_of(study.build_parser())
    for name in ("workers", "workers_per_gpu", "gpu_memory_fraction", "budget", "device", "results", "threads", "fuse"):
        assert grid_flags[name].default == study_flags[name].default


@pytest.mark.parametrize("command", MAINS)
@pytest.mark.parametrize("flag, value", [("--epochs", "0"), ("--subset", "0"), ("--val-size", "-1"), ("--threads", "0")])
def test_a_bad_shared_value_is_one_line_naming_the_flag_and_exit_2(command, flag, value, tmp_path, capsys):
    main, required = MAINS[command]
    code = run_cli(main, [*required, flag, value, "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {flag} {value}:"), err
    assert not (tmp_path / "r").exists()  # nothing created before the check


def test_check_flags_reads_only_the_flags_a_command_has():
    parser = argparse.ArgumentParser()
    add_flags(parser, "epochs")
    check_flags(parser.parse_args(["--epochs", "1"]))
    with pytest.raises(UsageError, match="--epochs 0"):
        check_flags(parser.parse_args(["--epochs", "0"]))
    with pytest.raises(KeyError, match="no shared flag 'epoch'"):
        add_flags(parser, "epoch")


def test_builtin_grids_and_spaces_live_inside_the_package():
    package = REPO / "resnet_core"
    assert (package / "grids" / "degradation.toml").is_file() and (package / "spaces" / "recipe.toml").is_file()
    assert not (REPO / "ablation" / "grids").exists() and not (REPO / "studies" / "spaces").exists()
    for command in (grid, grid_report, study, study_report):
        assert callable(command.console) and callable(command.main)


def test_the_top_level_package_exports_what_a_notebook_needs():
    import resnet_core

    for name in ("RunConfig", "ModelConfig", "TrainConfig", "DataConfig", "build_model", "load_data", "fit",
                 "load_runs", "load_histories", "recipe", "RECIPES", "run_id"):
        assert hasattr(resnet_core, name), name
        assert name in resnet_core.__all__


TINY_GRID = """
name = "one-cell"
report = "generic"
seeds = 1
[fixed]
depth = 8
batch_size = 32
eval_batch_size = 100
[axes]
residual = [true]
"""


@pytest.mark.slow
def test_a_plain_install_runs_a_study_and_a_grid_from_outside_the_checkout(tmp_path):
    """``pip install .`` (not editable) into a fresh virtual environment; the console scripts then run
    a 1-trial study and a 1-cell grid on synthetic data from a folder that is not the checkout."""
    env_dir = tmp_path / "venv"
    # System site-packages give the venv torch & co. without a download; this interpreter's pip and
    # setuptools build and install the project into it (no build isolation: nothing may be fetched).
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RESNET_CORE_DATA")}
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              "--no-build-isolation", "--no-index", str(REPO)],
                             capture_output=True, text=True, env=clean, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import resnet_core; print(resnet_core.__file__)"],
                           cwd=work, capture_output=True, text=True, env=clean)
    assert str(env_dir) in where.stdout, where  # the installed copy, not the checkout
    (work / "one-cell.toml").write_text(TINY_GRID)
    common = ["--data", "synthetic:200", "--val-size", "40", "--subset", "100", "--epochs", "1", "--device", "cpu",
              "--threads", "1", "--results", "res", "--quiet"]
    commands = [["resnet-study", "--trials", "1", "--space", "recipe", "--no-figures", "--final-seeds", "1", *common],
                ["resnet-grid", "--grid", "one-cell.toml", *common],
                ["resnet-grid", "--grid", "degradation", "--dry-run", "--seeds", "1", "--axis", "depth=8",
                 *common[:-1]]]
    for command in commands:
        done = subprocess.run([str(env_dir / "bin" / command[0]), *command[1:]], cwd=work, capture_output=True,
                              text=True, env=clean, timeout=600)
        assert done.returncode == 0, (command, done.stdout[-1500:], done.stderr[-1500:])
    assert len(list((work / "res" / "runs").glob("*.json"))) == 4  # the trial, its final run, the baseline's, the cell
    assert (work / "res" / "ablation" / "one-cell" / "report.md").is_file()
    assert "## Final stage (test error)" in next((work / "res" / "studies").glob("*/report.md")).read_text()


TINY_TRAIN = ["--data", "synthetic:200", "--epochs", "2", "--device", "cpu", "--threads", "1",
              "--set", "depth=8", "--set", "widths=4,8,16", "--set", "batch_size=50"]


def test_progress_without_a_terminal_is_the_epoch_lines_once_and_no_bar(tmp_path, capsys):
    """Output captured (as when piped to a file): no bar redraws, each epoch's line once."""
    assert run_cli(train.main, [*TINY_TRAIN, "--results", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "it/s" not in out + err and "s/it" not in out + err
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("epoch")] == [["epoch", "1"], ["epoch", "2"]]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal, enabled, drawn", [(True, True, True), (False, True, False), (True, False, False)])
def test_a_bar_is_drawn_only_on_a_terminal_and_never_when_quiet(terminal, enabled, drawn):
    stream = Terminal() if terminal else io.StringIO()
    with progress_bar(enabled, total=3, file=stream) as bar:
        bar.update(3)
    assert ("3/3" in stream.getvalue()) is drawn


def test_counts_of_one_are_singular_in_a_grid_plan(tmp_path, capsys):
    (tmp_path / "one-cell.toml").write_text(TINY_GRID)
    argv = ["--grid", str(tmp_path / "one-cell.toml"), "--dry-run", "--data", "synthetic:200", "--epochs", "1",
            "--device", "cpu", "--threads", "1", "--results", str(tmp_path / "res")]
    assert run_cli(grid.main, argv) == 0
    out = capsys.readouterr().out
    assert "grid one-cell: 1 run (1 cell x 1 seed)" in out
    assert "1 run, 0 already done" in out
