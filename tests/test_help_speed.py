"""Every command answers --help from its flags alone: in a fresh interpreter, without importing torch,
Optuna, pandas or the plotting and statistics libraries (they cost seconds to load); the commands'
parsers share one definition of each shared flag, and help texts that list choices list the real ones."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from resnet_core import cli
from resnet_core.budgets import STUDY_BUDGETS
from resnet_core.commands import parsers

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "optuna", "pandas", "matplotlib", "seaborn", "scipy", "statsmodels")
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
# How a user starts each command: (kind, target) as the driver below runs it.
ENTRIES = ([("script", target) for target in SCRIPTS.values()]
           + [("module", name) for name in ("resnet_core.train", "resnet_core.models", "resnet_core.bench")]
           + [("path", name) for name in ("studies/run.py", "studies/report.py", "ablation/run.py", "ablation/report.py")])
# Runs one entry with --help in this fresh interpreter; its last stderr line says what was loaded.
DRIVER = """
import json, runpy, sys, time
kind, target, heavy = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
sys.argv = [target, "--help"]
start = time.perf_counter()
try:
    if kind == "script":
        module, attr = target.split(":")
        getattr(__import__(module, fromlist=[attr]), attr)()
    elif kind == "module":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(target, run_name="__main__")
    code = "returned"
except SystemExit as exc:
    code = exc.code
seconds = time.perf_counter() - start
print(json.dumps({"code": code, "seconds": seconds, "loaded": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
"""
PARSERS = {"resnet-grid": parsers.grid_parser, "resnet-grid-report": parsers.grid_report_parser,
           "resnet-study": parsers.study_parser, "resnet-study-report": parsers.study_report_parser,
           "resnet-train": parsers.train_parser, "models": parsers.models_parser, "bench": parsers.bench_parser}


@pytest.mark.parametrize("kind, target", ENTRIES, ids=[target.rsplit(":", 1)[-1] for _, target in ENTRIES])
def test_help_loads_no_heavy_library(kind, target):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", DRIVER, kind, target, ",".join(HEAVY)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=REPO)
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert result["code"] == 0 and done.stdout.startswith("usage: "), (done.stdout[:200], done.stderr[-2000:])
    assert result["loaded"] == [], f"{target} --help imported {result['loaded']}"
    # A guard, not a timing: --help takes well under a second here; loading torch alone takes seconds.
    assert result["seconds"] < 3.0, result


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_console_script_parses_with_its_command_modules_parser_then_runs_it(script):
    module, attr = SCRIPTS[script].split(":")
    command = getattr(importlib.import_module(module), attr)
    assert isinstance(command, cli.Command)
    body = importlib.import_module(command.module)
    assert body.build_parser is command.parser and callable(body.console) and callable(body.main)
    assert command.parser().prog == script


def test_the_python_m_forms_start_the_same_commands():
    for name, command in (("train", parsers.resnet_train), ("models", parsers.models), ("bench", parsers.bench)):
        text = (REPO / "resnet_core" / f"{name}.py").read_text(encoding="utf-8")
        assert f"from resnet_core.commands.parsers import {'resnet_train' if name == 'train' else name}" in text
        assert importlib.import_module(command.module).build_parser is command.parser


def test_a_malformed_flag_is_refused_before_the_command_module_loads(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["resnet-study", "--trials", "1", "--epochs", "0"])
    loaded = []
    monkeypatch.setattr(importlib, "import_module", lambda name: loaded.append(name))
    with pytest.raises(SystemExit) as exit_:
        parsers.resnet_study()
    assert exit_.value.code == cli.EXIT_USAGE and loaded == []
    assert capsys.readouterr().err.strip() == "error: --epochs 0: expected an integer >= 1 (epochs per run)"


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


@pytest.mark.parametrize("command", PARSERS)
def test_a_flag_named_like_a_shared_one_is_the_shared_definition(command):
    actions = _actions(PARSERS[command]())
    for flag in cli.SHARED_FLAGS.values():
        if flag.name not in actions:
            continue
        action = actions[flag.name]
        assert action.dest == flag.dest and action.help, (command, flag.name)
        if flag.action is None:
            assert (action.type, action.default) == (flag.type, flag.default), (command, flag.name)
        else:
            assert action.default == ([] if flag.action == "append" else False), (command, flag.name)


@pytest.mark.parametrize("name, commands", [
    ("--storage", {"resnet-study", "resnet-study-report"}), ("--study-name", {"resnet-study", "resnet-study-report"}),
    ("--model", {"resnet-study", "resnet-train", "bench"}), ("--no-figures", {"resnet-study", "resnet-study-report"}),
    ("--grid", {"resnet-grid", "resnet-grid-report"}), ("--device", {"resnet-grid", "resnet-study", "resnet-train", "bench"}),
    ("--set", {"resnet-grid", "resnet-study", "resnet-train", "models"}),
])
def test_the_commands_that_share_a_flag_all_have_it(name, commands):
    assert {command for command, parser in PARSERS.items() if name in _actions(parser())} == commands


def test_help_texts_list_the_real_choices():
    from resnet_core.grid import available_grids
    from resnet_core.recipes import RECIPES
    from resnet_core.study.space import SPACES_DIR

    assert parsers.RECIPE_NAMES == tuple(RECIPES)
    assert cli.builtin_names("grids") == available_grids()
    assert cli.builtin_names("spaces") == sorted(p.stem for p in SPACES_DIR.glob("*.toml"))
    study_val = _actions(parsers.study_parser())["--val-size"].help
    assert f"{STUDY_BUDGETS['quick'].search.val_size:,} on quick" in study_val  # the ceiling trials are judged on
    assert "5,000" in _actions(parsers.train_parser())["--val-size"].help
    assert all(name in parsers.grid_parser().epilog for name in available_grids())


def test_a_shared_flag_is_required_only_where_a_command_asks(capsys):
    with pytest.raises(SystemExit) as exit_:
        parsers.study_report_parser().parse_args([])
    assert exit_.value.code == 2 and "--study-name" in capsys.readouterr().err
    assert parsers.study_parser().parse_args([]).study_name is None
    with pytest.raises(KeyError, match="not among those added"):
        cli.add_flags(argparse.ArgumentParser(), "grid", required=("storage",))
