"""Grid files -> run configs: the built-in grids, command-line edits, and one-line errors."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from resnet_core.budgets import GRID_BUDGETS
from resnet_core.cli import run_cli
from resnet_core.recipes import PAPER, TUTORIAL
from resnet_core.grid import estimate as grid_estimate
from resnet_core.grid.cells import expand
from resnet_core.grid.manifest import load_manifest, save_manifest
from resnet_core.grid.spec import load_grid, parse_axis_option, with_axis, with_seeds
from resnet_core.identity import identity_settings
from resnet_core.models import PRESETS

REPO = Path(__file__).resolve().parents[1]
GRIDS = REPO / "resnet_core" / "grids"


def load_driver(name: str):
    """The grid command behind ``ablation/<name>.py``: ``run`` is resnet-grid, ``report`` resnet-grid-report."""
    return importlib.import_module({"run": "resnet_core.commands.grid", "report": "resnet_core.commands.grid_report"}[name])


def write(tmp_path: Path, text: str, name: str = "g.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ built-in grids

@pytest.mark.parametrize(
    "name, runs, axes",
    [
        ("degradation", 2 * 4 * 3, ("residual", "depth")),
        ("shortcuts", 3 * 2 * 3, ("shortcut", "depth")),
        ("normalization", 2 * 2 * 2 * 3, ("norm", "residual", "depth")),
        ("preactivation", 2 * 2 * 3, ("preact", "depth")),
        ("tutorial-vs-paper", 2 * 3, ("variant",)),
    ],
)
def test_builtin_grids_expand(name, runs, axes):
    spec = load_grid(name, GRIDS)
    cells = expand(spec)
    assert len(cells) == runs and spec.axis_names == axes
    assert len({c.run_id for c in cells}) == runs  # every run is distinct
    assert {c.seed for c in cells} == {0, 1, 2}


def test_degradation_cells_follow_the_paper():
    cells = expand(load_grid("degradation", GRIDS))
    first = cells[0]
    assert first.key == (("residual", True), ("depth", 20)) and first.label == "residual=true, depth=20"
    assert first.run.train == PAPER and first.run.model.shortcut == "A"
    plain56 = [c for c in cells if c.key == (("residual", False), ("depth", 56))]
    assert len(plain56) == 3 and all(not c.run.model.residual and c.run.model.depth == 56 for c in plain56)


def test_seed_vs_paper_links_model_and_recipe():
    cells = expand(load_grid("tutorial-vs-paper", GRIDS))
    by_variant = {dict(c.key)["variant"]: c.run for c in cells if c.seed == 0}
    generic = {"test_eval": "end"}  # what the generic report reads (grid.REPORT_MEASUREMENTS)
    assert by_variant["tutorial"].model == PRESETS["tutorial"]
    assert by_variant["tutorial"].train == dataclasses.replace(TUTORIAL, **generic)
    assert by_variant["resnet20-paper"].model == PRESETS["resnet20"]
    assert by_variant["resnet20-paper"].train == dataclasses.replace(PAPER, **generic)


def test_axis_option_adds_depth_110_with_the_paper_warmup_under_the_paper_budget():
    spec = with_axis(load_grid("degradation", GRIDS), *parse_axis_option("depth=20,56,110"))
    cells = expand(with_seeds(spec, 1), budget=GRID_BUDGETS["paper"].with_length(epochs=3))
    warm = {c.run.model.depth: c.run.train.warmup_iterations for c in cells}
    assert warm == {20: 0, 56: 0, 110: 400}
    assert len(cells) == 6 and all(c.run.train.epochs == 3 and c.run.train.iterations is None for c in cells)
    # Short budgets give every cell the same recipe: no depth-specific warm-up there.
    quick = expand(with_seeds(spec, 1), budget=GRID_BUDGETS["quick"])
    assert {c.run.train.warmup_iterations for c in quick} == {0}
    assert len({(c.run.train.schedule, c.run.train.epochs, c.run.data.subset) for c in quick}) == 1


def test_model_axis_takes_presets_and_seed_axis_sets_seeds(tmp_path):
    path = write(tmp_path, 'recipe = "quick"\n[axes]\nmodel = ["resnet20", "plain20"]\nseed = [4, 7]\n')
    cells = expand(load_grid(str(path), GRIDS))
    assert [(dict(c.key)["model"], c.run.model.residual, c.seed) for c in cells] == [
        ("resnet20", True, 4), ("resnet20", True, 7), ("plain20", False, 4), ("plain20", False, 7)]


def test_axis_strings_are_coerced_and_replace_in_place():
    spec = with_axis(load_grid("shortcuts", GRIDS), "depth", ["56"])
    assert spec.axis_names == ("shortcut", "depth")
    assert {dict(c.key)["depth"] for c in expand(spec)} == {56}


@pytest.mark.parametrize("text, expected", [("depth=20,56", ("depth", ["20", "56"])),
                                            ("widths=16,32;32,64", ("widths", ["16,32", "32,64"]))])
def test_parse_axis_option(text, expected):
    assert parse_axis_option(text) == expected


def test_manifest_round_trip(tmp_path):
    spec = with_seeds(load_grid("degradation", GRIDS), 2)
    cells = expand(spec)
    save_manifest(tmp_path, spec, cells)
    manifest = load_manifest(tmp_path, "degradation")
    assert manifest["axes"] == ["residual", "depth"] and manifest["seeds"] == [0, 1]
    assert manifest["runs"][0] == {"run_id": cells[0].run_id, "cell": "residual=true, depth=20", "seed": 0,
                                   "residual": True, "depth": 20}


# ------------------------------------------------------------------------------ errors

BAD_GRIDS = {
    "unknown field": ('[axes]\ndepht = [20]\n', "depht"),
    "empty axis": ('[axes]\ndepth = []\n', "axis 'depth' is empty"),
    "bad value": ('[axes]\ndepth = [20, 21]\n', "depth=21"),
    "unknown top key": ('axis = 1\n[axes]\ndepth = [20]\n', "unknown key 'axis'"),
    "malformed": ('[axes\ndepth = [20]\n', "malformed TOML"),
    "unknown preset": ('[axes]\nmodel = ["resnet21"]\n', "resnet21"),
    "unknown recipe": ('recipe = "fast"\n[axes]\ndepth = [20]\n', "fast"),
    "unknown report": ('report = "fig6"\n[axes]\ndepth = [20]\n', "fig6"),
    "nothing to vary": ('seeds = 2\n', "no [axes]"),
    "fixed typo": ('[fixed]\nbatchsize = 3\n[axes]\ndepth = [20]\n', "batchsize"),
    "fixed bad type": ('[fixed]\nlr = "fast"\n[axes]\ndepth = [20]\n', "lr='fast'"),
    "same run twice": ('[axes]\n"data.download" = [true, false]\n', "same run"),
    "bad seeds": ('seeds = 0\n[axes]\ndepth = [20]\n', "seeds=0"),
    "cell without name": ('[[cells]]\nmodel = "tutorial"\n', "needs a name"),
    "rule key": ('[axes]\ndepth = [20]\n[[when]]\nif = { depth = 20 }\n', "unknown key 'if'"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_bad_grid_files_are_one_line_errors(tmp_path, case):
    text, fragment = BAD_GRIDS[case]
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        expand(load_grid(str(path), GRIDS))
    message = str(info.value)
    assert fragment in message and str(path) in message and "\n" not in message


@pytest.mark.parametrize("case", ["unknown field", "empty axis", "bad value", "malformed"])
def test_cli_exits_2_with_one_line_before_training(tmp_path, capsys, case):
    path = write(tmp_path, BAD_GRIDS[case][0])
    code = run_cli(load_driver("run").main, ["--grid", str(path), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and BAD_GRIDS[case][1] in err
    assert not (tmp_path / "r").exists()  # nothing was trained or written


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--grid", "nosuch"], "unknown grid 'nosuch'"),
        (["--grid", "degradation", "--axis", "depth"], "expected field=v1,v2"),
        (["--grid", "degradation", "--axis", "depth="], "is empty"),
        (["--grid", "degradation", "--axis", "colour=red"], "colour"),
        (["--grid", "degradation", "--axis", "depth=20,33"], "depth=33"),
        (["--grid", "degradation", "--seeds", "0"], "--seeds 0"),
        (["--grid", "degradation", "--subset", "-5"], "--subset -5"),
        (["--grid", "degradation", "--device", "cuda:7"], "cuda"),
    ],
)
def test_cli_option_errors(tmp_path, capsys, argv, fragment):
    code = run_cli(load_driver("run").main, [*argv, "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and fragment in err


def test_report_without_a_run_is_a_one_line_error(tmp_path, capsys):
    code = run_cli(load_driver("report").main, ["--grid", "degradation", "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "ablation/run.py --grid degradation" in err and err.count("\n") == 1


# ------------------------------------------------------------------ a cell is a run set

CELL_GRID = '[fixed]\ndepth = 8\nbatch_size = 32\n[axes]\nresidual = [true, false]\n'


def dry_run(monkeypatch, tmp_path: Path, path: Path, *extra: str) -> int:
    """``resnet-grid --dry-run`` of ``path`` on tiny synthetic data (no step rate measured): its exit code."""
    run = load_driver("run")
    monkeypatch.setattr(grid_estimate, "measure_step_rate", lambda cfg, steps: 1000.0)
    return run_cli(run.main, ["--grid", str(path), "--data", "synthetic:200", "--epochs", "1", "--device", "cpu",
                              "--results", str(tmp_path / "r"), "--dry-run", *extra])


@pytest.mark.parametrize("argv, fragment", [
    (["--axis", "lr=0.1,0.10"], "axis 'lr' lists 0.1 and 0.10, both lr=0.1"),
    (["--axis", "residual=true,1"], "axis 'residual' lists true and 1, both residual=true"),
])
def test_axis_values_that_are_one_value_of_the_field_are_a_plan_error(tmp_path, capsys, monkeypatch, argv, fragment):
    code = dry_run(monkeypatch, tmp_path, write(tmp_path, CELL_GRID), *argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and fragment in err and "give each value once" in err


def test_a_toml_axis_is_canonicalised_by_the_fields_type(tmp_path):
    path = write(tmp_path, '[axes]\ndepth = [8, 8.0]\n')
    with pytest.raises(ValueError, match=r"axis 'depth' lists 8 and 8.0, both depth=8: give each value once"):
        load_grid(str(path), GRIDS)
    spec = load_grid(str(write(tmp_path, '[axes]\ndepth = [8.0, 14]\nlr = ["0.1", 0.2]\n')), GRIDS)
    assert spec.axes == (("depth", (8, 14)), ("lr", (0.1, 0.2)))  # as the config holds them
    assert [type(v) for v in spec.axes[0][1]] == [int, int]


def test_set_of_an_axis_field_is_a_plan_error_naming_the_axis(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, CELL_GRID)
    for pinned, axis in (("model.residual=true", "residual"), ("seed=3", "seed")):
        code = dry_run(monkeypatch, tmp_path, path, "--set", pinned)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert f"pins the axis {axis!r}" in err and f"--axis {axis}={pinned.split('=')[1]} instead" in err
    with pytest.raises(ValueError, match="pins the axis 'residual'"):  # the library refuses it too
        expand(load_grid(str(path), GRIDS), {"residual": "false"})


def test_two_cells_with_one_name_are_an_error(tmp_path):
    path = write(tmp_path, '[[cells]]\nname = "x"\ndepth = 8\n[[cells]]\nname = "x"\ndepth = 14\n')
    with pytest.raises(ValueError, match=r"cells\[0\] and cells\[1\] are both named 'x'"):
        load_grid(str(path), GRIDS)


def test_cells_that_are_one_run_are_a_plan_error_also_in_a_dry_run(tmp_path, capsys, monkeypatch):
    # The [fixed] depth overrides what tells the two presets apart: both cells are one run.
    path = write(tmp_path, '[fixed]\ndepth = 8\n[axes]\nmodel = ["resnet20", "resnet32"]\n')
    code = dry_run(monkeypatch, tmp_path, path)
    error = capsys.readouterr().err.splitlines()[-1]  # (the plan streams: a progress line may come first)
    assert code == 2 and error.startswith("error: ")
    assert "cells 'model=resnet20' and 'model=resnet32' are the same run" in error


def test_a_grid_measures_the_test_set_only_where_its_report_reads_it(tmp_path):
    for cell in expand(load_grid("shortcuts", GRIDS)):  # generic: only the final test error is read
        assert cell.run.train.test_eval == "end" and cell.run.train.val_epochs is None
    for cell in expand(load_grid("degradation", GRIDS)):  # its curves plot the test error of every epoch
        assert cell.run.train.test_eval == "every_epoch" and cell.run.train.val_epochs is None
        assert not {"train.test_eval", "train.val_epochs"} & set(identity_settings(cell.run))  # ids unchanged
    kept = write(tmp_path, 'report = "generic"\n[fixed]\ntest_eval = "every_epoch"\n[axes]\ndepth = [20]\n')
    assert expand(load_grid(str(kept)))[0].run.train.test_eval == "every_epoch"  # the grid file's own setting wins
    every_epoch = expand(load_grid("shortcuts", GRIDS), {"test_eval": "every_epoch"})  # --set: the ids of every-epoch runs
    assert all("train.test_eval" not in identity_settings(cell.run) for cell in every_epoch)


def test_a_report_kind_is_one_registry_entry_that_grid_files_and_reports_both_read(tmp_path, monkeypatch):
    from resnet_core.grid import kinds
    from resnet_core.grid.report import generic_kind

    path = write(tmp_path, 'report = "mine"\nseeds = 1\n[axes]\nlr = [0.1, 0.2]\n')
    with pytest.raises(ValueError, match="report='mine' is invalid: expected one of degradation, generic"):
        load_grid(str(path))
    monkeypatch.setitem(kinds.KINDS, "mine", kinds.ReportKind(
        "mine", "resnet_core.grid.report:generic_kind", measurements=(("test_eval", "never"),), fields=("train.lr",)))
    spec = load_grid(str(path))
    assert spec.report == "mine" and kinds.report_kind(spec.report).builder() is generic_kind
    assert {cell.run.train.test_eval for cell in expand(spec)} == {"never"}  # what the kind measures
    with pytest.raises(ValueError, match="axis 'depth' cannot be in a grid with report = 'mine'.* axes over lr$"):
        expand(with_axis(spec, "depth", ["8", "14"]))  # the fields its fits compare
