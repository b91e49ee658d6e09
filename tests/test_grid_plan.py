"""A grid's plan is pinned: the dry run of a built-in degradation grid and of a generic grid, on synthetic
data, recorded as JSON (tests/data/grid_plans.json) and compared field by field -- the runs to train
with their run ids, what is done, the budget (with its subset fitted to small data) and what the time
estimate is computed from. A refactoring of the grid layer must plan the same grids the same way.

Re-record (only when a plan is meant to change, saying why in the commit): RECORD_GRID_PLANS=1 pytest this file.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path

import pytest

from resnet_core.cli import run_cli
from resnet_core.commands import grid as grid_command
from resnet_core.config import to_dict
from resnet_core.grid import estimate as grid_estimate
from resnet_core.grid import plan as grid_plan
from resnet_core.identity import RUN_ID_SCHEMA, run_id
from resnet_core.store import RunRecord, write_record

FIXTURE = Path(__file__).resolve().parent / "data" / "grid_plans.json"
RATE = 1000.0  # images/s every model "measures": the estimate depends on the plan, not on this machine
SMALL = ["--data", "synthetic:300", "--val-size", "50", "--device", "cpu", "--workers", "1"]
CASES = {
    # a degradation grid made tiny; one of its runs finished already
    "degradation": ["--grid", "degradation", "--axis", "depth=8,14", "--seeds", "2", "--subset", "100",
                    "--epochs", "1", *SMALL],
    # a generic grid on the quick budget, whose 10,000-image subset is a ceiling these data are under
    "shortcuts": ["--grid", "shortcuts", "--axis", "depth=8", "--seeds", "1", "--budget", "quick", *SMALL],
}


def finish(results: Path, run) -> None:
    """A completed record of ``run`` under the current run-id schema."""
    write_record(results, RunRecord(run_id=run_id(run), status="completed", config=to_dict(run),
                                    final={"test_error": 50.0}, provenance={"run_id_schema": RUN_ID_SCHEMA}))


def recorded_plan(argv: list[str]) -> dict:
    """The plan of ``resnet-grid argv --dry-run``, as plain values."""
    plan = grid_plan.plan_grid(dataclasses.replace(grid_command.request_of(grid_command.parse_args(argv)), dry_run=True))
    dry = grid_estimate.dry_run(plan)
    budget = plan.budget
    return {
        "budget": {"name": budget.name, "why": plan.why, "epochs": budget.epochs, "iterations": budget.iterations,
                   "subset": budget.subset},
        "runs": [{"run_id": cell.run_id, "cell": cell.label, "seed": cell.seed} for cell in plan.iter_cells()],
        "cells": {label: {"runs": n, "done": done} for label, (n, done, _) in dry.cells.items()},
        "estimate": {"runs": dry.runs, "done": dry.done, "seconds": round(dry.seconds, 6),
                     "sizes": sorted(list(sizes) for sizes in dry.sizes.values())},
    }


@pytest.fixture
def fixed_rate(monkeypatch):
    monkeypatch.setattr(grid_estimate, "measure_step_rate", lambda run, steps: RATE)


def plan_of(name: str, tmp_path: Path, capsys) -> dict:
    results = tmp_path / name
    argv = [*CASES[name], "--results", str(results)]
    if name == "degradation":
        plan = grid_plan.plan_grid(dataclasses.replace(grid_command.request_of(grid_command.parse_args(argv)), dry_run=True))
        finish(results, next(plan.iter_cells()).run)
    assert run_cli(grid_command.main, [*argv, "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    return {**recorded_plan(argv), "printed": printed}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_grid_plans_as_recorded(name, tmp_path, capsys, fixed_rate, one_thread):
    plan = json.loads(json.dumps(plan_of(name, tmp_path, capsys)))
    recorded = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}
    if os.environ.get("RECORD_GRID_PLANS"):
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps({**recorded, name: plan}, indent=1, sort_keys=True) + "\n")
        recorded[name] = plan
    expected = recorded[name]
    assert sorted(plan) == sorted(expected)
    for field in expected:  # one field at a time: a failure names what changed
        assert plan[field] == expected[field], field


def test_a_budget_subset_is_one_ceiling_for_grids_and_studies():
    from resnet_core import splits

    study_plan = importlib.import_module("resnet_core.study.plan")  # resnet_core.study.plan is also a function

    assert splits.capped_subset(10000, 250) is None and splits.capped_subset(250, 250) == 250
    assert grid_plan.capped_subset is splits.capped_subset is study_plan.capped_subset  # one rule, two flows
