"""Summaries over seeds: mean, sample std and a Student-t 95% interval of the mean; differences of
independent seeds (Welch) and of paired runs (per seed, or per test image for one pair).

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


def paired_seed_interval(differences, image_differences=None, confidence: float = 0.95) -> dict[str, float]:
    """Mean of per-seed paired differences (tuned minus baseline, one pair per seed) with a t-interval
    on n - 1 degrees of freedom: ``diff``, ``ci_low``, ``ci_high``, ``se``, ``n``.

    The seeds' spread alone leaves out that every pair was measured on one shared test set. With
    ``image_differences`` (D_j: test image j's mean over seeds of tuned wrong minus baseline wrong, in
    the units of ``differences``) the variance gains that sampling term: se^2 = s_d^2 / n + Var_j(D_j) / N,
    Var_j the population variance over the N images (the one-seed paired variance, below, at n = 1).
    """
    d = np.asarray(differences, dtype=float)
    n = int(d.size)
    if n < 2:
        raise ValueError(f"a paired t interval needs 2 or more seeds, got {n}")
    variance = float(d.var(ddof=1)) / n
    if image_differences is not None:
        images = np.asarray(image_differences, dtype=float)
        variance += float(images.var()) / images.size
    se = math.sqrt(variance)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    mean = float(d.mean())
    return {"diff": mean, "ci_low": mean - half, "ci_high": mean + half, "se": se, "n": n}


def paired_image_interval(wrong_tuned, wrong_baseline, confidence: float = 0.95) -> dict[str, float]:
    """One pair of runs on one test set: the difference of their errors in percentage points,
    100 (b - c) / N from the discordant images (b: only the tuned run wrong, c: only the baseline
    wrong), a Wald interval from the paired variance ((b + c) / N - ((b - c) / N)^2) / N, and the
    exact McNemar p (a binomial test of b against b + c). Test-set sampling is all it covers."""
    from statsmodels.stats.contingency_tables import mcnemar

    tuned, baseline = np.asarray(wrong_tuned, dtype=bool), np.asarray(wrong_baseline, dtype=bool)
    if tuned.shape != baseline.shape or tuned.ndim != 1 or tuned.size == 0:
        raise ValueError(f"paired wrong flags must be two equal non-empty vectors, got {tuned.shape} and {baseline.shape}")
    n = int(tuned.size)
    b, c = int((tuned & ~baseline).sum()), int((~tuned & baseline).sum())
    diff = (b - c) / n
    se = math.sqrt(max(0.0, ((b + c) / n - diff**2) / n))
    half = float(scipy_stats.norm.ppf(0.5 + confidence / 2)) * se
    both, neither = int((tuned & baseline).sum()), int((~tuned & ~baseline).sum())
    p_value = 1.0 if b + c == 0 else float(mcnemar([[both, b], [c, neither]], exact=True).pvalue)
    return {"diff": 100 * diff, "ci_low": 100 * (diff - half), "ci_high": 100 * (diff + half), "p_value": p_value,
            "tuned_only": b, "baseline_only": c, "images": n}
