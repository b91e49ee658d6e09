"""Ablation reports: tables, verdict sentences and figures from run records.

Pure functions (DESIGN.md, "Reports"): a DataFrame in, a DataFrame, a string or a matplotlib
Figure out; only :func:`write_report` touches files. Figures are built on ``Figure`` objects (no
pyplot state), so they render with the Agg canvas anywhere, also without a display.

Rules of evidence kept here: numbers are final-epoch values (never best-epoch); a cell's number is
a mean over its completed seeds with std and a 95% t-interval (``stats.mean_interval``); a single
seed is labelled as such; diverged runs are counted and shown, never averaged in or dropped.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from resnet_core.stats import difference_interval, mean_interval
from resnet_core.store import atomic_write_bytes, atomic_write_text

METRICS = ("test_error", "train_error", "val_error")
METRIC_LABELS = {"test_error": "test error (%)", "train_error": "train error (%)", "val_error": "val error (%)"}
STATUS_COLUMNS = ("completed", "diverged", "failed", "stopped", "missing")

# He et al. 2015, Table 6: CIFAR-10 test error (%) of ResNets with option-A shortcuts, 64k iterations.
HE2015_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}
HE2015_PARAMS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}
# The paper shows plain nets only as curves (Fig. 6); one reproduction with the paper recipe: mean, std.
PLAIN_REFERENCE = {20: (9.78, 0.13), 56: (12.95, 0.22)}
# What He et al. 2015 found as depth grows (Fig. 6, Table 6): plain nets worse, ResNets better.
PAPER_TREND = {"plain": +1, "residual": -1}


# ---------------------------------------------------------------------------- the run table

def grid_table(runs: pd.DataFrame, manifest: Mapping[str, Any]) -> pd.DataFrame:
    """One row per run of the grid: the manifest's cell columns joined with its record, if any.

    Runs of the grid without a record get status ``missing``; records of other grids are ignored.
    Adds ``family`` (residual | plain) and ``depth`` from the record's model config.
    """
    cells = pd.DataFrame(manifest["runs"])
    if runs.empty or "run_id" not in runs.columns:
        runs = pd.DataFrame({"run_id": pd.Series(dtype=str), "status": pd.Series(dtype=str)})
    overlap = [c for c in cells.columns if c in runs.columns and c != "run_id"]
    table = cells.merge(runs.drop(columns=overlap), on="run_id", how="left")
    table["status"] = table["status"].fillna("missing")
    residual, depth = _coalesce(table, "model.residual", "residual"), _coalesce(table, "model.depth", "depth")
    if residual.notna().any() and depth.notna().any():
        table["family"] = residual.map({True: "residual", False: "plain"})
        table["depth"] = pd.to_numeric(depth)
    return table


def _coalesce(table: pd.DataFrame, *columns: str) -> pd.Series:
    """The first non-null of ``columns`` per row: the record's config, else the manifest's axis."""
    out = pd.Series([None] * len(table), index=table.index, dtype=object)
    for column in columns:
        if column in table.columns:
            out = out.where(out.notna(), table[column])
    return out


def _values(frame: pd.DataFrame, metric: str) -> list[float]:
    """Final values of ``metric`` from the completed runs only (diverged runs are counted apart)."""
    column = f"final.{metric}"
    if column not in frame.columns:
        return []
    return [float(v) for v in frame.loc[frame["status"] == "completed", column] if v is not None and np.isfinite(v)]


def _status_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {status: int((frame["status"] == status).sum()) for status in STATUS_COLUMNS}


def _first(frame: pd.DataFrame, column: str) -> Any:
    if column not in frame.columns:
        return math.nan
    values = frame[column].dropna()
    return values.iloc[0] if len(values) else math.nan


def _group_row(frame: pd.DataFrame) -> dict[str, Any]:
    """Stats of one group of runs: per metric mean/std/n/ci, plus params, MACs, time, statuses."""
    row: dict[str, Any] = {"runs": len(frame), **_status_counts(frame)}
    for metric in METRICS:
        for key, value in mean_interval(_values(frame, metric)).items():
            row[f"{metric}_{key}"] = value
    row["params"] = _first(frame, "params")
    row["macs"] = _first(frame, "macs")
    done = frame.loc[frame["status"] == "completed", "wall_seconds"] if "wall_seconds" in frame else []
    row["seconds_mean"] = float(np.mean(done)) if len(done) else math.nan
    return row


def summarize(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """One row per group of ``by`` (in first-seen order): see :func:`_group_row` for the columns."""
    rows = []
    for key, frame in table.groupby(list(by), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), **_group_row(frame)})
    return pd.DataFrame(rows)


def summarize_cells(table: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """summary.csv: one row per cell (grid point without the seed), axes first, then ``cell``."""
    summary = summarize(table, ["cell"])
    firsts = table.drop_duplicates("cell").set_index("cell")[list(axes)]
    return summary.join(firsts, on="cell")[[*axes, *summary.columns]]


# ------------------------------------------------------------------------------ formatting

def format_stat(mean: float, std: float, n: int, ci_low: float, ci_high: float, digits: int = 2) -> str:
    """``8.75 ± 0.20 [8.25, 9.25]``; one seed is labelled, no seeds is a dash."""
    if n == 0 or not np.isfinite(mean):
        return "—"
    if n == 1:
        return f"{mean:.{digits}f} (single seed)"
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{ci_low:.{digits}f}, {ci_high:.{digits}f}]"


def _metric_text(row: Mapping[str, Any], metric: str) -> str:
    n = int(row[f"{metric}_n"])
    if n == 0 and row["diverged"]:
        return f"diverged ({row['diverged']}/{row['runs']})"
    if n == 0 and row["failed"]:
        return f"failed ({row['failed']}/{row['runs']})"
    return format_stat(row[f"{metric}_mean"], row[f"{metric}_std"], n, row[f"{metric}_ci_low"], row[f"{metric}_ci_high"])


def status_text(row: Mapping[str, Any]) -> str:
    """``3 completed`` or ``2 completed, 1 diverged``: every run is accounted for."""
    return ", ".join(f"{row[s]} {'not run' if s == 'missing' else s}" for s in STATUS_COLUMNS if row[s])


def _millions(value: Any) -> str:
    return f"{value / 1e6:.2f}M" if isinstance(value, (int, float, np.number)) and np.isfinite(value) else "—"


def display_table(summary: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The summary as report text: ``mean ± std [95% CI]`` per split, runs by status, size, time."""
    rows = []
    for _, row in summary.iterrows():
        shown = {k: _plain(row[k]) for k in keys}
        shown.update({METRIC_LABELS[m]: _metric_text(row, m) for m in METRICS})
        shown["runs"] = status_text(row)
        shown["params"] = _millions(row["params"])
        shown["MACs"] = _millions(row["macs"])
        shown["s/run"] = f"{row['seconds_mean']:.3g}" if np.isfinite(row["seconds_mean"]) else "—"
        rows.append(shown)
    return pd.DataFrame(rows)


def _plain(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs ``tabulate``, which we do not depend on)."""
    def cell(value: Any) -> str:
        return _plain(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ header

def _unique(table: pd.DataFrame, column: str) -> list[Any]:
    if column not in table.columns:
        return []
    return list(dict.fromkeys(v for v in table[column] if v is not None and not (isinstance(v, float) and math.isnan(v))))


def _joined(values: Sequence[Any], missing: str = "unknown") -> str:
    return "; ".join(map(str, values)) if values else missing


def _combos(table: pd.DataFrame, columns: Sequence[str]) -> list[tuple]:
    """The distinct rows of ``columns`` (nulls kept as None); empty when a column is absent."""
    if any(c not in table.columns for c in columns):
        return []
    frame = table[list(columns)].astype(object).where(table[list(columns)].notna(), None)
    return list(dict.fromkeys(tuple(row) for row in frame.itertuples(index=False)))


def _budget_text(table: pd.DataFrame) -> str:
    budgets = [_plural(int(iterations), "iteration") if iterations is not None else _plural(int(epochs), "epoch")
               for epochs, iterations in _combos(table, ["train.epochs", "train.iterations"])]
    batches = ", ".join(str(int(b)) for b in _unique(table, "train.batch_size"))
    recipes = [f"{o} lr {lr:g} {sched}" for o, lr, sched in _combos(table, ["train.optimizer", "train.lr", "train.schedule"])]
    return f"{_joined(budgets)} per run, batch {batches or 'unknown'} ({_joined(recipes)})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _data_text(table: pd.DataFrame) -> str:
    sizes = [f"{int(t)} train / {int(v)} val / {int(te)} test images" for t, v, te in
             _combos(table, ["provenance.train_size", "provenance.val_size", "provenance.test_size"]) if t is not None]
    return f"{_joined(_unique(table, 'provenance.data_description'))}; {_joined(sizes)}"


def skipped_line(skipped: Sequence[str]) -> list[str]:
    """The header line counting unreadable files in ``runs/`` (none: no line)."""
    if not skipped:
        return []
    names = ", ".join(Path(p).name for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
    return [f"- Skipped: {_plural(len(skipped), 'unreadable file')} in runs/ (corrupt JSON or not a run record: "
            f"{names}); runs without a readable record count as not run"]


def misnamed_line(misnamed: Sequence[str]) -> list[str]:
    """The header line naming record files left out as copies (none: no line)."""
    if not misnamed:
        return []
    names = ", ".join(Path(p).name for p in misnamed[:5]) + (", ..." if len(misnamed) > 5 else "")
    return [f"- Ignored: {_plural(len(misnamed), 'record file')} in runs/ not named <run_id>.json "
            f"(a copy or a renamed record; never counted): {names}"]


def header_lines(table: pd.DataFrame, manifest: Mapping[str, Any], skipped: Sequence[str] = (),
                 misnamed: Sequence[str] = ()) -> list[str]:
    """What the numbers came from (DESIGN.md: data, budget, hardware, software, seeds)."""
    ran = table[table["status"] != "missing"]
    counts = _status_counts(table)
    software = [f"torch {t}, python {p}, CUDA build {c or 'none'}"
                for t, p, c in _combos(ran, ["provenance.torch", "provenance.python", "provenance.cuda"])]
    seeds = manifest.get("seeds", [])
    return [
        f"# Ablation: {manifest['grid']}",
        "",
        *([manifest["description"], ""] if manifest.get("description") else []),
        f"- Grid file: `{manifest.get('source', '?')}`",
        f"- Data: {_data_text(ran)}",
        f"- Budget: {_budget_text(ran)}",
        f"- Seeds: {len(seeds)} per cell ({', '.join(map(str, seeds))})",
        f"- Hardware: {_joined(_unique(ran, 'provenance.device_name'))}",
        f"- Software: {_joined(software)}; git {_joined(_unique(ran, 'provenance.git_commit'))}",
        f"- Runs: {len(table)} in the grid: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
        *skipped_line(skipped),
        *misnamed_line(misnamed),
        "- Numbers are final-epoch values (not best-epoch), mean ± std [95% t-interval] over completed seeds. "
        "Test error: the test set; val error: the validation split carved from the training set; train error: "
        "running error on the augmented training batches of the last epoch (as in He et al. 2015, Fig. 6). "
        "Diverged runs are counted in `runs`, not averaged.",
    ]


# ------------------------------------------------------------------------------- verdicts

def trend_word(diff: Mapping[str, float], up: str, down: str, flat: str) -> str:
    """``up`` / ``down`` when the 95% interval excludes 0, else ``flat`` (no interval: by sign only)."""
    low, high, value = diff["ci_low"], diff["ci_high"], diff["diff"]
    if not np.isfinite(value):
        return flat
    if not (np.isfinite(low) and np.isfinite(high)):
        return up if value > 0 else down if value < 0 else flat
    if low > 0:
        return up
    if high < 0:
        return down
    return flat


def diff_text(diff: Mapping[str, float], n_a: int, n_b: int) -> str:
    """``+2.31 points (95% CI +1.10 to +3.52; 3 vs 3 seeds)``, or labelled single-seed."""
    if not np.isfinite(diff["ci_low"]):
        return f"{diff['diff']:+.2f} points (single-seed numbers, {n_b} vs {n_a} runs: no interval)"
    return f"{diff['diff']:+.2f} points (95% CI {diff['ci_low']:+.2f} to {diff['ci_high']:+.2f}; {n_b} vs {n_a} seeds)"


def _excluded(frame: pd.DataFrame) -> str:
    diverged = int((frame["status"] == "diverged").sum())
    return f"; {diverged} diverged run(s) not averaged" if diverged else ""


DEPTH_WORDS = {"up": "rises with depth", "down": "falls with depth", "flat": "shows no clear change with depth"}
SINGLE_SEED_WORDS = {"up": "is higher at depth {deep}", "down": "is lower at depth {deep}", "flat": "is unchanged at depth {deep}"}
FAMILY_WORDS = {"up": "higher for residual", "down": "lower for residual", "flat": "no clear difference"}


def depth_verdict(table: pd.DataFrame, family: str, metric: str) -> str | None:
    """``plain: train error rises with depth, 56 vs 20: +x.xx points (95% CI a to b; ...)``.

    The word follows the sign only when the 95% interval of the difference excludes 0; with a
    single seed on either side there is no interval and the sentence says so.
    """
    runs = table[table["family"] == family]
    depths = sorted(runs["depth"].dropna().unique())
    if len(depths) < 2:
        return None
    shallow, deep = int(depths[0]), int(depths[-1])
    compared = runs[runs["depth"].isin([shallow, deep])]
    a, b = _values(runs[runs["depth"] == shallow], metric), _values(runs[runs["depth"] == deep], metric)
    name = metric.replace("_", " ")
    if not a or not b:
        return f"{family}: {name}: {deep} vs {shallow}: no completed runs to compare{_excluded(compared)}."
    diff = difference_interval(a, b)
    single = not np.isfinite(diff["ci_low"])
    trend = trend_word(diff, "up", "down", "flat")
    word = SINGLE_SEED_WORDS[trend].format(deep=deep) + " in a single-seed comparison" if single else DEPTH_WORDS[trend]
    return (f"{family}: {name} {word}, {deep} vs {shallow}: {diff_text(diff, len(a), len(b))}"
            f"{_paper_note(family, trend, single)}{_excluded(compared)}.")


def _paper_note(family: str, trend: str, single: bool) -> str:
    """Whether a clear trend agrees with He et al. 2015 (plain worse with depth, ResNet better)."""
    if single or trend == "flat" or family not in PAPER_TREND:
        return ""
    agrees = (trend == "up") == (PAPER_TREND[family] > 0)
    return " — as in He et al. 2015" if agrees else " — unlike He et al. 2015"


def family_verdict(table: pd.DataFrame, depth: int, metric: str) -> str | None:
    """``residual vs plain at depth 56: test error lower for residual by ... (95% CI ...)``."""
    at = table[table["depth"] == depth]
    plain, residual = _values(at[at["family"] == "plain"], metric), _values(at[at["family"] == "residual"], metric)
    if not plain or not residual:
        return None
    diff = difference_interval(plain, residual)  # residual - plain
    word = FAMILY_WORDS[trend_word(diff, "up", "down", "flat")]
    if not np.isfinite(diff["ci_low"]):
        word += " (single seed)"
    return (f"residual vs plain at depth {int(depth)}: {metric.replace('_', ' ')} {word}, "
            f"residual − plain = {diff_text(diff, len(plain), len(residual))}{_excluded(at)}.")


def degradation_verdicts(table: pd.DataFrame) -> list[str]:
    """Data-driven sentences: each family's trend with depth, then residual vs plain per depth."""
    sentences = []
    for family in ("plain", "residual"):
        for metric in ("train_error", "test_error"):
            sentence = depth_verdict(table, family, metric)
            if sentence:
                sentences.append(sentence)
    for depth in sorted(table["depth"].dropna().unique()):
        for metric in ("train_error", "test_error"):
            sentence = family_verdict(table, depth, metric)
            if sentence:
                sentences.append(sentence)
    return sentences


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
                row["plain, reproduction"] = f"{ref[0]:.2f} ± {ref[1]:.2f}" if ref else "—"
        rows.append(row)
    return pd.DataFrame(rows)


def _ref(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "—"


# --------------------------------------------------------------------------------- figures

def _curve_frame(histories: pd.DataFrame, table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Per-epoch train/test error of the grid's completed runs in long form (split = train|test)."""
    done = table.loc[table["status"] == "completed", ["run_id", *keys]]
    if histories.empty or done.empty:
        return pd.DataFrame(columns=["run_id", *keys, "epoch", "iteration", "split", "error"])
    merged = histories.merge(done, on="run_id")
    long = merged.melt(id_vars=["run_id", *keys, "epoch", "iteration"], value_vars=["train_error", "test_error"],
                       var_name="split", value_name="error")
    long["split"] = long["split"].str.replace("_error", "")
    return long


def x_axis(table: pd.DataFrame) -> str:
    """Curves run over iterations when every run's budget is in iterations (as in Fig. 6), else epochs."""
    column = table.get("train.iterations")
    if column is not None and column.notna().all() and len(column):
        return "iteration"
    return "epoch"


def _panels(data: pd.DataFrame, panel: str | None) -> list[Any]:
    if panel is None or data.empty:
        return [None]
    present = list(dict.fromkeys(data[panel]))
    order = ["plain", "residual"] if panel == "family" else sorted(present, key=str)
    return [p for p in order if p in present]


def plot_learning_curves(histories: pd.DataFrame, table: pd.DataFrame, hue: str, panel: str | None = None) -> Figure:
    """Fig.-6 style: train error dashed, test error solid, one line per ``hue``, mean over seeds."""
    data = _curve_frame(histories, table, [hue] + ([panel] if panel else []))
    panels, x = _panels(data, panel), x_axis(table)
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, value in zip(axes, panels):
        part = data if value is None else data[data[panel] == value]
        if not part.empty:
            sns.lineplot(data=part, x=x, y="error", hue=hue, style="split", style_order=["train", "test"],
                         dashes={"train": (4, 2), "test": ""}, errorbar=None, palette="viridis", ax=ax,
                         markers=part[x].nunique() <= 12,  # so that a 1-epoch run still shows as a dot
                         legend="full" if ax is axes[-1] else False)
        title = "" if value is None else (str(value) if panel == "family" else f"{panel} = {value}")
        ax.set(title=title, xlabel=x, ylabel="error (%)")
    fig.suptitle("Train error (dashed) and test error (solid), mean over completed seeds")
    return fig


def _interval_bars(stats: pd.DataFrame, metric: str) -> np.ndarray:
    """(2, N) distances from the mean to the 95% interval ends; 0 where there is no interval (1 seed)."""
    mean = stats[f"{metric}_mean"].to_numpy(float)
    low, high = stats[f"{metric}_ci_low"].to_numpy(float), stats[f"{metric}_ci_high"].to_numpy(float)
    return np.nan_to_num(np.vstack([mean - low, high - mean]))


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
            ax.errorbar(part["depth"], part[f"{metric}_mean"], yerr=_interval_bars(part, metric), marker="o", capsize=4,
                        color=palette.get(family), label=family)
        if metric == "test_error":
            depths = [d for d in HE2015_TABLE6 if d in set(stats["depth"])]
            ax.plot(depths, [HE2015_TABLE6[d] for d in depths], "kx", markersize=9, label="ResNet, He et al. 2015")
        ax.set(xlabel="depth (weighted layers)", ylabel=METRIC_LABELS[metric], title=f"final {METRIC_LABELS[metric]}")
        ax.set_xticks(sorted(stats["depth"].unique()))
        ax.legend()
    fig.suptitle("Final epoch, mean over completed seeds, bars: 95% t-interval (none for a single seed)")
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
    fig.suptitle(f"Per-stage gradient norm (mean over the epoch's steps, {which}; mean over seeds)")
    return fig


def plot_cell_errors(summary: pd.DataFrame) -> Figure:
    """Final test error per cell: mean with 95% interval bars; cells without a number are labelled."""
    rows = summary.reset_index(drop=True)
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(7.5, 1.0 + 0.45 * len(rows)), layout="constrained")
        ax = fig.subplots()
    y = np.arange(len(rows))
    has = rows["test_error_n"] > 0
    ax.errorbar(rows.loc[has, "test_error_mean"], y[has], xerr=_interval_bars(rows[has], "test_error"), fmt="o", capsize=4)
    left = np.nanmin(rows["test_error_mean"]) if has.any() else 0.0
    for i, row in rows.iterrows():
        if not row["test_error_n"]:
            ax.annotate(status_text(row), (left, i), va="center", color="tab:red")
    ax.set_yticks(y, rows["cell"])
    ax.invert_yaxis()
    ax.set(xlabel=METRIC_LABELS["test_error"], title="Final test error per cell (bars: 95% t-interval)")
    return fig


# ---------------------------------------------------------------------------------- report

PAPER_NOTE = (
    "He et al. trained 64k iterations (about 182 epochs of 45k images) with the paper recipe; the plain "
    "reference is one reproduction with that recipe. Numbers from a shorter budget (see Budget above) "
    "are not expected to match them, only the direction of the effects."
)
CAPTIONS = {
    "test_error_by_cell": "Final test error per cell: mean over completed seeds, bars a 95% t-interval.",
    "curves": "Train error (dashed) and test error (solid) per epoch, mean over completed seeds (He et al. Fig. 6).",
    "final_vs_depth": "Final train and test error vs depth; crosses: He et al. 2015 Table 6 (ResNets).",
    "grad_norms": "L2 norm of each stage's gradient, mean over each epoch's steps, averaged over all epochs, "
                  "mean over seeds (log scale).",
}

@dataclass
class Report:
    """Everything a grid's report consists of; :func:`write_report` puts it on disk."""

    summary: pd.DataFrame
    markdown: str
    figures: dict[str, Figure] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # unreadable files in runs/ (counted in the header)
    misnamed: list[str] = field(default_factory=list)  # record copies in runs/ (named in the header, not counted)


def _section(title: str, body: str) -> str:
    return f"\n## {title}\n\n{body}\n"


def build_report(runs: pd.DataFrame, histories: pd.DataFrame, manifest: Mapping[str, Any]) -> Report:
    """Tables, verdicts and figures of one grid from the result store's frames and its manifest."""
    table = grid_table(runs, manifest)
    axes = list(manifest["axes"])
    summary = summarize_cells(table, axes)
    skipped, misnamed = list(runs.attrs.get("skipped", [])), list(runs.attrs.get("misnamed", []))
    parts = ["\n".join(header_lines(table, manifest, skipped, misnamed)),
             _section("Cells", markdown_table(display_table(summary, axes)))]
    figures = {"test_error_by_cell": plot_cell_errors(summary)}
    if manifest.get("report") == "degradation" and "family" in table:
        parts.append(_section("Compared with He et al. 2015 (test error %, CIFAR-10)",
                              markdown_table(paper_comparison(table)) + "\n\n" + PAPER_NOTE))
        verdicts = degradation_verdicts(table)
        parts.append(_section("Verdicts (computed from the runs above)", "\n".join(f"- {v}" for v in verdicts) or "- none yet"))
        figures["curves"] = plot_learning_curves(histories, table, hue="depth", panel="family")
        figures["final_vs_depth"] = plot_final_vs_depth(table)
        figures["grad_norms"] = plot_grad_norms(histories, table, epochs="all")
    else:
        figures["curves"] = plot_learning_curves(histories, table, hue="cell")
    parts.append(_section("Figures", "\n\n".join(f"![{name}]({name}.png)\n\n{CAPTIONS[name]}" for name in figures)))
    return Report(summary=summary, markdown="\n".join(parts), figures=figures, skipped=skipped, misnamed=misnamed)


def write_report(report: Report, out_dir: str | Path, dpi: int = 120) -> list[Path]:
    """summary.csv, report.md and one PNG per figure under ``out_dir``; returns the paths.

    Every file is written atomically (temp file, then rename): a kill leaves the old file or the
    new one, never half of one.
    """
    out = Path(out_dir)
    paths = [out / "summary.csv", out / "report.md"]
    atomic_write_text(paths[0], report.summary.to_csv(index=False))
    atomic_write_text(paths[1], report.markdown + "\n")
    for name, figure in report.figures.items():
        paths.append(out / f"{name}.png")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi)
        atomic_write_bytes(paths[-1], buffer.getvalue())
    return paths


def skipped_warning(report: Report, results_dir: str | Path) -> str | None:
    """The command lines' warning line for unreadable files in ``runs/`` (None when there are none)."""
    if not report.skipped:
        return None
    return (f"warning: skipped {_plural(len(report.skipped), 'unreadable file')} in {Path(results_dir) / 'runs'} "
            "(corrupt JSON or not a run record; counted in report.md)")


def build_grid_report(results_dir: str | Path, grid_name: str) -> Report:
    """A grid's report from its manifest and the run records (no training, no files written)."""
    from resnet_core.grid import load_manifest
    from resnet_core.store import load_histories, load_runs

    manifest = load_manifest(results_dir, grid_name)
    return build_report(load_runs(results_dir), load_histories(results_dir), manifest)


def write_grid_report(results_dir: str | Path, grid_name: str) -> list[Path]:
    """Rebuild a grid's report from its manifest and the run records (no training)."""
    from resnet_core.grid import report_dir

    return write_report(build_grid_report(results_dir, grid_name), report_dir(results_dir, grid_name))
