"""Tables and text of Optuna studies: Study or DataFrame in, DataFrame or text out.

No file I/O here (docs/DESIGN.md: the drivers decide where files go). Every number says which split
it comes from: trials are chosen on the validation split; test error is shown for the chosen runs
only, labelled single-seed, and never used to choose (docs/DESIGN.md, rules of evidence).
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from typing import Any, Iterable, Mapping

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from resnet_core.config import RunConfig, field_index
from resnet_core.recipes import recipe
from resnet_core.models import resolve_model
from resnet_core.reports import markdown_table, plural
from resnet_core.stats import difference_interval, mean_interval
from resnet_core.study.common import FINISHED, is_diverged
from resnet_core.study.importance import importance_lines, rung_importances
from resnet_core.study.outcome import final_lines
from resnet_core.study.rungs import diverged_lines, rung_lines, rung_values, state_text


def _setting_name(dotted: str) -> str:
    """The shortest name ``--set`` accepts for a dotted field (bare when unambiguous)."""
    bare = dotted.split(".", 1)[-1]
    return bare if field_index().get(bare) == dotted else dotted


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):  # an empty list is "()", which --set reads back as empty
        return ",".join(format_value(v) for v in value) if value else "()"
    return str(value)


def config_differences(run: RunConfig, base: RunConfig) -> dict[str, Any]:
    """``{dotted field: value}`` where ``run`` differs from ``base`` in model, train and data.

    The budget fields and data fields that have flags of their own are left out.
    """
    skip = {"train.epochs", "train.iterations", "data.source", "data.subset", "data.val_size",
            "data.cache_dir", "data.root", "data.download"}
    diffs: dict[str, Any] = {}
    for section in ("model", "train", "data"):
        mine, theirs = getattr(run, section), getattr(base, section)
        for f in dataclasses.fields(mine):
            dotted = f"{section}.{f.name}"
            if dotted not in skip and getattr(mine, f.name) != getattr(theirs, f.name):
                diffs[dotted] = getattr(mine, f.name)
    return diffs


def reproduce_command(run: RunConfig, model: str, recipe_name: str) -> str:
    """The ``python -m resnet_core.train`` command that trains exactly ``run`` (same run id)."""
    base = RunConfig(model=resolve_model(model), train=recipe(recipe_name))
    parts = ["python", "-m", "resnet_core.train", "--model", model, "--recipe", recipe_name]
    if run.train.epochs is not None:
        parts += ["--epochs", str(run.train.epochs)]
    else:
        parts += ["--iterations", str(run.train.iterations)]
    parts += ["--data", run.data.source]
    if run.data.subset is not None:
        parts += ["--subset", str(run.data.subset)]
    parts += ["--val-size", str(run.data.val_size), "--seed", str(run.seed)]
    for dotted, value in config_differences(run, base).items():
        parts += ["--set", f"{_setting_name(dotted)}={format_value(value)}"]
    return shlex.join(parts)


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state name, every state listed (zeros included)."""
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def pruning_savings(study: optuna.Study, budget_epochs: int) -> dict[str, float]:
    """What the pruner saved: pruned trials and the epochs they did not train (a diverged trial, also
    PRUNED, stopped of itself: not counted)."""
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if not is_diverged(t)]
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    trained = [max(t.intermediate_values, default=0) for t in pruned]
    saved = sum(max(0, budget_epochs - e) for e in trained)
    full = budget_epochs * len(finished)
    return {
        "pruned": len(pruned),
        "epochs_not_trained": int(saved),
        "epochs_full_budget": int(full),
        "fraction_saved": saved / full if full else math.nan,
    }


def trials_table(study: optuna.Study, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per trial (``study.trials_dataframe``) joined with its run record via ``run_id``.

    Added columns: ``run_status``, ``final_val_error``, ``final_test_error``, ``epochs_done``.
    A PRUNED trial's ``value`` is its last intermediate value: filter on ``state``.
    """
    table = study.trials_dataframe(multi_index=False)
    if table.empty:
        return table
    if "user_attrs_run_id" not in table:
        table["user_attrs_run_id"] = None
    if runs is not None and not runs.empty:
        columns = ["status", "final.val_error", "final.test_error", "epochs_done"]
        picked = runs.set_index("run_id").reindex(columns=columns)
        picked.columns = ["run_status", "final_val_error", "final_test_error", "epochs_done"]
        table = table.join(picked, on="user_attrs_run_id")
    return table


def best_summary(study: optuna.Study, command: str | None = None) -> dict[str, Any]:
    """The best COMPLETE trial: number, params, validation error and the command to reproduce it."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {"study": study.study_name, "best": None, "reason": "no COMPLETE trial yet"}
    best = study.best_trial
    return {
        "study": study.study_name,
        "objective": "validation error (%) of the final epoch, minimised",
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "run_id": best.user_attrs.get("run_id"),
        "command": command,
    }


def top_trials(study: optuna.Study, n: int = 5) -> list[optuna.trial.FrozenTrial]:
    """The ``n`` COMPLETE trials with the lowest validation error."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: t.value)[:n]


def run_labels(trials: Iterable[optuna.trial.FrozenTrial]) -> dict[str, str]:
    """run_id -> legend text; trials that share a run (a repeated suggestion) share one label."""
    numbers: dict[str, list[str]] = {}
    values: dict[str, float] = {}
    for trial in trials:
        if "run_id" in trial.user_attrs:
            numbers.setdefault(trial.user_attrs["run_id"], []).append(str(trial.number))
            values[trial.user_attrs["run_id"]] = trial.value
    return {rid: f"trial{'s' if len(n) > 1 else ''} {', '.join(n)} ({values[rid]:.2f}%)" for rid, n in numbers.items()}


def failed_table(study: optuna.Study) -> pd.DataFrame:
    """FAIL trials with their reason (user attr ``fail_reason``). A trial failed by the storage's
    heartbeat check (its worker died on another host) cannot carry a reason of its own; its retry
    names it (user attrs ``retried_from`` and ``retry_reason``), so the reason is taken from there.
    """
    trials = study.get_trials(deepcopy=False)
    retries = {t.user_attrs["retried_from"]: t for t in trials if "retried_from" in t.user_attrs}

    def reason(trial: optuna.trial.FrozenTrial) -> str:
        if "fail_reason" in trial.user_attrs:
            return trial.user_attrs["fail_reason"]
        retry = retries.get(trial.number)
        if retry is not None:
            return f"{retry.user_attrs.get('retry_reason', 'worker lost')}; retried as trial {retry.number}"
        return "unknown"

    rows = [{"number": t.number, "fail_reason": reason(t), **t.params} for t in trials if t.state == TrialState.FAIL]
    return pd.DataFrame(rows, columns=["number", "fail_reason"] if not rows else None)


def compare_table(final: pd.DataFrame, field: str, order: Iterable | None = None) -> pd.DataFrame:
    """Final-seed TEST error per value of ``field``: mean, std, 95% t-interval, and the difference
    to the first value with a Welch interval. ``final`` has columns ``value`` and ``test_error``
    (plus ``val_error``), one row per (value, seed) run.
    """
    values = list(order) if order is not None else list(dict.fromkeys(final["value"]))
    groups = {v: final.loc[final["value"] == v] for v in values}
    baseline = groups[values[0]]["test_error"].to_numpy() if values else np.array([])
    rows = []
    for value, group in groups.items():
        summary = mean_interval(group["test_error"].to_numpy())
        diff = difference_interval(baseline, group["test_error"].to_numpy())
        rows.append({
            field: value, "seeds": summary["n"], "test_error_mean": summary["mean"], "test_error_std": summary["std"],
            "test_error_ci_low": summary["ci_low"], "test_error_ci_high": summary["ci_high"],
            "val_error_mean": float(group["val_error"].mean()) if "val_error" in group else math.nan,
            f"diff_vs_{format_value(values[0])}": diff["diff"], "diff_ci_low": diff["ci_low"],
            "diff_ci_high": diff["ci_high"],
        })
    return pd.DataFrame(rows)


def study_markdown(study: optuna.Study, context: Mapping[str, Any], runs: pd.DataFrame | None,
                   figures: Iterable[str] = (), notes: Iterable[str] = ()) -> str:
    """report.md of one study. ``context``: the study's user attrs plus ``optuna``/``storage`` (and
    ``importances``, a RungImportances, computed here when absent)."""
    savings = pruning_savings(study, int(context.get("budget_epochs", 0)))
    lines = [f"# Study `{study.study_name}`", "", "| | |", "|---|---|"]
    for key, label in _HEADER_ROWS:
        if context.get(key) not in (None, ""):
            lines.append(f"| {label} | {context[key]} |")
    share = f" ({100 * savings['fraction_saved']:.0f}% of the full budget)." if savings["epochs_full_budget"] else "."
    lines += ["", "## Trials", "", f"Counts by state: {state_text(study)}", "",
              f"Pruner: {plural(savings['pruned'], 'trial')} pruned, {savings['epochs_not_trained']} of "
              f"{plural(savings['epochs_full_budget'], 'epoch')} not trained{share}", ""]
    lines += _best_lines(study, context, runs)
    lines += final_lines(context.get("final"))
    lines += coupling_lines(study, context)
    lines += rung_lines(rung_values(study))
    lines += importance_lines(context.get("importances") or rung_importances(study))
    lines += diverged_lines(study)
    failed = failed_table(study)
    if not failed.empty:
        lines += ["## Failed trials", "", markdown_table(failed[["number", "fail_reason"]], floatfmt=".2f"), ""]
    lines += [f"- {note}" for note in notes]
    lines += ["", *[f"![{name}]({name})" for name in figures]]
    return "\n".join(lines).rstrip() + "\n"


_HEADER_ROWS = (
    ("objective", "objective"), ("data", "data"), ("split", "split"), ("budget", "budget"), ("model", "model"),
    ("space", "search space"), ("sampler", "sampler"), ("pruner", "pruner"), ("hardware", "hardware"),
    ("software", "software"), ("code", "code that ran the trials"), ("built_by", "report built by"),
    ("storage", "storage"), ("compare", "comparison"), ("changes", "search changes"),
)


def _best_lines(study: optuna.Study, context: Mapping[str, Any], runs: pd.DataFrame | None) -> list[str]:
    summary = best_summary(study, context.get("command"))
    if summary.get("best", True) is None:
        return ["## Best trial", "", "No COMPLETE trial yet.", ""]
    lines = ["## Best trial", "",
             f"Trial {summary['trial']}: validation error {summary['value']:.2f}% (final epoch, single seed)."]
    test = _run_value(runs, summary["run_id"], "final.test_error")
    if test is not None:
        lines.append(f"Test error of that run: {test:.2f}% (single seed; reported only, never used to choose).")
    params = pd.DataFrame([{"param": k, "value": v} for k, v in summary["params"].items()])
    lines += ["", markdown_table(params, floatfmt=".4g"), "", "Reproduce:", "", f"    {summary['command']}", ""]
    return lines


def coupling_lines(study: optuna.Study, context: Mapping[str, Any], n: int = 5) -> list[str]:
    """A section naming parameters that move together: under a fixed number of epochs, the batch size
    also sets the number of optimizer steps (under fixed iterations, the number of epochs), so a best
    batch size may be a best step count. Shows the best trials' batch sizes. [] if batch_size is fixed.

    ``context``: ``tuned`` (the space's param names, as trials record them), ``epochs`` or
    ``iterations`` (the trial length) and ``train_size`` (a trial's training images, None if unknown)."""
    name = next((p for p in context.get("tuned", ()) if p.split(".")[-1] == "batch_size"), None)
    if name is None:
        return []
    epochs, iterations, size = context.get("epochs"), context.get("iterations"), context.get("train_size")
    if epochs:
        coupling = (f"Coupled parameters: `batch_size` is tuned under a fixed budget of {plural(epochs, 'epoch')}, so it also "
                    "sets the number of optimizer steps (a smaller batch takes more, smaller steps)"
                    + (f": {size:,} training images // batch size per epoch." if size else "."))
    else:
        coupling = (f"Coupled parameters: `batch_size` is tuned under a fixed budget of {iterations} iterations, "
                    "so it also sets the number of epochs (images seen) a trial trains.")
    rows = []
    for trial in top_trials(study, n):
        batch = trial.params.get(name)
        if batch is None:
            continue
        row = {"trial": trial.number, "val error": trial.value, "batch_size": batch}
        if epochs and size:
            row["steps"] = epochs * max(1, size // int(batch))
        elif iterations and size:
            row["epochs"] = round(iterations * int(batch) / size, 1)
        rows.append(row)
    if not rows:
        return ["## Coupled parameters", "", coupling, ""]
    title = f"Batch sizes of the best {len(rows)} trials:" if len(rows) > 1 else "Batch size of the best trial:"
    return ["## Coupled parameters", "", coupling, "", title, "", markdown_table(pd.DataFrame(rows), floatfmt=".2f"), ""]


def _run_value(runs: pd.DataFrame | None, run_id: str | None, column: str) -> float | None:
    if runs is None or runs.empty or run_id is None or column not in runs:
        return None
    hit = runs.loc[runs["run_id"] == run_id, column]
    return None if hit.empty or pd.isna(hit.iloc[0]) else float(hit.iloc[0])


def compare_markdown(group: str, field: str, studies: list[optuna.Study], values: list[Any],
                     context: Mapping[str, Any], comparison: pd.DataFrame, notes: Iterable[str] = (),
                     figures: Iterable[str] = (), paired: Iterable[str] = ()) -> str:
    """report.md of a --compare group: tuning per value (validation), then final seeds (TEST), then
    ``paired``: the lines of each value's tuned config against its untuned baseline."""
    lines = [f"# Comparison `{group}`: {field}", "",
             f"Each value of `{field}` was tuned on its own (same trial budget, sampler and seed, its own pruner); "
             "the best config of each, chosen by VALIDATION error, was re-trained with new seeds, and only those "
             "re-trainings give the TEST errors below.", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {context[key]} |" for key, label in _HEADER_ROWS if context.get(key) not in (None, "")]
    rows = []
    for study, value in zip(studies, values):
        counts = state_counts(study)
        best = best_summary(study)
        rows.append({field: format_value(value), "COMPLETE": counts["COMPLETE"], "PRUNED": counts["PRUNED"],
                     "FAIL": counts["FAIL"], "best val error": best.get("value", math.nan),
                     "best params": ", ".join(f"{k}={_short(v)}" for k, v in (best.get("params") or {}).items())})
    lines += ["", "## Tuning (validation error, final epoch, one seed per trial)", "",
              markdown_table(pd.DataFrame(rows), floatfmt=".2f"), "",
              "## Best config per value over final seeds (TEST error, %)", "",
              markdown_table(comparison, floatfmt=".2f") if not comparison.empty else "Final seeds not trained yet.", ""]
    lines += [*paired, *[f"- {note}" for note in notes]]
    lines += ["", *[f"![{name}]({name})" for name in figures]]
    return "\n".join(lines).rstrip() + "\n"


def _short(value: Any) -> str:
    return format(value, ".4g") if isinstance(value, float) else format_value(value)
