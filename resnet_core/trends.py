"""Fitted effects of depth and family: the models behind the degradation verdicts.

A verdict comes from a model fitted on every completed run, not from two cells (docs/DESIGN.md,
rules of evidence). Two ordinary-least-squares fits (statsmodels), per metric:

- the trend model ``error ~ depth10 * plain`` (depth10 = depth / 10, plain = 1 for plain nets):
  each family's slope per 10 layers and their difference (the interaction: how much faster plain
  nets get worse with depth than residual nets). It pools every run, so single-seed cells work.
- the cell-means model ``error ~ 0 + cell`` (one mean per family x depth, one pooled residual
  variance): residual minus plain at each depth, and the budget-scan contrasts.

Every row is ``metric, term, estimate, ci_low, ci_high, p_value, n_runs`` (95% t-intervals); a term
the runs cannot estimate (too few depths, no residual degrees of freedom) has NaN interval and p.
Diverged or failed runs have no final error and are not in the fits; reports count them apart.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf

TREND_COLUMNS = ["metric", "term", "estimate", "ci_low", "ci_high", "p_value", "n_runs"]
LAYERS_PER_UNIT = 10  # slopes are "points of error per 10 layers"
PLAIN_SLOPE = "plain slope per 10 layers"
RESIDUAL_SLOPE = "residual slope per 10 layers"
INTERACTION = "plain slope minus residual slope"
FAMILIES = ("plain", "residual")


def residual_minus_plain_term(depth: int) -> str:
    return f"residual minus plain at depth {depth}"


def fit_frame(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Completed runs with a finite final ``metric``: columns family, depth, error."""
    column = f"final.{metric}"
    if column not in table.columns or "family" not in table.columns:
        return pd.DataFrame(columns=["family", "depth", "error"])
    done = table[(table["status"] == "completed") & table["family"].isin(FAMILIES)]
    frame = pd.DataFrame({"family": done["family"], "depth": pd.to_numeric(done["depth"]),
                          "error": pd.to_numeric(done[column], errors="coerce")})
    return frame[np.isfinite(frame["error"]) & frame["depth"].notna()].reset_index(drop=True)


def _row(metric: str, term: str, n_runs: int, estimate: float = math.nan, low: float = math.nan,
         high: float = math.nan, p_value: float = math.nan) -> dict[str, Any]:
    return {"metric": metric, "term": term, "estimate": float(estimate), "ci_low": float(low),
            "ci_high": float(high), "p_value": float(p_value), "n_runs": int(n_runs)}


def _contrast(result, contrast, metric: str, term: str, n_runs: int) -> dict[str, Any]:
    """One linear contrast of a fitted OLS with its 95% interval and two-sided p-value."""
    with warnings.catch_warnings():
        # An exact fit (no residual degrees of freedom) or a zero-variance one divides by zero inside
        # statsmodels: the estimate stands, the interval is NaN (or zero-width) and is reported so.
        warnings.simplefilter("ignore", RuntimeWarning)
        test = result.t_test(contrast)
    if result.df_resid < 1:
        return _row(metric, term, n_runs, float(np.squeeze(test.effect)))
    low, high = np.asarray(test.conf_int(alpha=0.05)).ravel()[:2]
    return _row(metric, term, n_runs, float(np.squeeze(test.effect)), low, high, float(np.squeeze(test.pvalue)))


def slope_terms(frame: pd.DataFrame, metric: str) -> list[dict[str, Any]]:
    """Each family's slope per 10 layers and, with both families, the interaction."""
    n = len(frame)
    depths = {f: frame.loc[frame["family"] == f, "depth"].nunique() for f in FAMILIES}
    fittable = [f for f in FAMILIES if depths[f] >= 2]
    data = frame.assign(depth10=frame["depth"] / LAYERS_PER_UNIT, plain=(frame["family"] == "plain").astype(float))
    rows = []
    if len(fittable) == 2:
        result = smf.ols("error ~ depth10 * plain", data=data).fit()
        rows.append(_contrast(result, "depth10 + depth10:plain = 0", metric, PLAIN_SLOPE, n))
        rows.append(_contrast(result, "depth10 = 0", metric, RESIDUAL_SLOPE, n))
        rows.append(_contrast(result, "depth10:plain = 0", metric, INTERACTION, n))
        return rows
    for family in fittable:  # one family with several depths: its slope alone
        part = data[data["family"] == family]
        result = smf.ols("error ~ depth10", data=part).fit()
        rows.append(_contrast(result, "depth10 = 0", metric, PLAIN_SLOPE if family == "plain" else RESIDUAL_SLOPE,
                              len(part)))
    return rows


def cell_means_fit(frame: pd.DataFrame):
    """OLS of error on one indicator per (family, depth) cell: (result, cell labels in column order)."""
    cells = [f"{f}@{int(d)}" for f, d in zip(frame["family"], frame["depth"])]
    design = pd.get_dummies(pd.Series(cells), dtype=float)
    return sm.OLS(frame["error"].to_numpy(float), design).fit(), list(design.columns)


def cell_contrast(frame: pd.DataFrame, plus: str, minus: str, metric: str, term: str) -> dict[str, Any]:
    """Mean of cell ``plus`` minus mean of cell ``minus`` (labels ``family@depth``), pooled variance."""
    labels = {f"{f}@{int(d)}" for f, d in zip(frame["family"], frame["depth"])}
    if plus not in labels or minus not in labels:
        return _row(metric, term, len(frame))
    result, columns = cell_means_fit(frame)
    vector = np.zeros(len(columns))
    vector[columns.index(plus)], vector[columns.index(minus)] = 1.0, -1.0
    used = frame[[f"{f}@{int(d)}" in (plus, minus) for f, d in zip(frame["family"], frame["depth"])]]
    return {**_contrast(result, vector, metric, term, len(frame)), "n_runs": len(used)}


def difference_terms(frame: pd.DataFrame, metric: str) -> list[dict[str, Any]]:
    """Residual minus plain at every depth both families have (cell means, pooled variance)."""
    both = sorted(set(frame.loc[frame["family"] == "plain", "depth"]) & set(frame.loc[frame["family"] == "residual", "depth"]))
    return [cell_contrast(frame, f"residual@{int(d)}", f"plain@{int(d)}", metric, residual_minus_plain_term(int(d)))
            for d in both]


def trend_table(table: pd.DataFrame, metrics: Sequence[str] = ("train_error", "test_error")) -> pd.DataFrame:
    """trends.csv: slopes, interaction and per-depth differences for each metric (see module doc)."""
    rows = []
    for metric in metrics:
        frame = fit_frame(table, metric)
        if frame.empty:
            continue
        rows += slope_terms(frame, metric) + difference_terms(frame, metric)
    return pd.DataFrame(rows, columns=TREND_COLUMNS)


def term(trends: pd.DataFrame, metric: str, name: str) -> dict[str, Any] | None:
    """One row of a trend table as a dict, or None when the runs could not estimate it."""
    hit = trends[(trends["metric"] == metric) & (trends["term"] == name)]
    return None if hit.empty else hit.iloc[0].to_dict()


# ------------------------------------------------------------------------------ budget scan

SCAN_EFFECTS = {
    # name: (plus cell, minus cell) in terms of the shallowest and the deepest depth of the scan
    "plain deep minus plain shallow": ("plain", "deep", "plain", "shallow"),
    "plain deep minus residual deep": ("plain", "deep", "residual", "deep"),
}
SCAN_COLUMNS = ["length", "effect", "estimate", "ci_low", "ci_high", "p_value", "n_runs"]


def scan_table(table: pd.DataFrame, length: str, metric: str = "train_error") -> pd.DataFrame:
    """The two degradation effect sizes at every value of the grid's length axis ``length``.

    Each length is fitted on its own (cell means with a pooled variance over its runs), so the
    intervals at one length do not borrow from another.
    """
    rows = []
    for value in sorted(v for v in table[length].dropna().unique()):
        frame = fit_frame(table[table[length] == value], metric)
        depths = sorted(frame["depth"].unique())
        if len(depths) < 2:
            continue
        where = {"shallow": int(depths[0]), "deep": int(depths[-1])}
        for name, (fam_a, at_a, fam_b, at_b) in SCAN_EFFECTS.items():
            row = cell_contrast(frame, f"{fam_a}@{where[at_a]}", f"{fam_b}@{where[at_b]}", metric, name)
            label = name.replace("deep", str(where["deep"])).replace("shallow", str(where["shallow"]))
            rows.append({"length": _plain_number(value), "effect": label, **{k: row[k] for k in SCAN_COLUMNS[2:]}})
    return pd.DataFrame(rows, columns=SCAN_COLUMNS)


def _plain_number(value: Any) -> Any:
    return int(value) if isinstance(value, (float, np.floating)) and float(value).is_integer() else value
