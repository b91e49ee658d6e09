"""Fair comparisons (``--compare FIELD``): one tuned sub-study per value of the field, then the
best config of each re-trained with new seeds; only those final seeds give TEST errors."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import optuna
import pandas as pd
from optuna.trial import TrialState

from resnet_core.config import RunConfig, apply_overrides, get_field, resolve_field
from resnet_core.engine import fit as engine_fit
from resnet_core.migrate import current_run_ids
from resnet_core.store import find_record, load_runs
from resnet_core.study.common import FINAL_SEED_BASE
from resnet_core.study.objective import matching_data
from resnet_core.study.spec import StudySpec, trial_config


def compare_specs(spec: StudySpec, field_name: str, values: list[str] | None = None) -> list[StudySpec]:
    """One sub-study per value of ``field_name`` with the field fixed and the rest of the space
    tuned: same trial budget, same sampler seed, its own pruner (no pruning across values).
    """
    dotted = resolve_field(field_name)
    param = spec.space.param(field_name)
    if values:
        chosen = list(values)
    elif param is not None:
        chosen = list(param.values())
    else:
        raise ValueError(f"--compare {field_name}: the space {spec.space.name} does not search it; "
                         "give --compare-values A,B")
    if len(chosen) < 2:
        raise ValueError(f"--compare {field_name}: needs at least 2 values (got {chosen})")
    space = spec.space.without(field_name)
    subs = []
    for value in chosen:
        try:
            base = apply_overrides(spec.base, {dotted: value})
        except ValueError as exc:
            raise ValueError(f"--compare {field_name}: {exc}") from None
        label = get_field(base, dotted)
        subs.append(dataclasses.replace(
            spec, name=f"{spec.name}.{field_name}={_label(label)}", space=space, base=base,
            compare=(("group", spec.name), ("field", field_name), ("value", _json_value(label))),
        ))
    return subs


def _label(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def final_runs(spec: StudySpec, study: optuna.Study, seeds: int) -> list[RunConfig]:
    """The best trial's config re-run with seeds FINAL_SEED_BASE + i (TEST error is read from these)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    # The final seeds measure the test set (every epoch, the default: final seeds trained before
    # test_eval existed keep their run ids, so they are found, not trained again).
    best = apply_overrides(trial_config(spec, study.best_trial.params, spec.base.device), {"test_eval": "every_epoch"})
    return [dataclasses.replace(best, seed=FINAL_SEED_BASE + i) for i in range(seeds)]


def train_final_seeds(spec: StudySpec, study: optuna.Study, seeds: int, device: str, data: Any = None,
                      progress: bool = True, fit: Callable[..., Any] = engine_fit) -> list:
    """Train (or find) the final-seed runs of one sub-study with ``fit``; returns their records."""
    runs = [dataclasses.replace(r, device=device) for r in final_runs(spec, study, seeds)]
    records = [fit(run, results_dir=spec.results, data=matching_data(data, run.data), progress=progress) for run in runs]
    study.set_user_attr("final_run_ids", [r.run_id for r in records])
    return records


def final_table(studies: list[optuna.Study], results: str):
    """One row per final-seed run of a --compare group: value, seed, test and validation error."""
    rows = []
    runs = load_runs(results)  # ids stored before a run-id migration are mapped to the records' new ids
    for study in studies:
        for rid in current_run_ids(study.user_attrs.get("final_run_ids", []), runs):
            record = find_record(results, rid)
            if record is not None and record.status == "completed":
                rows.append({"value": study.user_attrs["compare_value"], "seed": record.config["seed"], "run_id": rid,
                             "test_error": record.final.get("test_error"), "val_error": record.final.get("val_error")})
    return pd.DataFrame(rows, columns=["value", "seed", "run_id", "test_error", "val_error"])
