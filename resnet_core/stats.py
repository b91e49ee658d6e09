"""Summaries over seeds: mean, sample std and a Student-t 95% interval of the mean.

A claim about a variant is a mean over seeds with its spread (docs/DESIGN.md, rules of evidence);
with one seed the interval is undefined (NaN) and reports label the number single-seed.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats


def mean_interval(values, confidence: float = 0.95) -> dict[str, float]:
    """``{"mean", "std", "n", "ci_low", "ci_high"}`` of the finite values (t-interval)."""
    array = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = int(array.size)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(array.mean())
    if n == 1:
        return {"mean": mean, "std": math.nan, "n": 1, "ci_low": math.nan, "ci_high": math.nan}
    std = float(array.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def difference_interval(a, b, confidence: float = 0.95) -> dict[str, float]:
    """Mean of ``b - a`` with a Welch t-interval (independent seeds on each side): ``diff``, ``ci_low``,
    ``ci_high``, the two-sided ``p_value`` and the Welch-Satterthwaite ``df`` (NaN with < 2 per side)."""
    a = np.asarray([v for v in a if np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in b if np.isfinite(v)], dtype=float)
    diff = float(b.mean() - a.mean()) if a.size and b.size else math.nan
    if a.size < 2 or b.size < 2:
        return {"diff": diff, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "df": math.nan}
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "p_value": math.nan, "df": math.nan}
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, dof)) * se
    p_value = float(2 * scipy_stats.t.sf(abs(diff) / se, dof))
    return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half, "p_value": p_value, "df": float(dof)}
