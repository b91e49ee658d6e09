"""Report functions of studies on a study built with Optuna directly (fake values, no training)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import optuna
import pandas as pd
import pytest
from matplotlib.figure import Figure
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from resnet_core.reports import markdown_table
from resnet_core.config import RunConfig, apply_overrides
from resnet_core.identity import run_id
from resnet_core.recipes import recipe
from resnet_core.stats import difference_interval, mean_interval
from resnet_core.study.figures import (
    history_figure, isolation_figure, learning_curves_figure, parallel_figure, slice_figure, top_params,
)
from resnet_core.study.tables import (
    best_summary, compare_table, failed_table, pruning_savings, reproduce_command, run_labels, state_counts,
    study_markdown, top_trials, trials_table,
)
from resnet_core.study.urls import mask_url

DISTS = {"lr": FloatDistribution(0.01, 0.5, log=True), "batch_size": CategoricalDistribution([64, 128])}


def _trial(number: int, state: TrialState, value: float | None, steps: dict[int, float], lr: float, batch: int):
    return create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                        params={"lr": lr, "batch_size": batch}, distributions=DISTS,
                        user_attrs={"run_id": f"run{number}"}, intermediate_values=steps)


@pytest.fixture()
def study() -> optuna.Study:
    """6 COMPLETE (val error 30 + i), 2 PRUNED after epoch 1 of 4, 1 FAIL with a reason."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(study_name="fake", direction="minimize")
    for i in range(6):
        s.add_trial(_trial(i, TrialState.COMPLETE, 30.0 + i, {1: 50.0, 2: 40.0, 3: 35.0, 4: 30.0 + i}, 0.01 * (i + 1), 64 + 64 * (i % 2)))
    for i in (6, 7):
        s.add_trial(_trial(i, TrialState.PRUNED, None, {1: 80.0}, 0.4, 64))
    s.add_trial(create_trial(state=TrialState.FAIL, params={"lr": 0.45, "batch_size": 128}, distributions=DISTS,
                             user_attrs={"fail_reason": "run diverged: loss nan"}))
    return s


@pytest.fixture()
def runs() -> pd.DataFrame:
    return pd.DataFrame({"run_id": [f"run{i}" for i in range(8)], "status": ["completed"] * 6 + ["stopped"] * 2,
                         "final.val_error": [30.0 + i for i in range(6)] + [80.0, 80.0],
                         "final.test_error": [31.0 + i for i in range(6)] + [81.0, 81.0], "epochs_done": [4] * 6 + [1, 1]})


def test_state_counts_and_pruning_savings(study):
    counts = state_counts(study)
    assert (counts["COMPLETE"], counts["PRUNED"], counts["FAIL"], counts["RUNNING"]) == (6, 2, 1, 0)
    savings = pruning_savings(study, budget_epochs=4)
    assert savings["pruned"] == 2
    assert savings["epochs_not_trained"] == 6  # two trials stopped after 1 of 4 epochs
    assert savings["epochs_full_budget"] == 32  # 8 finished trials x 4 epochs
    assert savings["fraction_saved"] == pytest.approx(6 / 32)


def test_trials_table_joins_run_records(study, runs):
    table = trials_table(study, runs)
    assert len(table) == 9 and list(table["number"]) == list(range(9))
    row = table.loc[table["number"] == 2].iloc[0]
    assert row["final_test_error"] == 33.0 and row["run_status"] == "completed" and row["value"] == 32.0
    assert table.loc[table["number"] == 8, "final_test_error"].isna().all()  # the failed trial has no run


def test_best_summary_and_top_trials(study):
    best = best_summary(study, "python -m resnet_core.train")
    assert best["trial"] == 0 and best["value"] == 30.0 and best["run_id"] == "run0"
    assert best["params"] == {"lr": 0.01, "batch_size": 64}
    assert [t.number for t in top_trials(study, 3)] == [0, 1, 2]
    empty = optuna.create_study()
    assert best_summary(empty)["best"] is None


def test_run_labels_merge_trials_sharing_a_run(study):
    twin = create_trial(state=TrialState.COMPLETE, value=30.0, params={"lr": 0.01, "batch_size": 64},
                        distributions=DISTS, user_attrs={"run_id": "run0"})
    labels = run_labels([*top_trials(study, 2), twin])
    assert set(labels) == {"run0", "run1"} and labels["run1"] == "trial 1 (31.00%)"
    assert labels["run0"] == f"trials 0, {twin.number} (30.00%)"


def test_failed_table_lists_reasons(study):
    failed = failed_table(study)
    assert list(failed["number"]) == [8] and failed.iloc[0]["fail_reason"] == "run diverged: loss nan"


@pytest.mark.parametrize("url, masked", [
    ("postgresql://alice:s3cret@db.example:5432/optuna", "postgresql://alice:***@db.example:5432/optuna"),
    ("mysql+pymysql://bob:p@ss:w@host/db", "mysql+pymysql://bob:***@host/db"),
    ("sqlite:///results/studies/x.db", "sqlite:///results/studies/x.db"),
    ("postgresql://alice@host/db", "postgresql://alice@host/db"),
    ("results/studies/x.log", "results/studies/x.log"),
])
def test_mask_url_hides_passwords(url, masked):
    assert mask_url(url) == masked
    assert "s3cret" not in mask_url(url) and "p@ss" not in mask_url(url)


def test_reproduce_command_rebuilds_the_same_run():
    from resnet_core.models import resolve_model
    from resnet_core.commands.train import build_parser, resolve_run_config

    base = RunConfig(model=resolve_model("resnet20"), train=recipe("quick"))
    run = apply_overrides(base, {"depth": 8, "residual": False, "lr": 0.0371, "batch_size": 64, "epochs": 2,
                                 "source": "synthetic:300", "subset": 200, "val_size": 100, "seed": 3})
    command = reproduce_command(run, "resnet20", "quick")
    assert "--set residual=false" in command and "--set depth=8" in command and "--epochs 2" in command
    args = build_parser().parse_args(command.split()[3:])
    assert run_id(resolve_run_config(args)) == run_id(run)


def test_compare_table_matches_stats():
    final = pd.DataFrame({"value": [True] * 3 + [False] * 3, "test_error": [8.0, 9.0, 10.0, 12.0, 13.0, 14.5],
                          "val_error": [9.0] * 3 + [13.0] * 3})
    table = compare_table(final, "residual", order=[True, False])
    expected = mean_interval([12.0, 13.0, 14.5])
    row = table.iloc[1]
    assert row["residual"] is False or row["residual"] == False  # noqa: E712
    assert row["seeds"] == 3 and row["test_error_mean"] == pytest.approx(expected["mean"])
    assert row["test_error_ci_low"] == pytest.approx(expected["ci_low"])
    diff = difference_interval([8.0, 9.0, 10.0], [12.0, 13.0, 14.5])
    assert row["diff_vs_true"] == pytest.approx(diff["diff"]) and row["diff_ci_high"] == pytest.approx(diff["ci_high"])
    assert table.iloc[0]["diff_vs_true"] == 0.0


def test_markdown_report_states_counts_best_and_savings(study, runs):
    context = {"objective": "validation error", "budget": "quick", "budget_epochs": 4, "command": "python -m x",
               "storage": mask_url("postgresql://u:pw@h/db")}
    text = study_markdown(study, context, runs, figures=["optimization_history.png"])
    assert "COMPLETE 6, PRUNED 2, FAIL 1" in text
    assert "2 trials pruned, 6 of 32 epochs not trained" in text
    assert "Trial 0: validation error 30.00%" in text and "Test error of that run: 31.00%" in text
    assert "run diverged: loss nan" in text and "pw@" not in text and "u:***@h" in text
    assert "![optimization_history.png](optimization_history.png)" in text



def test_the_report_names_batch_size_as_coupled_to_steps_and_shows_the_best_batch_sizes(study, runs):
    context = {"budget_epochs": 4, "tuned": ["lr", "batch_size"], "epochs": 4, "iterations": None, "train_size": 1000}
    text = study_markdown(study, context, runs)
    assert "## Coupled parameters" in text and "fixed budget of 4 epochs" in text and "number of optimizer steps" in text
    section = text.split("## Coupled parameters")[1]
    # best trials 0-4 alternate batch 64 (4 x 1000 // 64 = 60 steps) and 128 (4 x 7 = 28 steps)
    assert "| 0 |" in section and "64 |" in section and "60" in section and "128 |" in section and "28" in section
    assert "Coupled parameters" not in study_markdown(study, {**context, "tuned": ["lr"]}, runs)
    iterations = study_markdown(study, {**context, "epochs": None, "iterations": 500}, runs)
    assert "fixed budget of 500 iterations" in iterations and "number of epochs" in iterations

def test_markdown_table_formats_floats():
    text = markdown_table(pd.DataFrame({"a": [1.23456, math.nan], "b": ["x|y", "z"]}), floatfmt=".2f")
    assert text.splitlines()[0] == "| a | b |" and "| 1.23 | x\\|y |" in text and "| nan | z |" in text


def test_figures_are_figures(study):
    for make in (history_figure, lambda s: parallel_figure(s, ["lr", "batch_size"]),
                 lambda s: slice_figure(s, ["lr"])):
        figure = make(study)
        assert isinstance(figure, Figure) and figure.axes
    assert set(top_params(study, 2)) == {"lr", "batch_size"}


def test_figures_refuse_without_complete_trials():
    with pytest.raises(ValueError, match="COMPLETE"):
        history_figure(optuna.create_study())


def test_learning_curves_and_isolation_figures():
    histories = pd.DataFrame({"run_id": ["a", "a", "b", "b", "c"], "epoch": [1, 2, 1, 2, 1],
                              "val_error": [50, 40, 60, 45, 70], "train_error": [55, 35, 65, 40, 75]})
    figure = learning_curves_figure(histories, {"a": "trial 0", "b": "trial 1"})
    labels = {t.get_text() for t in figure.axes[0].get_legend().get_texts()}
    assert labels == {"trial 0", "trial 1"}  # run c is not a top trial
    trials = pd.DataFrame({"compare_value": [True, True, False, False], "state": ["COMPLETE"] * 3 + ["PRUNED"],
                           "value": [10.0, 12.0, 15.0, 80.0]})
    final = pd.DataFrame({"value": [True, True, False, False], "test_error": [9.0, 10.0, 14.0, 15.0]})
    iso = isolation_figure(trials, "residual", final)
    assert len(iso.axes) == 2
    with pytest.raises(ValueError):
        learning_curves_figure(histories, {"zzz": "trial 9"})


def test_a_final_stage_of_an_earlier_best_trial_is_named_outdated_unless_its_params_are_the_bests(study):
    from resnet_core.study.report import outdated_final

    assert outdated_final(study) is None  # no final stage yet
    study.set_user_attr("final_trial", 0)
    assert outdated_final(study) is None  # trial 0 is the best
    study.set_user_attr("final_trial", 3)
    assert outdated_final(study) == (3, 0)
    study.add_trial(_trial(9, TrialState.COMPLETE, 20.0, {4: 20.0}, 0.04, 128))  # trial 3's params, a better value
    study.set_user_attr("final_trial", 3)
    assert outdated_final(study) is None  # the same config: the final stage trained the best's
