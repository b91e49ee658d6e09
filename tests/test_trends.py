"""Degradation verdicts from fitted models, grid budgets, the budget scan and report headers."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from resnet_core.budgets import GRID_BUDGETS, STUDY_BUDGETS, lookup, resolve_grid_budget
from resnet_core.cli import run_cli
from resnet_core.recipes import recipe
from resnet_core.degradation import degradation_sentence, residual_sentence, trends_for, verdicts_for
from resnet_core.grid.cells import expand
from resnet_core.grid.spec import load_grid
from resnet_core.trends import INTERACTION, PLAIN_SLOPE, RESIDUAL_SLOPE, TREND_COLUMNS, scan_table, term, trend_table

from grid_helpers import driver

REPO = Path(__file__).resolve().parents[1]
GRIDS = REPO / "resnet_core" / "grids"
DEPTHS = (20, 32, 44, 56)
NOISE = (-0.4, 0.0, 0.4)  # per-seed offsets: symmetric, so the fitted slopes are exact


def constructed(plain_slope: float, residual_slope: float, seeds: int = 3, extra: list[dict] | None = None) -> pd.DataFrame:
    """A grid table with known slopes (points of training error per 10 layers) and small noise."""
    rows = []
    for family, slope in (("plain", plain_slope), ("residual", residual_slope)):
        for depth in DEPTHS:
            for seed in range(seeds):
                error = 40 + slope * (depth - 20) / 10 + (NOISE[seed % 3] if seeds > 1 else 0.1 * ((depth // 4) % 3 - 1))
                rows.append({"family": family, "depth": depth, "seed": seed, "status": "completed",
                             "cell": f"{family} {depth}", "final.train_error": error, "final.test_error": error + 5})
    return pd.DataFrame(rows + (extra or []))


MANIFEST = {"axes": ["residual", "depth"], "budget": {"name": "quick", "length": "4 epochs on 10,000 training images"}}


def test_plain_rising_residual_flat_is_reproduced():
    trends = trend_table(constructed(plain_slope=5.0, residual_slope=0.0))
    assert list(trends.columns) == TREND_COLUMNS
    plain, residual = term(trends, "train_error", PLAIN_SLOPE), term(trends, "train_error", RESIDUAL_SLOPE)
    interaction = term(trends, "train_error", INTERACTION)
    assert plain["estimate"] == pytest.approx(5.0) and residual["estimate"] == pytest.approx(0.0, abs=1e-9)
    assert interaction["estimate"] == pytest.approx(5.0) and interaction["ci_low"] > 0 and interaction["p_value"] < 1e-6
    assert residual["ci_low"] < 0 < residual["ci_high"] and plain["n_runs"] == 24
    sentence = degradation_sentence(trends, "at the quick budget")
    assert sentence.startswith("Plain half: degradation reproduced at the quick budget: plain nets' training error rises "
                               "with depth, +5.00")
    residual_half = residual_sentence(trends, "at the quick budget")
    assert residual_half.startswith("Residual half: residual nets no worse with depth at the quick budget: residual nets' "
                                    "training error shows no clear change")


def test_both_families_rising_alike_is_not_reproduced():
    trends = trend_table(constructed(plain_slope=5.0, residual_slope=5.0))
    sentence = degradation_sentence(trends, "at 2 epochs")
    assert sentence.startswith("Plain half: degradation not shown at 2 epochs: plain nets are not shown to degrade faster "
                               "than residual")
    assert residual_sentence(trends, "at 2 epochs").startswith("Residual half: residual nets degrade too at 2 epochs, "
                                                               "not shown to be slower than plain nets")
    assert "the plain nets' slope is not shown" not in sentence  # that part is shown


def test_flat_plain_nets_say_which_part_is_missing():
    sentence = degradation_sentence(trend_table(constructed(plain_slope=0.0, residual_slope=-5.0)), "at 1 epoch")
    assert "the plain nets' slope is not shown to be above 0" in sentence and "faster" not in sentence.split(":")[1]


def test_one_seed_per_cell_is_pooled_by_the_trend_model():
    table = constructed(plain_slope=4.0, residual_slope=-1.0, seeds=1)
    trends = trend_table(table)
    plain = term(trends, "train_error", PLAIN_SLOPE)
    assert plain["n_runs"] == 8 and np.isfinite(plain["ci_low"]) and plain["ci_low"] > 0
    assert degradation_sentence(trends, "here").startswith("Plain half: degradation reproduced here")
    difference = term(trends, "train_error", "residual minus plain at depth 56")
    assert difference["estimate"] == pytest.approx(-5.0 * 3.6, abs=0.3) and math.isnan(difference["ci_low"])


def test_a_diverged_run_is_left_out_of_the_fit_and_named():
    diverged = {"family": "plain", "depth": 56, "seed": 3, "status": "diverged", "cell": "plain 56",
                "final.train_error": 1.0, "final.test_error": 1.0}  # tempting numbers: must not count
    table = constructed(plain_slope=5.0, residual_slope=0.0, extra=[diverged])
    trends = trend_table(table)
    assert term(trends, "train_error", PLAIN_SLOPE)["n_runs"] == 24
    assert term(trends, "train_error", PLAIN_SLOPE)["estimate"] == pytest.approx(5.0)
    sentences = verdicts_for(trends, table, MANIFEST)
    assert sentences[0].startswith("Plain half: degradation reproduced at the quick budget (4 epochs on 10,000 training images)")
    assert sentences[-1] == "Not in the fits (no final error): 1 diverged (plain 56)."


def test_too_few_runs_cannot_be_judged():
    table = constructed(plain_slope=5.0, residual_slope=0.0, seeds=1)
    table = table[table["depth"].isin([20, 56])]  # 4 runs for 4 parameters
    assert "no residual degrees of freedom" in degradation_sentence(trend_table(table), "here")
    assert "cannot be judged" in degradation_sentence(trend_table(table[table["family"] == "plain"]), "here")


def test_budget_scan_fits_each_length_on_its_own():
    tables = []
    for epochs, gap in ((1, 1.0), (4, 12.0)):  # the plain-net degradation grows with the length
        part = constructed(plain_slope=gap / 3.6, residual_slope=0.0)
        tables.append(part[part["depth"].isin([20, 56])].assign(epochs=epochs))
    table = pd.concat(tables, ignore_index=True)
    scan = scan_table(table, "epochs")
    assert list(scan["length"]) == [1, 1, 4, 4]
    deep = scan[scan["effect"] == "plain 56 minus plain 20"].set_index("length")["estimate"]
    assert deep[1] == pytest.approx(1.0) and deep[4] == pytest.approx(12.0)
    versus = scan[scan["effect"] == "plain 56 minus residual 56"].set_index("length")
    assert versus.loc[4, "estimate"] == pytest.approx(12.0) and versus.loc[4, "ci_low"] > 0 and versus.loc[4, "n_runs"] == 6
    trends = trends_for(table, {"axes": ["residual", "depth", "epochs"], "budget": {"name": "quick"}})
    assert list(trends.columns) == ["epochs", *TREND_COLUMNS] and set(trends["epochs"]) == {1, 4}


def test_budgets_resolve_to_their_recipe_and_length():
    quick, why = resolve_grid_budget("auto", "cpu")
    assert quick.name == "quick" and "no GPU" in why
    assert resolve_grid_budget("auto", "cuda")[0].name == "paper"
    cells = expand(load_grid("degradation", GRIDS), {"data.source": "synthetic"}, quick)
    trains = {c.run.train for c in cells}
    assert len(trains) == 1  # every cell of a short budget gets exactly the same recipe
    train = trains.pop()
    assert (train.epochs, train.iterations, train.schedule, train.warmup_iterations) == (4, None, "onecycle", 0)
    assert (train.lr, train.momentum, train.weight_decay, train.batch_size) == (0.1, 0.9, 1e-4, 128)  # the paper's
    assert {c.run.data.subset for c in cells} == {10000} and not any(c.run.model.zero_init_residual for c in cells)
    standard = expand(load_grid("degradation", GRIDS), {}, GRID_BUDGETS["standard"])[0].run.train
    assert (standard.epochs, standard.schedule, standard.warmup_fraction, standard.milestones) == (40, "step", 0.02, (0.5, 0.75))
    paper = expand(load_grid("degradation", GRIDS), {}, GRID_BUDGETS["paper"])[0].run.train
    assert paper == recipe("paper")  # the published recipe and its 64k iterations, untouched
    shorter = expand(load_grid("degradation", GRIDS), {}, quick.with_length(epochs=2, subset=3000))[0].run
    assert (shorter.train.epochs, shorter.data.subset, shorter.train.schedule) == (2, 3000, "onecycle")
    assert STUDY_BUDGETS["quick"].recipe == "quick"
    with pytest.raises(ValueError, match="--budget 'fast' is invalid: expected one of auto, quick, standard, paper"):
        lookup("fast", GRID_BUDGETS, allow_auto=True)


SCAN_GRID = """
name = "scan"
report = "degradation"
seeds = 2
[fixed]
batch_size = 32
eval_batch_size = 200
checkpoint = false
[axes]
residual = [true, false]
depth = [8, 14]
epochs = [1, 2]
"""


@pytest.fixture(scope="module")
def scan_results(tmp_path_factory):
    """One 16-run grid (~18 s) read by every test here: they only read its tables and report."""
    tmp_path = tmp_path_factory.mktemp("scan")
    grid = tmp_path / "scan.toml"
    grid.write_text(SCAN_GRID)
    results = tmp_path / "results"
    threads = torch.get_num_threads()
    try:
        code = run_cli(driver("run").main, ["--grid", str(grid), "--data", "synthetic:200", "--val-size", "40",
                                            "--subset", "120", "--device", "cpu", "--threads", "1",
                                            "--results", str(results)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return results / "ablation" / "scan"


def test_a_grid_with_an_epochs_axis_gets_the_budget_scan(scan_results):
    scan = pd.read_csv(scan_results / "budget_scan.csv")
    assert list(scan["length"]) == [1, 1, 2, 2] and set(scan["n_runs"]) == {4}
    assert set(scan["effect"]) == {"plain 14 minus plain 8", "plain 14 minus residual 14"}
    trends = pd.read_csv(scan_results / "trends.csv")
    assert list(trends.columns) == ["epochs", *TREND_COLUMNS] and set(trends["epochs"]) == {1, 2}
    assert (scan_results / "budget_scan.png").stat().st_size > 10_000
    report = (scan_results / "report.md").read_text()
    assert "How long must a run train?" in report and "at 1 epoch of the quick budget" in report


def test_report_header_names_no_absolute_path(scan_results):
    report = (scan_results / "report.md").read_text()
    header = report.split("## ")[0]
    assert "- Grid: `scan` (grid file scan.toml, sha256 " in header and "- Precision: autocast bfloat16" in header or "fp32" in header
    assert "Code: git " in header and "Budget: quick (" in header and "one-cycle" in header
    assert "Report built by: git " in header
    assert not re.search(r"(^|[\s`(])/[A-Za-z]", header), "an absolute path in the header"
    assert str(scan_results.parents[1]) not in report and os.getcwd() not in report


def test_a_scan_length_of_one_is_singular_in_the_verdicts():
    from resnet_core.degradation import budget_where

    manifest = {"budget": {"name": "quick"}}
    assert budget_where(manifest, "epochs", 1) == "at 1 epoch of the quick budget"
    assert budget_where(manifest, "epochs", 2) == "at 2 epochs of the quick budget"
