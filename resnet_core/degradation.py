"""The degradation report kind (He et al. 2015, Fig. 6 and Table 6): references, verdicts, figures.

Verdicts come from models fitted on every completed run (resnet_core/trends.py), never from two
cells, and check both halves of the paper's finding. The plain half: "degradation reproduced" only
when the plain nets' training-error slope with depth and the interaction (plain slope minus residual
slope) both have 95% intervals above 0; otherwise the sentence says which part is not shown. The
residual half: "residual nets no worse with depth" when the residual slope's interval reaches 0 or
below, else "residual nets degrade too" and how much slower than plain nets. A poor straight-line fit
and diverged runs (refitted at chance error) get a sentence of their own.

A grid with a length axis (``epochs`` or ``iterations``) is fitted per length and adds the budget
scan: the two effect sizes against length. Nothing pools runs of different lengths: the paper
comparison and the figures are drawn at the longest length, and say so.

A degradation report compares families and depths only: a grid whose other axes vary (``lr``, say)
would pool those cells, so such a grid is refused when it is planned (the ``fields`` of its entry in
resnet_core/grid/kinds.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from resnet_core.config import resolve_field
from resnet_core.reports import (
    METRIC_LABELS,
    _first,
    plural,
    _interval_bars,
    _millions,
    _values,
    format_stat,
    markdown_table,
    n_label,
    plot_learning_curves,
    summarize,
)
from resnet_core.stats import mean_interval
from resnet_core.trends import (
    INTERACTION,
    LACK_OF_FIT,
    PLAIN_SLOPE,
    RESIDUAL_SLOPE,
    TREND_COLUMNS,
    chance_error,
    scan_table,
    term,
    trend_table,
)

# ------------------------------------------------------------------------------ references

# He et al. 2015 ("Deep residual learning for image recognition"), Table 6: CIFAR-10 test error (%)
# of ResNets with option-A shortcuts after 64k iterations; parameter counts from the same table.
HE2015_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}
HE2015_PARAMS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}
TABLE6_SOURCE = "He et al. 2015, Table 6"
# The paper shows plain nets only as curves (Fig. 6). Numbers: the GitHub repository nabla0001/resnet,
# a reproduction with the paper's recipe, mean ± std of 5 runs.
PLAIN_REFERENCE = {20: (9.78, 0.13), 56: (12.95, 0.22)}
PLAIN_SOURCE = "github.com/nabla0001/resnet (paper recipe, mean ± std of 5 runs)"
PLAIN_REFERENCE_COLUMN = f"plain, {PLAIN_SOURCE}"
LENGTH_FIELDS = ("train.epochs", "train.iterations")
PAPER_NOTE = (
    f"References: ResNet numbers from {TABLE6_SOURCE} (64k iterations, about 182 epochs of 45k images); "
    f"plain-net numbers from {PLAIN_SOURCE}, since the paper gives plain nets only as curves (Fig. 6). "
    "Numbers from a shorter budget (see Budget above) are not expected to match them; the verdicts above say "
    "which of the paper's directions this budget shows."
)
CAPTIONS = {
    "curves": "Train error (dashed) and test error (solid) per epoch, mean over completed seeds (He et al. 2015 Fig. 6).",
    "final_vs_depth": f"Final train and test error vs depth; crosses: {TABLE6_SOURCE} (ResNets).",
    "grad_norms": "L2 norm of each stage's gradient, mean over each epoch's sampled steps, averaged over all epochs, "
                  "mean over seeds (log scale).",
    "budget_scan": "Degradation effect sizes (training error, points) against training length, each effect a "
                   "Welch contrast of its two cells at that length; bars: 95% intervals.",
}


# -------------------------------------------------------------------------------- verdicts

def _interval(row: Mapping[str, Any]) -> str:
    if not np.isfinite(row["ci_low"]):
        return "no interval: the runs leave no residual degrees of freedom"
    return f"95% CI {row['ci_low']:+.2f} to {row['ci_high']:+.2f}"


def _with_p(row: Mapping[str, Any]) -> str:
    text = _interval(row)
    return text + (f", p = {row['p_value']:.2g}" if np.isfinite(row["p_value"]) else "")


def _direction(row: Mapping[str, Any]) -> str:
    """rises / falls when the 95% interval excludes 0, else 'shows no clear change'."""
    if np.isfinite(row["ci_low"]) and row["ci_low"] > 0:
        return "rises"
    if np.isfinite(row["ci_high"]) and row["ci_high"] < 0:
        return "falls"
    return "shows no clear change"


def _above_zero(row: Mapping[str, Any] | None) -> bool:
    return row is not None and bool(np.isfinite(row["ci_low"])) and row["ci_low"] > 0


def _slope_text(row: Mapping[str, Any]) -> str:
    return f"{row['estimate']:+.2f} points per 10 layers ({_interval(row)})"


def _judgeable(trends: pd.DataFrame, where: str) -> tuple[dict | None, dict | None, dict | None, str | None]:
    """The three slope rows of the training-error fit, or a sentence saying why they cannot be judged."""
    plain, residual, interaction = (term(trends, "train_error", t) for t in (PLAIN_SLOPE, RESIDUAL_SLOPE, INTERACTION))
    if plain is None or residual is None or interaction is None:
        return None, None, None, (f"Degradation cannot be judged {where}: the trend model needs completed runs of both "
                                  "families at two or more depths each.")
    if not np.isfinite(interaction["ci_low"]):
        return None, None, None, (f"Degradation cannot be judged {where}: {int(plain['n_runs'])} completed runs leave no "
                                  "residual degrees of freedom for the 4-parameter trend model; add seeds or depths.")
    return plain, residual, interaction, None


def degradation_sentence(trends: pd.DataFrame, where: str) -> str:
    """The plain half of the verdict (He et al. 2015 Fig. 6): plain nets train worse with depth, and
    faster so than residual nets: both the plain slope and the interaction have intervals above 0."""
    plain, _, interaction, cannot = _judgeable(trends, where)
    if cannot:
        return cannot
    plain_text = f"plain nets' training error {_direction(plain)} with depth, {_slope_text(plain)}"
    interaction_text = (f"the difference of the slopes (plain minus residual) is {interaction['estimate']:+.2f} per 10 "
                        f"layers ({_with_p(interaction)})")
    if _above_zero(plain) and _above_zero(interaction):
        return f"Plain half: degradation reproduced {where}: {plain_text}; {interaction_text}."
    missing = []
    if not _above_zero(plain):
        missing.append("the plain nets' slope is not shown to be above 0")
    if not _above_zero(interaction):
        missing.append("plain nets are not shown to degrade faster than residual nets")
    return f"Plain half: degradation not shown {where}: {' and '.join(missing)}: {plain_text}; {interaction_text}."


def residual_sentence(trends: pd.DataFrame, where: str) -> str | None:
    """The residual half (He et al. 2015 Table 6: deeper ResNets train and test better): "no worse with
    depth" when the residual slope's interval reaches 0 or below, else "degrade too", and how much slower."""
    plain, residual, interaction, cannot = _judgeable(trends, where)
    if cannot:
        return None
    text = f"residual nets' training error {_direction(residual)} with depth, {_slope_text(residual)}"
    if not np.isfinite(residual["ci_low"]) or residual["ci_low"] <= 0:
        return f"Residual half: residual nets no worse with depth {where}: {text}."
    if _above_zero(interaction):
        pace = f"{plain['estimate'] / residual['estimate']:.1f} times slower than plain nets ({plain['estimate']:+.2f})"
    else:
        pace = f"not shown to be slower than plain nets ({plain['estimate']:+.2f})"
    return (f"Residual half: residual nets degrade too {where}, {pace}: {text}; He et al. 2015 (Table 6) "
            "report the opposite at 64k iterations (8.75% at depth 20, 6.97% at 56).")


def lack_of_fit_sentence(trends: pd.DataFrame, metric: str, where: str) -> str | None:
    """Said only when a straight line in depth fits the cell means poorly (p < 0.05)."""
    row = term(trends, metric, LACK_OF_FIT)
    if row is None or not np.isfinite(row["p_value"]) or row["p_value"] >= 0.05:
        return None
    return (f"A straight line in depth fits the {metric.replace('_', ' ')} poorly {where} (lack of fit against the "
            f"cell means: {row['inference']} = {row['estimate']:.2f}, p = {row['p_value']:.2g}): the slopes average "
            "a curved trend; the per-depth differences describe it better.")


def test_error_verdict(trends: pd.DataFrame, where: str) -> str | None:
    plain, residual, interaction = (term(trends, "test_error", t) for t in (PLAIN_SLOPE, RESIDUAL_SLOPE, INTERACTION))
    parts = [f"{name} {_direction(row)} with depth, {_slope_text(row)}"
             for name, row in (("plain nets' test error", plain), ("residual nets'", residual)) if row is not None]
    if interaction is not None:
        parts.append(f"slope difference {interaction['estimate']:+.2f} ({_with_p(interaction)})")
    return f"Test error {where}: " + "; ".join(parts) + "." if parts else None


def difference_sentence(trends: pd.DataFrame, metric: str, where: str) -> str | None:
    """Residual minus plain at every depth (Welch: each depth's two cells, their own variances)."""
    rows = trends[(trends["metric"] == metric) & trends["term"].str.startswith("residual minus plain at depth")]
    if rows.empty:
        return None
    items = [f"depth {r['term'].rsplit(' ', 1)[-1]}: {r['estimate']:+.2f} ({_interval(r)})" for _, r in rows.iterrows()]
    return f"Residual minus plain, {metric.replace('_', ' ')} {where}: " + "; ".join(items) + "."


def excluded_sentence(table: pd.DataFrame) -> str | None:
    """Runs the fits could not use (diverged, failed, stopped, not run), by cell."""
    left = table[table["status"] != "completed"]
    if left.empty:
        return None
    counts = left.groupby(["status", "cell"]).size()
    items = [f"{n} {status} ({cell})" for (status, cell), n in counts.items()]
    return "Not in the fits (no final error): " + "; ".join(items) + "."


def _halves(trends: pd.DataFrame, where: str) -> list[str]:
    return [s for s in (degradation_sentence(trends, where), residual_sentence(trends, where)) if s]


def sensitivity_sentence(trends: pd.DataFrame, table: pd.DataFrame, where: str) -> str | None:
    """With diverged runs: the verdict refitted with them counted at chance error, and whether it changes."""
    diverged = int((table["status"] == "diverged").sum())
    if not diverged:
        return None
    chance = chance_error(table)
    again = _halves(trend_table(table, ("train_error",), at_chance=True), where)
    before = [s.split(":")[1] for s in _halves(trends, where)]
    after = [s.split(":")[1] for s in again]
    counted = f"{plural(diverged, 'diverged run')} counted at chance error ({chance:.0f}%)"
    if before == after:
        return f"Sensitivity {where}: with {counted}, the verdict is the same: {'; '.join(s.strip() for s in after)}."
    return (f"Sensitivity {where}: with {counted}, the verdict changes: " + " ".join(again)
            + " The verdict above leaves them out; read both.")


def verdicts(trends: pd.DataFrame, table: pd.DataFrame, where: str) -> list[str]:
    sentences = [*_halves(trends, where), lack_of_fit_sentence(trends, "train_error", where),
                 difference_sentence(trends, "train_error", where), sensitivity_sentence(trends, table, where),
                 test_error_verdict(trends, where), lack_of_fit_sentence(trends, "test_error", where),
                 difference_sentence(trends, "test_error", where), excluded_sentence(table)]
    return [s for s in sentences if s]


# ------------------------------------------------------------------------------ the report kind

def length_axis(manifest: Mapping[str, Any]) -> str | None:
    """The grid's axis that sets the training length (``epochs``, ``train.iterations``...), if any."""
    for name in manifest.get("axes", []):
        try:
            if resolve_field(name) in LENGTH_FIELDS:
                return name
        except ValueError:
            continue
    return None


def budget_where(manifest: Mapping[str, Any], length: str | None = None, value: Any = None) -> str:
    """``at the quick budget (4 epochs on 10,000 training images)``, or the scan's length value."""
    budget = manifest.get("budget") or {}
    if length is not None:
        unit = resolve_field(length).split(".")[-1]
        scope = f" of the {budget['name']} budget" if budget.get("name") else ""
        unit = unit[:-1] if str(value) == "1" and unit.endswith("s") else unit  # "1 epoch", "2 epochs"
        return f"at {value} {unit}{scope}"
    if budget.get("name"):
        return f"at the {budget['name']} budget ({budget.get('length', '')})"
    return "at this grid's budget"


def trends_for(table: pd.DataFrame, manifest: Mapping[str, Any]) -> pd.DataFrame:
    """trends.csv: one fit per length when the grid scans the length, else one fit of every run."""
    length = length_axis(manifest)
    if length is None:
        return trend_table(table)
    parts = [trend_table(table[table[length] == value]).assign(**{length: value})
             for value in sorted(table[length].dropna().unique())]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TREND_COLUMNS + [length])
    return frame[[length] + TREND_COLUMNS]


def verdicts_for(trends: pd.DataFrame, table: pd.DataFrame, manifest: Mapping[str, Any]) -> list[str]:
    length = length_axis(manifest)
    if length is None:
        return verdicts(trends, table, budget_where(manifest))
    sentences = []
    for value in sorted(table[length].dropna().unique()):
        where, part, fitted = budget_where(manifest, length, value), table[table[length] == value], trends[trends[length] == value]
        sentences += [s for s in (*_halves(fitted, where), lack_of_fit_sentence(fitted, "train_error", where),
                                  difference_sentence(fitted, "train_error", where),
                                  sensitivity_sentence(fitted, part, where)) if s]
    return sentences + [s for s in [excluded_sentence(table)] if s]


@dataclass
class KindOutput:
    """What a report kind adds to the generic report: markdown sections, figures and CSV tables, and
    captions for its figures where they depend on the grid (e.g. the length they are drawn at)."""

    sections: list[tuple[str, str]] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)


def at_longest(table: pd.DataFrame, manifest: Mapping[str, Any]) -> tuple[pd.DataFrame, str]:
    """The runs at the grid's longest length and the words naming it (all runs and "" without a length axis).

    Runs of different lengths are never pooled: a mean over 1- and 8-epoch runs describes no run.
    """
    length = length_axis(manifest)
    if length is None or table[length].dropna().empty:
        return table, ""
    longest = max(table[length].dropna().unique())
    return table[table[length] == longest], f"{budget_where(manifest, length, longest)}, the longest length of this grid"


def degradation_kind(table: pd.DataFrame, histories: pd.DataFrame, manifest: Mapping[str, Any]) -> KindOutput:
    """Sections, figures and tables of the degradation report (see the module docstring)."""
    out = KindOutput()
    if "family" not in table:
        return out
    trends = trends_for(table, manifest)
    out.tables["trends"] = trends
    out.sections.append(("Verdicts (generated from models fitted on every completed run: trends.csv)",
                         "\n".join(f"- {v}" for v in verdicts_for(trends, table, manifest))))
    length = length_axis(manifest)
    if length is not None:
        scan = scan_table(table, length)
        out.tables["budget_scan"] = scan
        out.sections.append(("How long must a run train? (training error, points)",
                             markdown_table(scan_display(scan, length)) if not scan.empty else "No completed pairs yet."))
        out.figures["budget_scan"] = plot_budget_scan(scan, length)
    longest, named = at_longest(table, manifest)
    suffix = f" ({named})" if named else ""
    out.sections.append((f"Compared with {TABLE6_SOURCE} (test error %, CIFAR-10){suffix}",
                         markdown_table(paper_comparison(longest)) + "\n\n" + PAPER_NOTE))
    out.figures["curves"] = plot_learning_curves(histories, longest, hue="depth", panel="family")
    out.figures["final_vs_depth"] = plot_final_vs_depth(longest)
    out.figures["grad_norms"] = plot_grad_norms(histories, longest, epochs="all")
    out.captions = {name: CAPTIONS[name] for name in out.figures}
    if named:
        out.captions.update({name: f"{CAPTIONS[name].removesuffix('.')}; runs {named}." for name in
                             ("curves", "final_vs_depth", "grad_norms")})
    return out


def scan_display(scan: pd.DataFrame, length: str) -> pd.DataFrame:
    rows = [{length: r["length"], "effect": r["effect"], "estimate": f"{r['estimate']:+.2f}",
             "95% CI": _interval(r).removeprefix("95% CI "), "runs": int(r["n_runs"])} for _, r in scan.iterrows()]
    return pd.DataFrame(rows)


def plot_budget_scan(scan: pd.DataFrame, length: str) -> Figure:
    """Each effect size against the length, with its 95% interval; 0 marked."""
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(6.5, 4.2), layout="constrained")
        ax = fig.subplots()
    for effect, part in scan.groupby("effect", sort=False):
        bars = np.nan_to_num(np.vstack([part["estimate"] - part["ci_low"], part["ci_high"] - part["estimate"]]))
        ax.errorbar(part["length"], part["estimate"], yerr=bars, marker="o", capsize=4, label=effect)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(xlabel=resolve_field(length).split(".")[-1] if len(scan) else length,
           ylabel="training error difference (points)", title="Degradation effects against training length")
    if len(scan):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(scan["length"].unique()), [str(v) for v in sorted(scan["length"].unique())])
        ax.legend()
    return fig


# ------------------------------------------------------------------------------- the paper

def paper_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Side by side with He et al. 2015 Table 6 (ResNets) and a plain-net reproduction, by depth."""
    rows = []
    for depth in sorted(table["depth"].dropna().unique()):
        at = table[table["depth"] == depth]
        row: dict[str, Any] = {"depth": int(depth)}
        for family in ("residual", "plain"):
            runs = at[at["family"] == family]
            stats = mean_interval(_values(runs, "test_error"))
            row[f"{family} test error (%), ours"] = format_stat(**stats) if len(runs) else "not in grid"
            if family == "residual":
                row["ResNet, He et al. 2015 Table 6"] = _ref(HE2015_TABLE6.get(int(depth)))
                paper = HE2015_TABLE6.get(int(depth))
                row["ours − paper"] = f"{stats['mean'] - paper:+.2f}" if paper and stats["n"] else "—"
                row["params, ours"] = _millions(_first(runs, "params"))
                row["params, paper"] = _millions(HE2015_PARAMS.get(int(depth), math.nan))
            else:
                ref = PLAIN_REFERENCE.get(int(depth))
                row[PLAIN_REFERENCE_COLUMN] = f"{ref[0]:.2f} ± {ref[1]:.2f}" if ref else "—"
        rows.append(row)
    return pd.DataFrame(rows)


def _ref(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "—"



# --------------------------------------------------------------------------------- figures

def plot_final_vs_depth(table: pd.DataFrame) -> Figure:
    """Final train and test error vs depth per family, mean with 95% interval bars; Table 6 marked."""
    stats = summarize(table, ["family", "depth"]).dropna(subset=["depth"]).sort_values("depth")
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(10, 4.2), layout="constrained")
        axes = fig.subplots(1, 2)
    palette = {"plain": "tab:red", "residual": "tab:blue"}
    for ax, metric in zip(axes, ("train_error", "test_error")):
        for family, part in stats.groupby("family"):
            part = part[part[f"{metric}_n"] > 0]
            if part.empty:
                continue
            ax.errorbar(part["depth"], part[f"{metric}_mean"], yerr=_interval_bars(part, metric), marker="o", capsize=4,
                        color=palette.get(family), label=f"{family} ({n_label(part[f'{metric}_n'])} per depth)")
        if metric == "test_error":
            depths = [d for d in HE2015_TABLE6 if d in set(stats["depth"])]
            ax.plot(depths, [HE2015_TABLE6[d] for d in depths], "kx", markersize=9, label=TABLE6_SOURCE)
        ax.set(xlabel="depth (weighted layers)", ylabel=METRIC_LABELS[metric], title=f"final {METRIC_LABELS[metric]}")
        ax.set_xticks(sorted(stats["depth"].unique()))
        ax.legend()
    fig.suptitle("Final epoch, mean over completed seeds, bars: 95% t-interval clipped to 0-100 (none for a single seed)")
    return fig


def grad_norm_frame(histories: pd.DataFrame, table: pd.DataFrame, epochs: str = "all") -> pd.DataFrame:
    """Per-stage gradient norms per run, averaged over all epochs (``epochs="all"``) or the first."""
    columns = [c for c in histories.columns if c.startswith("grad_norm.")]
    done = table.loc[table["status"] == "completed", ["run_id", "family", "depth"]]
    if not columns or done.empty:
        return pd.DataFrame(columns=["run_id", "family", "depth", "stage", "grad_norm"])
    part = histories if epochs == "all" else histories[histories["epoch"] == 1]
    per_run = part.groupby("run_id")[columns].mean().reset_index().merge(done, on="run_id")
    long = per_run.melt(id_vars=["run_id", "family", "depth"], value_vars=columns, var_name="stage", value_name="grad_norm")
    long["stage"] = long["stage"].str.removeprefix("grad_norm.")
    return long.sort_values("stage", key=lambda s: s.map(_stage_order), kind="stable")


def _stage_order(stage: str) -> tuple[int, int]:
    """Network order: stem, stage1..stageK, head (records store the stages sorted by name)."""
    if stage == "stem":
        return (0, 0)
    if stage.startswith("stage") and stage[5:].isdigit():
        return (1, int(stage[5:]))
    return (2, 0)


def plot_grad_norms(histories: pd.DataFrame, table: pd.DataFrame, epochs: str = "all") -> Figure:
    """Gradient norm of each stage vs depth, plain vs residual (mean over seeds, log scale)."""
    data = grad_norm_frame(histories, table, epochs)
    stages = list(dict.fromkeys(data["stage"])) or ["(none)"]
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(3.2 * len(stages), 3.6), layout="constrained")
        axes = fig.subplots(1, len(stages), sharey=True, squeeze=False)[0]
    for ax, stage in zip(axes, stages):
        part = data[data["stage"] == stage]
        if not part.empty:
            sns.lineplot(data=part, x="depth", y="grad_norm", hue="family", hue_order=["plain", "residual"],
                         marker="o", errorbar=None, ax=ax, legend=ax is axes[-1],
                         palette={"plain": "tab:red", "residual": "tab:blue"})
            ax.set_yscale("log")
        ax.set(title=stage, xlabel="depth", ylabel="gradient L2 norm")
        ax.set_xticks(sorted(part["depth"].unique()))
    which = "averaged over all epochs" if epochs == "all" else "first epoch"
    fig.suptitle(f"Per-stage gradient norm (mean over the epoch's sampled steps, {which}; mean over seeds)")
    return fig
