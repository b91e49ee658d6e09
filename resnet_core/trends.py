"""Fitted effects of depth and family: the models behind the degradation verdicts.

A verdict comes from a model fitted on every completed run, not from two cells (docs/DESIGN.md,
rules of evidence). Per metric:

- the trend model ``error ~ depth10 * plain`` (depth10 = depth / 10, plain = 1 for plain nets):
  each family's slope per 10 layers and their difference (the interaction: how much faster plain
  nets get worse with depth than residual nets). It pools every run, so single-seed cells work.
  Its intervals use heteroscedasticity-robust (HC3) standard errors with t on the model's residual
  degrees of freedom: per-cell spreads differ by far more than sampling explains (deep plain nets
  vary more from seed to seed), which a pooled variance would hide.
- the lack-of-fit test: the trend model against the cell-means model ``error ~ 0 + cell`` (one mean
  per family x depth), an F test of whether a straight line in depth describes the cell means.
- contrasts of two cells (residual minus plain at a depth, the budget-scan effects): Welch's t on
  those two cells' runs alone, with their own variances and Welch-Satterthwaite degrees of freedom.

Every row is ``metric, term, estimate, ci_low, ci_high, p_value, n_runs, df, inference`` (95%
intervals); a term the runs cannot estimate (too few depths or seeds) has NaN interval and p. The lack
of fit row's estimate is the F statistic (``df`` its denominator degrees of freedom).
Runs that diverged have no final error and are not in these fits; ``at_chance`` puts them back at
the error of guessing, for the reports' sensitivity line.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf

from resnet_core.stats import difference_interval

TREND_COLUMNS = ["metric", "term", "estimate", "ci_low", "ci_high", "p_value", "n_runs", "df", "inference"]
LAYERS_PER_UNIT = 10  # slopes are "points of error per 10 layers"
PLAIN_SLOPE = "plain slope per 10 layers"
RESIDUAL_SLOPE = "residual slope per 10 layers"
INTERACTION = "plain slope minus residual slope"
LACK_OF_FIT = "lack of fit: line in depth vs cell means"
FAMILIES = ("plain", "residual")
ROBUST = "HC3"  # statsmodels' covariance type for the trend model's slopes


def residual_minus_plain_term(depth: int) -> str:
    return f"residual minus plain at depth {depth}"


def chance_error(table: pd.DataFrame) -> float:
    """The error (%) of guessing uniformly among the data's classes (90% on CIFAR-10)."""
    for column in ("provenance.data_num_classes", "model.num_classes"):
        if column in table.columns and table[column].notna().any():
            return 100.0 * (1.0 - 1.0 / float(table[column].dropna().iloc[0]))
    return 90.0


def fit_frame(table: pd.DataFrame, metric: str, at_chance: bool = False) -> pd.DataFrame:
    """Completed runs with a finite final ``metric``: columns family, depth, error.

    ``at_chance`` adds the diverged runs at :func:`chance_error` (a sensitivity fit, never the main one).
    """
    column = f"final.{metric}"
    if column not in table.columns or "family" not in table.columns:
        return pd.DataFrame(columns=["family", "depth", "error"])
    statuses = ("completed", "diverged") if at_chance else ("completed",)
    done = table[table["status"].isin(statuses) & table["family"].isin(FAMILIES)]
    error = pd.to_numeric(done[column], errors="coerce")
    if at_chance:
        error = error.where(done["status"] == "completed", chance_error(table))
    frame = pd.DataFrame({"family": done["family"], "depth": pd.to_numeric(done["depth"]), "error": error})
    return frame[np.isfinite(frame["error"]) & frame["depth"].notna()].reset_index(drop=True)


def _row(metric: str, term: str, n_runs: int, estimate: float = math.nan, low: float = math.nan,
         high: float = math.nan, p_value: float = math.nan, df: float = math.nan, inference: str = "") -> dict[str, Any]:
    return {"metric": metric, "term": term, "estimate": float(estimate), "ci_low": float(low),
            "ci_high": float(high), "p_value": float(p_value), "n_runs": int(n_runs), "df": float(df),
            "inference": inference}


def _contrast(result, contrast, metric: str, term: str, n_runs: int, inference: str) -> dict[str, Any]:
    """One linear contrast of a fitted OLS with its 95% interval and two-sided p-value."""
    with warnings.catch_warnings():
        # An exact fit (no residual degrees of freedom) or a point of leverage 1 divides by zero inside
        # statsmodels: the estimate stands, the interval is NaN and is reported so.
        warnings.simplefilter("ignore", RuntimeWarning)
        test = result.t_test(contrast)
        low, high = np.asarray(test.conf_int(alpha=0.05)).ravel()[:2]
    estimate = float(np.squeeze(test.effect))
    if result.df_resid < 1 or not (np.isfinite(low) and np.isfinite(high)):
        return _row(metric, term, n_runs, estimate, inference=inference)
    return _row(metric, term, n_runs, estimate, low, high, float(np.squeeze(test.pvalue)), result.df_resid, inference)


def _robust_ols(formula: str, data: pd.DataFrame):
    """OLS with HC3 standard errors and t (not normal) intervals on the residual degrees of freedom."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return smf.ols(formula, data=data).fit(cov_type=ROBUST, use_t=True)


def slope_terms(frame: pd.DataFrame, metric: str) -> list[dict[str, Any]]:
    """Each family's slope per 10 layers and, with both families, the interaction (HC3 intervals)."""
    n = len(frame)
    depths = {f: frame.loc[frame["family"] == f, "depth"].nunique() for f in FAMILIES}
    fittable = [f for f in FAMILIES if depths[f] >= 2]
    data = frame.assign(depth10=frame["depth"] / LAYERS_PER_UNIT, plain=(frame["family"] == "plain").astype(float))
    how = f"OLS, {ROBUST} standard errors, t"
    if len(fittable) == 2:
        result = _robust_ols("error ~ depth10 * plain", data)
        return [_contrast(result, "depth10 + depth10:plain = 0", metric, PLAIN_SLOPE, n, how),
                _contrast(result, "depth10 = 0", metric, RESIDUAL_SLOPE, n, how),
                _contrast(result, "depth10:plain = 0", metric, INTERACTION, n, how)]
    rows = []
    for family in fittable:  # one family with several depths: its slope alone
        part = data[data["family"] == family]
        result = _robust_ols("error ~ depth10", part)
        rows.append(_contrast(result, "depth10 = 0", metric, PLAIN_SLOPE if family == "plain" else RESIDUAL_SLOPE,
                              len(part), how))
    return rows


def _cell_labels(frame: pd.DataFrame) -> list[str]:
    return [f"{f}@{int(d)}" for f, d in zip(frame["family"], frame["depth"])]


def lack_of_fit_terms(frame: pd.DataFrame, metric: str) -> list[dict[str, Any]]:
    """F test of the trend model (a line per family) against one mean per cell; none when untestable."""
    cells = pd.get_dummies(pd.Series(_cell_labels(frame)), dtype=float)
    families = frame["family"].nunique()
    line_parameters = 2 * families
    extra = cells.shape[1] - line_parameters
    full = sm.OLS(frame["error"].to_numpy(float), cells).fit()
    if families < 1 or extra < 1 or full.df_resid < 1 or full.ssr == 0:
        return []
    data = frame.assign(depth10=frame["depth"] / LAYERS_PER_UNIT, plain=(frame["family"] == "plain").astype(float))
    line = smf.ols("error ~ depth10 * plain" if families == 2 else "error ~ depth10", data=data).fit()
    f_value, p_value, _ = full.compare_f_test(line)
    return [_row(metric, LACK_OF_FIT, len(frame), f_value, p_value=p_value, df=full.df_resid,
                 inference=f"F({extra}, {int(full.df_resid)})")]


def cell_contrast(frame: pd.DataFrame, plus: str, minus: str, metric: str, term: str) -> dict[str, Any]:
    """Mean of cell ``plus`` minus mean of cell ``minus`` (labels ``family@depth``): Welch's t on the
    two cells' runs alone, so neither the df nor the variance is borrowed from other cells."""
    labels = np.asarray(_cell_labels(frame))
    errors = frame["error"].to_numpy(float)
    a, b = errors[labels == minus], errors[labels == plus]
    if not len(a) or not len(b):
        return _row(metric, term, len(a) + len(b))
    diff = difference_interval(a, b)
    return _row(metric, term, len(a) + len(b), diff["diff"], diff["ci_low"], diff["ci_high"], diff["p_value"],
                diff["df"], "Welch t (cell-wise variances)")


def difference_terms(frame: pd.DataFrame, metric: str) -> list[dict[str, Any]]:
    """Residual minus plain at every depth both families have (Welch, cell-wise variances)."""
    both = sorted(set(frame.loc[frame["family"] == "plain", "depth"]) & set(frame.loc[frame["family"] == "residual", "depth"]))
    return [cell_contrast(frame, f"residual@{int(d)}", f"plain@{int(d)}", metric, residual_minus_plain_term(int(d)))
            for d in both]


def trend_table(table: pd.DataFrame, metrics: Sequence[str] = ("train_error", "test_error"),
                at_chance: bool = False) -> pd.DataFrame:
    """trends.csv: slopes, interaction, lack of fit and per-depth differences for each metric (module doc)."""
    rows = []
    for metric in metrics:
        frame = fit_frame(table, metric, at_chance)
        if frame.empty:
            continue
        rows += slope_terms(frame, metric) + lack_of_fit_terms(frame, metric) + difference_terms(frame, metric)
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
SCAN_COLUMNS = ["length", "effect", "estimate", "ci_low", "ci_high", "p_value", "n_runs", "df"]


def scan_table(table: pd.DataFrame, length: str, metric: str = "train_error") -> pd.DataFrame:
    """The two degradation effect sizes at every value of the grid's length axis ``length``.

    Each effect is a Welch contrast of its two cells at that length, so no interval borrows
    variance from another cell or another length.
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
