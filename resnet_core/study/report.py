"""Writing a study's reports (report.md, tables, figures) from the storage and the run records:
the one place in the study package that decides where files go."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
import pandas as pd
from optuna.trial import TrialState

from resnet_core.config import RunConfig, run_config_from_dict
from resnet_core.migrate import with_previous_ids
from resnet_core.provenance import code_state
from resnet_core.reports import built_by_lines, code_text, data_text, plural
from resnet_core.store import (
    atomic_write_bytes, atomic_write_text, check_name, find_record, load_histories, load_runs, misnamed_warning,
    scan_records,
)
from resnet_core.study import figures as sf
from resnet_core.study import tables as sr
from resnet_core.study.final import final_table
from resnet_core.study.importance import RungImportances, rung_importances
from resnet_core.study.outcome import (
    compare_paired_lines, console_lines, final_arms, final_outcome, outdated_final_text,
)
from resnet_core.study.journal import damaged_tail
from resnet_core.study.pruners import describe_pruner
from resnet_core.study.rungs import rung_values
from resnet_core.study.search import describe_sampler, search_history_text
from resnet_core.study.spec import StudySpec, spec_from_study, trial_config
from resnet_core.study.storage import describe_storage, is_rdb_url, open_storage
from resnet_core.study.urls import mask_url


def open_study_or_group(name: str, storage: str) -> tuple[str, list[optuna.Study]]:
    """("study", [study]) or ("compare", [sub-studies in value order]) for ``name``."""
    if not is_rdb_url(storage) and not Path(storage).exists():
        raise FileNotFoundError(f"storage {storage} does not exist (pass --storage or --results)")
    store = open_storage(storage)
    summaries = optuna.get_all_study_summaries(store, include_best_trial=False)
    names = [s.study_name for s in summaries]
    if name in names:
        return "study", [optuna.load_study(study_name=name, storage=store)]
    subs = [s.study_name for s in summaries if s.user_attrs.get("compare_group") == name]
    if not subs:
        raise ValueError(f"no study or --compare group named {name!r} in {mask_url(storage)}: "
                         f"found {', '.join(names) or 'none'}")
    return "compare", [optuna.load_study(study_name=n, storage=store) for n in subs]


def report_context(spec: StudySpec, runs, run_ids: list[str]) -> dict[str, Any]:
    """The header of a report: data, budget, hardware and versions of the runs behind it."""
    mine = runs.loc[runs["run_id"].isin(run_ids)] if not runs.empty else runs
    unique = lambda col: ", ".join(sorted({str(v) for v in mine[col].dropna()})) if col in mine else ""  # noqa: E731
    base = spec.base
    length = plural(base.train.epochs, "epoch") if base.train.epochs else plural(base.train.iterations, "iteration")
    context = {
        "objective": "validation error (%) of the final epoch, minimised (the test set never chooses)",
        "data": data_text(mine) if "provenance.data_fingerprint" in mine else base.data.source,
        "split": f"train {unique('provenance.train_size') or '?'} / validation {unique('provenance.val_size') or base.data.val_size} / test "
                 f"{unique('provenance.test_size') or '?'} (validation carved with split_seed {base.data.split_seed})",
        "budget": f"{spec.budget}: {length}, recipe {spec.recipe} ({plural(spec.budget_epochs, 'epoch')} per full trial)",
        "model": spec.model,  # the space one line a parameter (a table cell breaks lines with <br>)
        "space": "<br>".join(" ".join(line.split()) for line in spec.space.describe_lines(trial_config(spec, {}))),
        "sampler": describe_sampler(spec.sampler, spec.seed),
        "pruner": describe_pruner(*spec.pruner_shape()),
        "hardware": f"{unique('provenance.device_name')}; amp {unique('provenance.amp')}",
        "software": f"optuna {optuna.__version__}, torch {unique('provenance.torch')}, "
                    f"python {unique('provenance.python')}",
        "code": code_text(mine) if "provenance.git_commit" in mine else "",
        "built_by": " ".join(built_by_lines(code_state())).removeprefix("- Report built by: "),
        "storage": describe_storage(spec.storage), "budget_epochs": spec.budget_epochs,
        # for the coupled-parameters section (tables.coupling_lines)
        "tuned": [p.name for p in spec.space.params], "epochs": base.train.epochs,
        "iterations": base.train.iterations, "train_size": _train_size(mine),
    }
    if spec.compare:
        context["compare"] = ", ".join(f"{k} {v}" for k, v in spec.compare)
    return context


def _train_size(runs) -> int | None:
    """Training images of the study's trials (one size: they share the data, subset and split)."""
    sizes = runs["provenance.train_size"].dropna() if "provenance.train_size" in runs else []
    return int(max(sizes)) if len(sizes) else None


def best_command(spec: StudySpec, study: optuna.Study) -> str | None:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return sr.reproduce_command(trial_config(spec, study.best_trial.params), spec.model, spec.recipe)


def final_result(spec: StudySpec, study: optuna.Study) -> dict[str, Any] | None:
    """The final stage of a study (None if it has not run): the tuned config's and the baseline's
    test errors with 95% intervals, their paired difference and verdict, the runs that did not
    complete, and the commands that train the first seed of each."""
    arms = final_arms(study, spec.results)
    if arms is None:
        return None
    outcome = final_outcome(arms)
    chosen = next(runs for trial, runs in arms.candidates if trial == outcome["trial"])
    config, val_size = _first_config(spec.results, chosen)
    result = {
        **outcome, "best_trial": study.best_trial.number, "outdated": outdated_final(study) is not None,
        "training": _final_training(config, val_size),
        "command": sr.reproduce_command(config, spec.model, spec.recipe) if config is not None else None,
    }
    if "baseline" in result:
        baseline, _ = _first_config(spec.results, arms.baseline)
        result["baseline"]["command"] = (sr.reproduce_command(baseline, spec.model, spec.recipe)
                                         if baseline is not None else None)
    return result


def _first_config(results: str, runs) -> tuple[RunConfig | None, int | None]:
    """The config of the first of ``runs`` that has a record, and the validation images it held out."""
    for run in runs:
        record = find_record(results, run.run_id)
        if record is not None and record.config:
            return run_config_from_dict(record.config), (record.provenance or {}).get("val_size")
    return None, None


def outdated_final(study: optuna.Study) -> tuple[int, int] | None:
    """(trial the final stage trained, best trial now) when a later trial beat the one the final stage
    trained (a run with ``--final-seeds 0`` after it) and has other params; None when it is the best's."""
    trained = study.user_attrs.get("final_trial")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if trained is None or not complete or trained >= len(study.trials):
        return None
    best = study.best_trial
    if trained == best.number or study.trials[trained].params == best.params:
        return None
    return trained, best.number


def _final_training(config: RunConfig | None, val_size: int | None) -> str:
    """How the final stage trained; ``val_size``: the validation images its record says it held out
    (small data hold out fewer than the default ``val_size`` asks for)."""
    if config is None:
        return "?"
    length = (plural(config.train.epochs, "epoch") if config.train.epochs is not None
              else plural(config.train.iterations, "iteration"))
    held = val_size if val_size is not None else config.data.val_size
    return f"{length} on the full training split (validation {held:,} images held out)"


def _save_figure(make: Callable[[], Any], path: Path, notes: list[str]) -> str | None:
    """Build and save one figure; a figure that cannot be drawn yet becomes a note, not a crash."""
    try:
        figure = make()
    except (ValueError, RuntimeError, ZeroDivisionError, KeyError) as exc:
        notes.append(f"{path.stem}: not drawn ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
        return None
    import matplotlib.pyplot as plt  # plotting: imported where a figure is saved, after the backend is chosen

    buffer = io.BytesIO()  # rendered in memory, then renamed into place: a kill never leaves half a PNG
    figure.savefig(buffer, format=path.suffix.lstrip("."), dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path.name


def write_study_report(study: optuna.Study, spec: StudySpec, out_dir: Path, figures: bool = True) -> Path:
    """trials.csv, rungs.csv, importances.csv, best.json, report.md and figures of one study into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = with_previous_ids(load_runs(spec.results))
    table = sr.trials_table(study, runs)
    atomic_write_text(out_dir / "trials.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / "rungs.csv", rung_values(study).to_csv(index=False))
    importances = rung_importances(study)
    atomic_write_text(out_dir / "importances.csv", importances.table.to_csv(index=False))
    command = best_command(spec, study)
    final = final_result(spec, study)
    best = {**sr.best_summary(study, command), **({"final": final} if final else {}),
            "importances": importances.summary()}
    atomic_write_text(out_dir / "best.json", json.dumps(best, indent=1, default=str) + "\n")
    # The header (split, hardware, software) and the coupling section describe the trials; the final
    # stage's runs (full training split) are described in their own section.
    run_ids = [r for r in table.get("user_attrs_run_id", []) if isinstance(r, str)]
    context = {**report_context(spec, runs, run_ids), "command": command, "changes": search_history_text(study),
               "final": final, "importances": importances}
    notes: list[str] = []
    names = []
    if figures:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna.visualization.matplotlib is experimental
            names = _study_figures(study, spec, out_dir, notes, importances)
    atomic_write_text(out_dir / "report.md", sr.study_markdown(study, context, runs, [n for n in names if n], notes))
    return out_dir


def _study_figures(study: optuna.Study, spec: StudySpec, out_dir: Path, notes: list[str],
                   importances: RungImportances) -> list[str | None]:
    top = sf.top_params(study)
    labels = sr.run_labels(sr.top_trials(study, 5))
    return [
        _save_figure(lambda: sf.history_figure(study), out_dir / "optimization_history.png", notes),
        _save_figure(lambda: sf.importance_figure(importances), out_dir / "param_importances.png", notes),
        _save_figure(lambda: sf.parallel_figure(study, top), out_dir / "parallel_coordinates.png", notes),
        _save_figure(lambda: sf.slice_figure(study, top), out_dir / "slice.png", notes),
        _save_figure(lambda: sf.learning_curves_figure(load_histories(spec.results), labels),
                     out_dir / "learning_curves.png", notes),
    ]


def write_compare_report(group: str, studies: list[optuna.Study], storage: str, results: str, out_dir: Path,
                         figures: bool = True) -> Path:
    """The fair comparison: per value its tuned best (validation) and its final seeds (TEST)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = [spec_from_study(s, storage, results) for s in studies]
    field_name = studies[0].user_attrs["compare_field"]
    values = [s.user_attrs["compare_value"] for s in studies]
    runs = with_previous_ids(load_runs(results))
    tables = [sr.trials_table(s, runs).assign(compare_value=v, study=s.study_name) for s, v in zip(studies, values)]
    trials = pd.concat(tables, ignore_index=True)
    atomic_write_text(out_dir / "trials.csv", trials.to_csv(index=False))
    final = final_table(studies, results)
    comparison = sr.compare_table(final, field_name, order=values) if not final.empty else pd.DataFrame()
    atomic_write_text(out_dir / "comparison.csv", comparison.to_csv(index=False))
    finals = [final_result(p, s) for s, p in zip(studies, specs)]
    bests = [sr.best_summary(s, best_command(p, s)) | {"compare_value": v, "final": f}
             for s, p, v, f in zip(studies, specs, values, finals)]
    payload = {"group": group, "field": field_name, "values": bests,
               "final_seeds": comparison.to_dict(orient="records")}
    atomic_write_text(out_dir / "best.json", json.dumps(payload, indent=1, default=str) + "\n")
    notes = [f"{field_name} {sr.format_value(v)}: {outdated_final_text(*o)}"
             for s, v in zip(studies, values) if (o := outdated_final(s)) is not None]
    name = None
    if figures:
        name = _save_figure(lambda: sf.isolation_figure(trials, field_name, final), out_dir / "isolation.png", notes)
    run_ids = [r for r in trials.get("user_attrs_run_id", []) if isinstance(r, str)] + list(final["run_id"])
    context = report_context(specs[0], runs, run_ids)
    paired = compare_paired_lines(field_name, [(sr.format_value(v), f) for v, f in zip(values, finals)])
    text = sr.compare_markdown(group, field_name, studies, values, context, comparison, notes, [name] if name else [],
                               paired)
    atomic_write_text(out_dir / "report.md", text)
    return out_dir


def console_summary(out_dir: Path) -> list[str]:
    """The study command's last lines, read from the best.json just written in ``out_dir`` (one
    study or a --compare group): best validation error, final-stage test errors with their intervals,
    the tuned - baseline difference, the verdict, and the report's path last."""
    best = json.loads((out_dir / "best.json").read_text())
    if "values" in best:
        lines = [line for value in best["values"]
                 for line in console_lines(value, f"{best['field']}={sr.format_value(value['compare_value'])}: ")]
    else:
        lines = console_lines(best)
    return lines + [f"report   {out_dir / 'report.md'}"]


def report_warnings(storage: str, results: str) -> list[str]:
    """One line each about what a report left out: record copies in runs/, and a journal whose
    last operation was cut short (Optuna ignores it; the next run of the study cuts it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable records: the report has warned about them already
        lines = [misnamed_warning(scan_records(results).misnamed, results)]
    if not is_rdb_url(storage) and Path(storage).is_file() and damaged_tail(storage) is not None:
        lines.append(f"warning: journal {storage} ends in a damaged line (an operation written only in part by a "
                     "killed process or a full disk): it is ignored, and the next studies/run.py of this study "
                     "cuts it, keeping a copy")
    return [line for line in lines if line]


def write_reports(name: str, storage: str, results: str, out_dir: Path | None = None, figures: bool = True) -> Path:
    """Rebuild the reports of a study or --compare group from the storage and the run records."""
    kind, studies = open_study_or_group(name, storage)
    target = out_dir or Path(results) / "studies" / check_name(name, "--study-name")
    if kind == "study":
        return write_study_report(studies[0], spec_from_study(studies[0], storage, results), target, figures)
    return write_compare_report(name, studies, storage, results, target, figures)
