"""Building blocks of grid reports: the run table, per-cell summaries, header, generic figures.

Pure functions (docs/DESIGN.md, "Reports"): a DataFrame in, a DataFrame, a string or a matplotlib
Figure out; report kinds (resnet_core/degradation.py) build on them and resnet_core/grid/report.py
assembles and writes them. Figures are built on ``Figure`` objects (no
pyplot state), so they render with the Agg canvas anywhere, also without a display.

Rules of evidence kept here: numbers are final-epoch values (never best-epoch); a cell's number is
a mean over its completed seeds with std and a 95% t-interval (``stats.mean_interval``); a single
seed is labelled as such; diverged runs are counted and shown, never averaged in or dropped.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from resnet_core.stats import mean_interval

METRICS = ("test_error", "train_error", "val_error")
METRIC_LABELS = {"test_error": "test error (%)", "train_error": "train error (%)", "val_error": "val error (%)"}
STATUS_COLUMNS = ("completed", "diverged", "failed", "stopped", "missing")


def shown_path(path: str) -> str:
    """A path as a report may print it: relative to the working directory, never absolute
    (an absolute path names the machine that made the report, not the data or the grid)."""
    return os.path.relpath(path) if os.path.isabs(path) else path


# ---------------------------------------------------------------------------- the run table

def grid_table(runs: pd.DataFrame, manifest: Mapping[str, Any]) -> pd.DataFrame:
    """One row per run of the grid: the manifest's cell columns joined with its record, if any.

    Runs of the grid without a record get status ``missing``; records of other grids are ignored.
    A run id listed twice (in the manifest or the records) is one row, its first: every count and
    mean downstream is over distinct runs, never over rows. Adds ``family`` (residual | plain) and
    ``depth`` from the record's model config.
    """
    cells = pd.DataFrame(manifest["runs"])
    if runs.empty or "run_id" not in runs.columns:
        runs = pd.DataFrame({"run_id": pd.Series(dtype=str), "status": pd.Series(dtype=str)})
    overlap = [c for c in cells.columns if c in runs.columns and c != "run_id"]
    table = cells.merge(runs.drop(columns=overlap), on="run_id", how="left")
    table = table.drop_duplicates("run_id", ignore_index=True)
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


def markdown_table(frame: pd.DataFrame, floatfmt: str | None = None) -> str:
    """A GitHub markdown table (pandas' to_markdown needs ``tabulate``, which we do not depend on).

    ``floatfmt`` (a format spec such as ``".2f"``) formats every float; without it a float prints as
    it is, a whole one as an integer. Bools print as ``true``/``false``, as ``--set`` takes them.
    """
    def cell(value: Any) -> str:
        text = format(value, floatfmt) if floatfmt and isinstance(value, float) and not math.isnan(value) else None
        return (text or _plain(value)).replace("|", "\\|").replace("\n", " ")

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


def _length_text(table: pd.DataFrame) -> str:
    lengths = [plural(int(iterations), "iteration") if iterations is not None else plural(int(epochs), "epoch")
               for epochs, iterations in _combos(table, ["train.epochs", "train.iterations"])]
    iterations = sorted({int(i) for i in _unique(table, "final.iterations")})
    done = f" ({', '.join(f'{i:,}' for i in iterations)} iterations trained)" if iterations else ""
    return f"{_joined(lengths)} per run{done}"


def _budget_text(table: pd.DataFrame, manifest: Mapping[str, Any]) -> str:
    budget = manifest.get("budget") or {}
    named = f"{budget['name']} ({budget.get('note', '')}); " if budget.get("name") else ""
    return f"{named}{_length_text(table)}"


def _recipe_text(table: pd.DataFrame) -> str:
    columns = ["train.optimizer", "train.lr", "train.momentum", "train.nesterov", "train.weight_decay",
               "train.batch_size", "train.label_smoothing"]
    recipes = [f"{o} lr {lr:g}, momentum {m:g}{' (Nesterov)' if n else ''}, weight decay {wd:g}, batch {int(b)}"
               + (f", label smoothing {ls:g}" if ls else "")
               for o, lr, m, n, wd, b, ls in _combos(table, columns)]
    return _joined(recipes)


def _schedule_text(table: pd.DataFrame) -> str:
    columns = ["train.schedule", "train.milestones", "train.gamma", "train.warmup_iterations", "train.warmup_lr",
               "train.warmup_fraction"]
    texts = []
    for schedule, milestones, gamma, warm_it, warm_lr, warm_frac in _combos(table, columns):
        text = {"step": f"step: lr x{gamma:g} at {', '.join(f'{m:.0%}' for m in (milestones or []))} of the run",
                "onecycle": "one-cycle (linear ramp from lr/25 over the first 30%, then cosine annealing)",
                "cosine": "cosine annealing", "constant": "constant lr"}.get(schedule, str(schedule))
        if warm_it:
            text += f"; warm-up: lr {warm_lr:g} for the first {int(warm_it)} iterations (He et al. 2015 §4.2)"
        elif warm_frac:
            text += f"; warm-up: linear ramp over the first {warm_frac:.0%} of iterations (Goyal et al. 2017)"
        else:
            text += "; no separate warm-up"
        texts.append(text)
    return _joined(texts)


def _precision_text(table: pd.DataFrame) -> str:
    combos = _combos(table, ["provenance.amp", "provenance.grad_scaler", "provenance.tf32_conv", "provenance.channels_last"])
    if not combos:  # records written before the precision facts: autocast dtype and memory format only
        combos = [(amp, None, None, cl) for amp, cl in _combos(table, ["provenance.amp", "provenance.channels_last"])]
    texts = [f"{'autocast ' + amp if amp and amp != 'fp32' else 'fp32'}"
             f"{' with a gradient scaler' if scaler else ''}{', TF32 convolutions' if tf32 else ''}, "
             f"{'channels_last' if cl else 'contiguous (NCHW)'} memory format" for amp, scaler, tf32, cl in combos]
    return _joined(list(dict.fromkeys(texts)))  # False and a missing fact read the same: say it once


def plural(n: int, word: str) -> str:
    """``n`` and ``word`` in the number ``n`` asks for: "1 seed", "3 seeds", "1,200 runs"."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def data_text(table: pd.DataFrame) -> str:
    """The data as the user named it (never an absolute path), its content fingerprint and split sizes."""
    names = _unique(table, "provenance.data_name") or [Path(str(s)).name for s in _unique(table, "data.source")]
    sizes = [f"{int(t)} train / {int(v)} val / {int(te)} test images" for t, v, te in
             _combos(table, ["provenance.train_size", "provenance.val_size", "provenance.test_size"]) if t is not None]
    fingerprints = _unique(table, "provenance.data_fingerprint")
    return (f"{_joined(_unique(table, 'provenance.data_description'))} (`{_joined(names)}`, "
            f"fingerprint {_joined(fingerprints)}); {_joined(sizes)}")


def code_text(table: pd.DataFrame) -> str:
    """The commit(s) that trained the runs; a dirty tree is said so with the hash of its diff."""
    texts = []
    for commit, dirty, diff in _combos(table, ["provenance.git_commit", "provenance.git_dirty",
                                               "provenance.git_diff_sha256"]) or [(c, None, None) for c in
                                                                                  _unique(table, "provenance.git_commit")]:
        commit = str(commit).removesuffix("-dirty")
        texts.append(f"git {commit} with uncommitted changes (diff sha256 {diff})" if dirty
                     else f"git {commit} (clean tree)" if dirty is False else f"git {commit}")
    return _joined(texts)


def mixed_code_lines(table: pd.DataFrame) -> list[str]:
    """A warning when the runs of one report come from commits whose training code differs (or may)."""
    commits = {str(c).removesuffix("-dirty") for c in _unique(table, "provenance.git_commit")}
    hashes = _unique(table, "provenance.training_code_sha256")
    if len(hashes) > 1:
        return [f"- **Warning**: these runs were trained by {len(hashes)} versions of the training code (hashes "
                f"{', '.join(map(str, hashes))}), so a comparison across them mixes code changes with the effect: "
                "retrain at one commit to compare them"]
    untraced = "provenance.training_code_sha256" not in table.columns or table["provenance.training_code_sha256"].isna().any()
    if len(commits) > 1 and untraced:
        return [f"- **Warning**: these runs come from {len(commits)} commits and some records predate the training-code "
                "hash, so whether their training differs is unknown: compare runs of one commit, or retrain at one"]
    return []


def _file_names(paths: Sequence[str], most: int = 5) -> str:
    """The first ``most`` file names of ``paths``, then "..." if there are more."""
    return ", ".join(Path(p).name for p in paths[:most]) + (", ..." if len(paths) > most else "")


def skipped_line(skipped: Sequence[str]) -> list[str]:
    """The header line counting unreadable files in ``runs/`` (none: no line)."""
    if not skipped:
        return []
    return [f"- Skipped: {plural(len(skipped), 'unreadable file')} in runs/ (corrupt JSON or not a run record: "
            f"{_file_names(skipped)}); runs without a readable record count as not run"]


def misnamed_line(misnamed: Sequence[str]) -> list[str]:
    """The header line naming record files left out as copies (none: no line)."""
    if not misnamed:
        return []
    return [f"- Ignored: {plural(len(misnamed), 'record file')} in runs/ not named <run_id>.json "
            f"(a copy or a renamed record; never counted): {_file_names(misnamed)}"]


def built_by_lines(code: Mapping[str, Any] | None) -> list[str]:
    """The header line naming the code that wrote the report (it may be newer than the runs' code)."""
    if not code:
        return []
    state = f"uncommitted changes, diff sha256 {code.get('diff_sha256')}" if code.get("dirty") else "clean tree"
    return [f"- Report built by: git {code.get('commit')} ({state})"]


def grid_line(manifest: Mapping[str, Any]) -> str:
    """The grid by name, file and content hash (a path moves between machines and installs)."""
    if "grid_file" not in manifest:  # a manifest written before grids were named by their hash
        return f"- Grid file: `{shown_path(str(manifest.get('source', '?')))}`"
    where = "built-in grid file" if manifest.get("builtin") else "grid file"
    return f"- Grid: `{manifest['grid']}` ({where} {manifest['grid_file']}, sha256 {manifest.get('grid_sha256') or 'unknown'})"


def header_lines(table: pd.DataFrame, manifest: Mapping[str, Any], skipped: Sequence[str] = (),
                 built_by: Mapping[str, Any] | None = None, misnamed: Sequence[str] = ()) -> list[str]:
    """What the numbers came from (docs/DESIGN.md: data, budget, hardware, software, seeds, code)."""
    ran = table[table["status"] != "missing"]
    counts = _status_counts(table)
    software = [f"torch {t}, python {p}, CUDA build {c or 'none'}"
                for t, p, c in _combos(ran, ["provenance.torch", "provenance.python", "provenance.cuda"])]
    seeds = manifest.get("seeds", [])
    return [
        f"# Ablation: {manifest['grid']}",
        "",
        *([manifest["description"], ""] if manifest.get("description") else []),
        grid_line(manifest),
        f"- Data: {data_text(ran)}",
        f"- Budget: {_budget_text(ran, manifest)}",
        f"- Recipe: {_recipe_text(ran)}; schedule {_schedule_text(ran)}",
        f"- Precision: {_precision_text(ran)}",
        f"- Seeds: {len(seeds)} per cell ({', '.join(map(str, seeds))})",
        f"- Hardware: {_joined(_unique(ran, 'provenance.device_name'))}",
        f"- Software: {_joined(software)}",
        f"- Code: {code_text(ran)}",
        *mixed_code_lines(ran),
        *built_by_lines(built_by),
        f"- Runs: {len(table)} in the grid: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
        *skipped_line(skipped),
        *misnamed_line(misnamed),
        "- Numbers are final-epoch values (not best-epoch), mean ± std [95% t-interval] over completed seeds. "
        "Test error: the test set; val error: the validation split carved from the training set; train error: "
        "running error on the augmented training batches of the last epoch (as in He et al. 2015, Fig. 6). "
        "Diverged runs are counted in `runs`, not averaged; fitted verdicts leave them out and, when there are any, "
        "say how the verdict reads with them counted at chance error.",
    ]


# --------------------------------------------------------------------------------- figures

def _curve_frame(histories: pd.DataFrame, table: pd.DataFrame, keys: Sequence[str], held_out: str = "test") -> pd.DataFrame:
    """Per-epoch train and held-out (test or val) error of the grid's completed runs in long form
    (split = train|test or train|val); epochs that did not measure the held-out set have no point."""
    done = table.loc[table["status"] == "completed", ["run_id", *keys]]
    if histories.empty or done.empty:
        return pd.DataFrame(columns=["run_id", *keys, "epoch", "iteration", "split", "error"])
    merged = histories.merge(done, on="run_id").reindex(columns=["run_id", *keys, "epoch", "iteration", "train_error",
                                                                 f"{held_out}_error"])
    long = merged.melt(id_vars=["run_id", *keys, "epoch", "iteration"], value_vars=["train_error", f"{held_out}_error"],
                       var_name="split", value_name="error").dropna(subset=["error"])
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


HELD_OUT_NAMES = {"test": "test", "val": "validation"}


def plot_learning_curves(histories: pd.DataFrame, table: pd.DataFrame, hue: str, panel: str | None = None,
                         held_out: str = "test") -> Figure:
    """Fig.-6 style: train error dashed, ``held_out`` (test or val) error solid, one line per ``hue``,
    mean over seeds."""
    data = _curve_frame(histories, table, [hue] + ([panel] if panel else []), held_out)
    panels, x = _panels(data, panel), x_axis(table)
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, value in zip(axes, panels):
        part = data if value is None else data[data[panel] == value]
        if not part.empty:
            sns.lineplot(data=part, x=x, y="error", hue=hue, style="split", style_order=["train", held_out],
                         dashes={"train": (4, 2), held_out: ""}, errorbar=None, palette="viridis", ax=ax,
                         markers=part[x].nunique() <= 12,  # so that a 1-epoch run still shows as a dot
                         legend="full" if ax is axes[-1] else False)
        title = "" if value is None else (str(value) if panel == "family" else f"{panel} = {value}")
        ax.set(title=title, xlabel=x, ylabel="error (%)")
    fig.suptitle(f"Train error (dashed) and {HELD_OUT_NAMES[held_out]} error (solid), mean over completed seeds")
    return fig


def _interval_bars(stats: pd.DataFrame, metric: str) -> np.ndarray:
    """(2, N) distances from the mean to the 95% interval ends, the ends clipped to the possible 0-100%
    (a 2-seed t-interval can reach past them); 0 where there is no interval (1 seed)."""
    mean = stats[f"{metric}_mean"].to_numpy(float)
    low = np.clip(stats[f"{metric}_ci_low"].to_numpy(float), 0.0, 100.0)
    high = np.clip(stats[f"{metric}_ci_high"].to_numpy(float), 0.0, 100.0)
    return np.nan_to_num(np.vstack([mean - low, high - mean]))


def n_label(counts: Sequence[int]) -> str:
    """``n = 3`` or ``n = 2-3``: the seeds behind a plotted mean."""
    low, high = int(min(counts)), int(max(counts))
    return f"n = {low}" if low == high else f"n = {low}-{high}"


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
    ax.set_yticks(y, [f"{cell} ({n_label([n])})" for cell, n in zip(rows["cell"], rows["test_error_n"])])
    ax.invert_yaxis()
    ax.set(xlabel=METRIC_LABELS["test_error"], title="Final test error per cell (bars: 95% t-interval, clipped to 0-100)")
    return fig
