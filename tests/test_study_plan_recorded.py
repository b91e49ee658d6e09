"""The study's plan is the same before and after the experiment layer moved it out of the command:
the dry run of a tiny study (console lines but the measured time, the spec, its base config and
space) against the record made by the code before the move (tests/data/study_plan.json), field by field."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

from resnet_core.cli import run_cli
from resnet_core.commands import study as run_driver
from resnet_core.identity import identity_dict
from resnet_core.study.plan import plan
from study_helpers import tiny_request
from test_study import _quiet_env, space, tiny_args  # noqa: F401  (fixtures)

RECORDED = Path(__file__).parent / "data" / "study_plan.json"


def recorded_plan(tmp_path: Path, space: Path) -> dict:
    """What the record holds, from the code under test."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_cli(run_driver.main, tiny_args(tmp_path, space, "--trials", "12", "--pruner", "sha", "--dry-run")) == 0
    lines = [line.replace(str(tmp_path), "<tmp>") for line in out.getvalue().splitlines() if not line.startswith("time ")]
    spec = plan(tiny_request(tmp_path, space, pruner="sha", trials=12))[0].spec
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)
              if f.name not in ("base", "space", "storage", "results")}
    return json.loads(json.dumps({"lines": lines, "spec": fields, "base": identity_dict(spec.base),
                                  "space": spec.space.to_dict()}, default=str))


def test_the_study_plan_is_the_recorded_one(tmp_path, space):
    now, before = recorded_plan(tmp_path, space), json.loads(RECORDED.read_text())
    for section in ("spec", "base", "space"):
        for key in before[section]:
            assert now[section].get(key) == before[section][key], f"{section}.{key}"
    assert now["lines"] == before["lines"]


def test_the_record_would_see_a_changed_plan(tmp_path, space):
    before = json.loads(RECORDED.read_text())
    before["lines"][-2] += " (changed)"
    assert recorded_plan(tmp_path, space)["lines"] != before["lines"]
