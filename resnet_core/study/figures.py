"""Figures of Optuna studies: Study or DataFrame in, a matplotlib Figure out (no file I/O, no pyplot).

Every figure plots the VALIDATION error the trials were chosen on, except the final-seed panel of a
comparison, which plots the TEST error of the re-trained best configs (docs/DESIGN.md, rules of evidence).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState

from resnet_core.stats import mean_interval
from resnet_core.study.importance import RungImportances
from resnet_core.study.tables import format_value


def _figure_of(plot: Callable[..., Any], *args: Any, **kwargs: Any) -> Figure:
    """Call an ``optuna.visualization.matplotlib`` function (experimental, returns Axes or an
    array of them) quietly and give the Figure its Axes live in.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = plot(*args, **kwargs)
    return np.asarray(axes, dtype=object).flat[0].figure


def _require_complete(study: optuna.Study, n: int, what: str) -> None:
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if done < n:
        raise ValueError(f"{what} needs at least {n} COMPLETE trials (the study has {done})")


def history_figure(study: optuna.Study) -> Figure:
    """Validation error of each trial and the best so far (Optuna's optimization history)."""
    _require_complete(study, 1, "the optimization history")
    figure = _figure_of(optuna.visualization.matplotlib.plot_optimization_history, study, target_name="val error (%)")
    figure.set_size_inches(8, 5)
    return figure


def importance_figure(importances: RungImportances) -> Figure:
    """Parameter importances at a rung (the report's table): mean over forest seeds, sd as error bars."""
    if importances.epoch is None:
        raise ValueError(f"not computed: {importances.reason}")
    table = importances.table.iloc[::-1]  # the most important on top
    figure = Figure(figsize=(8, 1.5 + 0.45 * len(table)))
    ax = figure.add_subplot()
    ax.barh(table["param"], table["importance_mean"], xerr=table["importance_sd"], color="C0", capsize=4)
    ax.set(xlabel=f"fANOVA importance (mean and sd over {importances.seeds} seeds)", xlim=(0, None),
           title=f"Importances of the validation error {importances.label()}")
    return figure


def top_params(study: optuna.Study, n: int = 4) -> list[str]:
    """The ``n`` most important parameters (all varied parameters when importances fail)."""
    try:
        importances = optuna.importance.get_param_importances(study)
        return list(importances)[:n]
    except (RuntimeError, ValueError, ZeroDivisionError):
        names = {k for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) for k in t.params}
        return sorted(names)[:n]


def parallel_figure(study: optuna.Study, params: list[str] | None = None) -> Figure:
    """Parallel coordinates of the COMPLETE trials over ``params`` (default: all)."""
    _require_complete(study, 2, "parallel coordinates")
    figure = _figure_of(optuna.visualization.matplotlib.plot_parallel_coordinate, study, params=params,
                        target_name="val error (%)")
    figure.set_size_inches(10, 5)
    return figure


def slice_figure(study: optuna.Study, params: list[str]) -> Figure:
    """Validation error against each of ``params`` (slice plots)."""
    _require_complete(study, 1, "slice plots")
    figure = _figure_of(optuna.visualization.matplotlib.plot_slice, study, params=params, target_name="val error (%)")
    figure.set_size_inches(4 * max(1, len(params)), 4)
    return figure


def learning_curves_figure(histories: pd.DataFrame, labels: Mapping[str, str]) -> Figure:
    """Validation (solid) and training (dashed) error per epoch of the runs in ``labels``.

    ``histories``: tidy per-epoch table (``store.load_histories``); ``labels``: run_id -> legend text.
    """
    import seaborn as sns

    curves = histories.loc[histories["run_id"].isin(list(labels))].copy()
    if curves.empty:
        raise ValueError("learning curves need the run records of the top trials (none found)")
    curves["trial"] = curves["run_id"].map(labels)
    figure = Figure(figsize=(8, 5))
    ax = figure.add_subplot()
    sns.lineplot(data=curves, x="epoch", y="val_error", hue="trial", marker="o", ax=ax)
    sns.lineplot(data=curves, x="epoch", y="train_error", hue="trial", linestyle="--", ax=ax, legend=False)
    ax.set(xlabel="epoch", ylabel="error (%)", title="Top trials: validation (solid) and training (dashed) error")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure


def isolation_figure(trials: pd.DataFrame, field: str, final: pd.DataFrame | None = None) -> Figure:
    """Left: validation error of every COMPLETE trial per value of ``field``, the best marked
    (each value tuned with the same budget). Right: final-seed TEST error, mean and 95% interval.

    ``trials``: columns ``compare_value``, ``state``, ``value``; ``final``: ``value``, ``test_error``.
    """
    import seaborn as sns

    done = trials.loc[trials["state"] == "COMPLETE"].copy()
    if done.empty:
        raise ValueError("the isolation plot needs COMPLETE trials")
    done["compare_value"] = done["compare_value"].astype(str)
    panels = 2 if final is not None and not final.empty else 1
    figure = Figure(figsize=(6 * panels, 5))
    ax = figure.add_subplot(1, panels, 1)
    sns.stripplot(data=done, x="compare_value", y="value", ax=ax, alpha=0.5, color="0.4")
    best = done.groupby("compare_value", sort=False)["value"].min().reset_index()
    sns.pointplot(data=best, x="compare_value", y="value", ax=ax, color="C3", linestyles="none", markers="D")
    ax.set(xlabel=field, ylabel="validation error (%)", title="Tuned trials (diamond: best per value)")
    if panels == 2:
        _final_panel(figure.add_subplot(1, 2, 2), final, field)
    figure.tight_layout()
    return figure


def _final_panel(ax, final: pd.DataFrame, field: str) -> None:
    """Per value: each seed's test error (dots) and the mean with its 95% t-interval (bars)."""
    values = list(dict.fromkeys(final["value"]))
    for x, value in enumerate(values):
        errors = final.loc[final["value"] == value, "test_error"].to_numpy(dtype=float)
        summary = mean_interval(errors)
        ax.scatter(np.full(len(errors), x), errors, color="0.4", alpha=0.6, s=15)
        half = summary["ci_high"] - summary["mean"] if summary["n"] > 1 else 0.0
        ax.errorbar([x], [summary["mean"]], yerr=[[half], [half]], fmt="D", color="C0", capsize=6)
    ax.set_xticks(range(len(values)), [format_value(v) for v in values])
    ax.set(xlabel=field, ylabel="test error (%)", title="Best config per value over seeds (mean, 95% CI)")
