"""What a study measured at each epoch: the ranking of its trials at every rung (each epoch at
which trials measured validation), and where in the search space its trials diverged.

Study in, DataFrame or text out (no file I/O). Most trials of a pruned study stop at a short rung,
so the ranking the study rests on is there, not only among the few trials that reached the end.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState

from resnet_core.reports import markdown_table
from resnet_core.study.common import is_diverged

RUNG_COLUMNS = ["epoch", "trial", "state", "val_error", "rank"]
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # the trials a region counts


def measured_values(trial: optuna.trial.FrozenTrial) -> dict[int, float]:
    """The validation errors a trial measured, by epoch: its intermediate values less the chance
    error a diverged trial reports at the epoch it diverged in (a stand-in, not a measurement)."""
    stand_in = trial.user_attrs.get("diverged_epoch") if trial.user_attrs.get("diverged") else None
    return {int(step): float(value) for step, value in trial.intermediate_values.items()
            if step != stand_in and value is not None and math.isfinite(value)}


def rung_values(study: optuna.Study) -> pd.DataFrame:
    """One row per (epoch, trial) measured: epoch, trial, state, val_error and rank at that epoch
    (1 = lowest error; ties share the lower rank). Pruned, complete, running and failed trials all
    count at the epochs they reached."""
    rows = [{"epoch": epoch, "trial": t.number, "state": t.state.name, "val_error": value}
            for t in study.get_trials(deepcopy=False) for epoch, value in measured_values(t).items()]
    table = pd.DataFrame(rows, columns=RUNG_COLUMNS[:-1])
    if table.empty:
        return pd.DataFrame(columns=RUNG_COLUMNS)
    table = table.sort_values(["epoch", "val_error", "trial"], ignore_index=True)
    table["rank"] = table.groupby("epoch")["val_error"].rank(method="min").astype(int)
    return table


def rung_summary(values: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """Per epoch of ``rung_values``: trials that reached it, the median error and the best ``top``."""
    rows = []
    for epoch, group in values.groupby("epoch", sort=True):
        best = group.nsmallest(top, "val_error", keep="first")
        rows.append({"epoch": int(epoch), "trials": len(group), "median": float(group["val_error"].median()),
                     f"best {len(best)} (trial: val error %)": ", ".join(
                         f"{int(t)}: {v:.2f}" for t, v in zip(best["trial"], best["val_error"]))})
    return pd.DataFrame(rows)


def rung_lines(values: pd.DataFrame, top: int = 5) -> list[str]:
    """The report's section on the ranking at every rung."""
    lines = ["## Ranking at every rung (validation error, %)", ""]
    if values.empty:
        return lines + ["No trial has measured validation yet.", ""]
    return lines + [
        f"Each epoch at which trials measured validation: how many reached it (pruned, complete and running "
        f"trials alike), their median and the best {top}. A diverged trial counts at the epochs it measured "
        "before it diverged (rungs.csv: every trial's value and rank).", "",
        markdown_table(rung_summary(values, top), floatfmt=".2f"), ""]


def state_text(study: optuna.Study) -> str:
    """``COMPLETE 3, PRUNED 40 (5 diverged), FAIL 1``: trials per state, diverged ones named apart."""
    parts = []
    for state in TrialState:
        trials = study.get_trials(deepcopy=False, states=(state,))
        if trials:
            diverged = sum(is_diverged(t) for t in trials)
            parts.append(f"{state.name} {len(trials)}" + (f" ({diverged} diverged)" if diverged else ""))
    return ", ".join(parts) or "none"


def _searched(trials: list[optuna.trial.FrozenTrial]) -> dict[str, BaseDistribution]:
    """Each parameter the trials searched and its distribution (the latest trial's, if it changed)."""
    found: dict[str, BaseDistribution] = {}
    for trial in trials:
        found.update(trial.distributions)
    return found


def region_labels(distribution: BaseDistribution, values: list[Any]) -> list[str]:
    """The region of each value: its choice for a categorical, else one of 3 equal-width bins of the
    searched range (in log space for a log-scaled parameter)."""
    if isinstance(distribution, CategoricalDistribution):
        return [str(v) for v in values]
    edges, names, log = _bins(distribution)
    points = np.asarray(values, dtype=float)
    index = np.clip(np.searchsorted(edges, np.log10(points) if log else points, side="right") - 1, 0, 2)
    return [names[i] for i in index]


def _bins(distribution: BaseDistribution) -> tuple[np.ndarray, list[str], bool]:
    """(4 bin edges, 3 bin names, log) of a numeric distribution's range."""
    low, high, log = float(distribution.low), float(distribution.high), bool(distribution.log)
    edges = np.linspace(*(np.log10([low, high]) if log else (low, high)), 4)
    shown = [format(10 ** e if log else e, ".3g") for e in edges]
    return edges, [f"{a} to {b}" for a, b in zip(shown[:-1], shown[1:])], log


def _region_order(distribution: BaseDistribution) -> list[str]:
    """The regions in the order of the search space (choices as listed, bins low to high)."""
    if isinstance(distribution, CategoricalDistribution):
        return [str(c) for c in distribution.choices]
    return _bins(distribution)[1]


def diverged_by_region(study: optuna.Study) -> pd.DataFrame:
    """Per searched parameter and region (``region_labels``): ended trials (COMPLETE, PRUNED, FAIL)
    and how many of them diverged. Empty when no trial diverged."""
    trials = study.get_trials(deepcopy=False, states=ENDED)
    if not any(is_diverged(t) for t in trials):
        return pd.DataFrame(columns=["param", "region", "trials", "diverged"])
    rows = []
    for name, distribution in _searched(trials).items():
        have = [t for t in trials if name in t.params]
        table = pd.DataFrame({"region": region_labels(distribution, [t.params[name] for t in have]),
                              "diverged": [is_diverged(t) for t in have]})
        counts = table.groupby("region")["diverged"].agg(["size", "sum"])
        order = _region_order(distribution)
        for region in order + [r for r in counts.index if r not in order]:  # a choice no longer searched last
            size, hits = counts.loc[region] if region in counts.index else (0, 0)
            rows.append({"param": name, "region": region, "trials": int(size), "diverged": int(hits)})
    return pd.DataFrame(rows)


def diverged_lines(study: optuna.Study) -> list[str]:
    """The report's "Diverged trials by region" section ([] when no trial diverged)."""
    table = diverged_by_region(study)
    if table.empty:
        return []
    return ["## Diverged trials by region", "",
            "Per searched parameter, the ended trials in each region of its range (each choice; else 3 equal-width "
            "bins, in log space for a log-scaled parameter) and how many of them diverged. A diverged trial ends "
            "PRUNED at chance error and is told to the sampler as a bad trial.", "",
            markdown_table(table), ""]
