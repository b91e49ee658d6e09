"""The ranking at every rung, importances at a rung and diverged trials, on studies built with Optuna
directly (in-memory storage, constructed values, no training)."""

from __future__ import annotations

import math
import random

import matplotlib

matplotlib.use("Agg")

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from resnet_core.study.figures import importance_figure
from resnet_core.study.importance import deepest_rung, rung_importances, rung_study
from resnet_core.study.plan import plan
from resnet_core.study.report import write_study_report
from resnet_core.study.rungs import diverged_by_region, rung_summary, rung_values
from resnet_core.study.tables import study_markdown
from resnet_core.study.importance import importance_lines

DISTS = {"lr": FloatDistribution(0.01, 1.0, log=True), "momentum": FloatDistribution(0.5, 0.9),
         "batch_size": CategoricalDistribution([64, 128])}


@pytest.fixture(autouse=True)
def _quiet():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trial(state: TrialState, steps: dict[int, float], lr: float = 0.1, momentum: float = 0.7, batch: int = 64,
           **attrs):
    value = steps[max(steps)] if state == TrialState.COMPLETE else None
    return create_trial(state=state, value=value, params={"lr": lr, "momentum": momentum, "batch_size": batch},
                        distributions=DISTS, intermediate_values=steps, user_attrs=attrs)


def _study(*trials) -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    study.add_trials(list(trials))
    return study


def _diverged(epoch: int, steps: dict[int, float] | None = None, **params):
    """A trial as the objective leaves a diverged one: PRUNED, chance error at the epoch it diverged in."""
    return _trial(TrialState.PRUNED, {**(steps or {}), epoch: 90.0}, diverged=True, diverged_epoch=epoch, **params)


# ---------------------------------------------------------------------------- ranking at every rung


def test_the_rung_table_counts_and_ranks_every_trial_at_every_epoch_it_measured():
    study = _study(
        _trial(TrialState.COMPLETE, {1: 50.0, 4: 40.0, 12: 30.0}),
        _trial(TrialState.COMPLETE, {1: 45.0, 4: 42.0, 12: 33.0}),
        _trial(TrialState.PRUNED, {1: 60.0}),
        _trial(TrialState.PRUNED, {1: 44.0, 4: 41.0}),
        _trial(TrialState.RUNNING, {1: 48.0}),
        _diverged(3, {1: 70.0}),  # its chance error at epoch 3 is a stand-in, not a measurement
    )
    values = rung_values(study)
    assert sorted(values["epoch"].unique()) == [1, 4, 12]
    assert values.groupby("epoch").size().to_dict() == {1: 6, 4: 3, 12: 2}
    at_1 = values.loc[values["epoch"] == 1]
    assert list(at_1["trial"]) == [3, 1, 4, 0, 2, 5] and list(at_1["rank"]) == [1, 2, 3, 4, 5, 6]
    assert at_1.set_index("trial").loc[4, "state"] == "RUNNING"
    summary = rung_summary(values, top=2).set_index("epoch")
    assert summary.loc[1, "trials"] == 6 and summary.loc[1, "median"] == pytest.approx(49.0)
    assert summary.loc[1, "best 2 (trial: val error %)"] == "3: 44.00, 1: 45.00"
    assert summary.loc[4, "best 2 (trial: val error %)"] == "0: 40.00, 3: 41.00"
    assert summary.loc[12, "best 2 (trial: val error %)"] == "0: 30.00, 1: 33.00"
    text = study_markdown(study, {"budget_epochs": 12}, None)
    section = text.split("## Ranking at every rung")[1].split("##")[0]
    assert "| 1 | 6 | 49.00 | 3: 44.00, 1: 45.00, 4: 48.00, 0: 50.00, 2: 60.00 |" in section
    assert [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| ") and "trial" not in line] \
        == ["| 1", "| 4", "| 12"]  # no row for epoch 3, where the diverged trial only stood in


def test_an_empty_study_says_no_trial_measured_validation():
    empty = optuna.create_study()
    assert rung_values(empty).empty
    assert "No trial has measured validation yet." in study_markdown(empty, {}, None)


# ---------------------------------------------------------------------------- importances at a rung


def _planted_study() -> optuna.Study:
    """lr sets the validation error (lowest at 0.1); momentum and batch size do nothing. 30 trials
    measure epoch 1, 24 of them epoch 4, and 7 of those epoch 12 (fewer than 8: not used)."""
    draw = random.Random(1)
    trials = []
    for i in range(30):
        lr, momentum, batch = 10 ** draw.uniform(-2, 0), draw.uniform(0.5, 0.9), draw.choice([64, 128])
        error = 10 + 20 * abs(math.log10(lr) + 1)
        steps = {1: error + 20, **({4: error + 5} if i < 24 else {}), **({12: error} if i < 7 else {})}
        trials.append(_trial(TrialState.COMPLETE if i < 7 else TrialState.PRUNED, steps, lr, momentum, batch))
    return _study(*trials)


def test_importances_at_the_deepest_rung_with_8_trials_recover_the_planted_parameter():
    importances = rung_importances(_planted_study(), seeds=3)
    assert (importances.epoch, importances.trials) == (4, 24)  # epoch 12 has 7 trials: skipped
    table = importances.table.set_index("param")
    assert list(importances.table["param"])[0] == "lr" and table.loc["lr", "importance_mean"] > 0.8
    assert table.loc["momentum", "importance_mean"] < 0.1 and table.loc["batch_size", "importance_mean"] < 0.1
    assert {"seed_0", "seed_1", "seed_2", "importance_sd"} <= set(importances.table.columns)
    for seed in ("seed_0", "seed_1", "seed_2"):
        assert importances.table[seed].sum() == pytest.approx(1.0)
    summary = importances.summary()
    assert summary["epoch"] == 4 and summary["trials"] == 24 and summary["seeds"] == 3
    assert summary["params"]["lr"]["mean"] == pytest.approx(table.loc["lr", "importance_mean"])
    text = "\n".join(importance_lines(importances))
    assert "at epoch 4, 24 trials" in text and "| lr |" in text
    figure = importance_figure(importances)
    assert figure.axes and "at epoch 4, 24 trials" in figure.axes[0].get_title()


def test_with_fewer_than_8_trials_at_every_rung_importances_are_not_computed_and_the_report_says_so():
    study = _study(*[_trial(TrialState.COMPLETE, {1: 50.0 - i, 2: 40.0 - i}, lr=0.01 * (i + 1)) for i in range(7)])
    importances = rung_importances(study)
    assert importances.epoch is None and importances.table.empty
    assert importances.reason == "no epoch was reached by at least 8 trials (most: 7 trials at epoch 2)"
    assert importances.summary() == {"epoch": None, "reason": importances.reason}
    text = study_markdown(study, {"budget_epochs": 2}, None)
    assert "## Parameter importances\n\nNot computed: no epoch was reached by at least 8 trials" in text
    with pytest.raises(ValueError, match="at least 8 trials"):
        importance_figure(importances)


def test_the_deepest_rung_is_the_deepest_epoch_8_trials_reached():
    study = _planted_study()
    assert deepest_rung(study) == (4, 24)
    assert deepest_rung(study, 7) == (12, 7)
    assert deepest_rung(study, 25) == (1, 30)
    assert deepest_rung(study, 31) is None
    rung = rung_study(study, 4)
    assert len(rung.trials) == 24 and all(t.state == TrialState.COMPLETE for t in rung.trials)


# ---------------------------------------------------------------------------- diverged trials


def test_diverged_trials_by_region_count_trials_and_divergences_per_bin():
    study = _study(
        _trial(TrialState.COMPLETE, {1: 30.0}, lr=0.02, momentum=0.55, batch=64),
        _trial(TrialState.COMPLETE, {1: 31.0}, lr=0.1, momentum=0.75, batch=128),
        _trial(TrialState.PRUNED, {1: 60.0}, lr=0.3, momentum=0.85, batch=64),
        _diverged(1, lr=0.5, momentum=0.85, batch=64),
        _diverged(2, {1: 70.0}, lr=0.9, momentum=0.6, batch=128),
        create_trial(state=TrialState.FAIL, params={"lr": 0.25, "momentum": 0.88, "batch_size": 64},
                     distributions=DISTS, user_attrs={"run_status": "diverged"}),  # recorded before: a FAIL
        _trial(TrialState.RUNNING, {1: 50.0}, lr=0.6),  # still running: not counted
    )
    table = diverged_by_region(study)
    rows = {(r.param, r.region): (r.trials, r.diverged) for r in table.itertuples()}
    # lr: 3 equal bins of log10 over [0.01, 1]: edges 0.01, 0.0464, 0.215, 1
    assert rows[("lr", "0.01 to 0.0464")] == (1, 0)
    assert rows[("lr", "0.0464 to 0.215")] == (1, 0)
    assert rows[("lr", "0.215 to 1")] == (4, 3)
    # momentum: 3 equal linear bins over [0.5, 0.9]
    assert rows[("momentum", "0.5 to 0.633")] == (2, 1)
    assert rows[("momentum", "0.633 to 0.767")] == (1, 0)
    assert rows[("momentum", "0.767 to 0.9")] == (3, 2)
    assert rows[("batch_size", "64")] == (4, 2) and rows[("batch_size", "128")] == (2, 1)
    assert list(table["param"]).count("lr") == 3 and len(table) == 8
    text = study_markdown(study, {"budget_epochs": 2}, None)
    assert "## Diverged trials by region" in text
    assert "Counts by state: RUNNING 1, COMPLETE 2, PRUNED 3 (2 diverged), FAIL 1 (1 diverged)" in text
    assert "Pruner: 1 trial pruned, 1 of 10 epochs not trained" in text  # the diverged stopped of themselves


def test_no_divergence_no_region_table():
    study = _study(_trial(TrialState.COMPLETE, {1: 30.0}), _trial(TrialState.PRUNED, {1: 60.0}))
    assert diverged_by_region(study).empty
    assert "Diverged trials" not in study_markdown(study, {"budget_epochs": 2}, None)


def test_a_diverged_trial_is_never_the_best_trial():
    study = _study(_diverged(1, lr=0.9), _trial(TrialState.COMPLETE, {1: 60.0, 2: 55.0}))
    assert study.best_trial.number == 1


# ---------------------------------------------------------------------------- report files


def test_the_report_writes_rungs_importances_and_their_figure(tmp_path):
    import json

    from study_helpers import tiny_request

    space = tmp_path / "space.toml"
    space.write_text('[params.lr]\ntype = "float"\nlow = 0.01\nhigh = 1.0\nlog = true\n'
                     '[params.momentum]\ntype = "float"\nlow = 0.5\nhigh = 0.9\n')
    setup, _ = plan(tiny_request(tmp_path, space))
    dists = {name: DISTS[name] for name in ("lr", "momentum")}
    study = optuna.create_study(direction="minimize")
    for trial in _planted_study().trials:
        params = {name: trial.params[name] for name in dists}
        study.add_trial(create_trial(state=trial.state, value=trial.value, params=params, distributions=dists,
                                     intermediate_values=trial.intermediate_values))
    out = write_study_report(study, setup.spec, tmp_path / "report")
    rungs = (out / "rungs.csv").read_text().splitlines()
    assert rungs[0] == "epoch,trial,state,val_error,rank" and len(rungs) == 1 + 30 + 24 + 7
    header = (out / "importances.csv").read_text().splitlines()[0]
    assert header == "param,importance_mean,importance_sd,seed_0,seed_1,seed_2,seed_3,seed_4"
    best = json.loads((out / "best.json").read_text())
    assert best["importances"]["epoch"] == 4 and best["importances"]["trials"] == 24
    assert set(best["importances"]["params"]) == {"lr", "momentum"}
    report = (out / "report.md").read_text()
    assert "## Ranking at every rung" in report and "at epoch 4, 24 trials" in report
    assert (out / "param_importances.png").exists() and "param_importances: not drawn" not in report
