"""The final stage: a study's best configuration re-trained with new seeds on the full training split
(validation still held out) and measured once on the test set, beside the untuned baseline (the
space's recipe before search) trained by the same rule on the same seeds, so the two can be compared
pair by pair. Trials never see the test set, so these runs are where a study's test error comes from;
``--compare`` runs the same stage once per value."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import optuna
import pandas as pd
from optuna.trial import TrialState

from resnet_core.config import RunConfig, apply_overrides, resolve_field
from resnet_core.engine import fit as engine_fit
from resnet_core.migrate import current_run_ids
from resnet_core.reports import plural
from resnet_core.identity import run_id
from resnet_core.runner import WorkerPool, train_all
from resnet_core.store import RunRecord, find_record, load_runs
from resnet_core.schedules import make_budget
from resnet_core.study.common import FINAL_SEED_BASE
from resnet_core.study.spec import StudySpec, trial_config


@dataclass(frozen=True)
class FinalStage:
    """How the best configuration is re-trained: ``seeds`` runs (seeds FINAL_SEED_BASE + i), each
    ``epochs`` long, or (``None``) as many SGD steps as a full trial took, so the tuned schedule and
    warm-up keep their length in steps while the run sees the whole training split. The best ``top``
    COMPLETE trials with distinct params each get the stage; the untuned baseline always does."""

    seeds: int
    epochs: int | None = None
    top: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 0:
            raise ValueError(f"--final-seeds {self.seeds}: expected an integer >= 0 (0 skips the final stage)")
        for flag, value in (("--final-epochs", 1 if self.epochs is None else self.epochs), ("--final-top", self.top)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{flag} {value}: expected an integer >= 1")

    def describe(self) -> str:
        length = plural(self.epochs, "epoch") if self.epochs else "the SGD steps of a full trial"
        configs = "the best config" if self.top == 1 else f"each of the best {self.top} configs"
        return (f"{self.seeds} seed{'s' * (self.seeds != 1)} of {configs} on the full training split "
                f"(validation held out), {length}, and the same seeds of the untuned baseline (the space's recipe); "
                "test error with a 95% interval and the paired difference tuned - baseline")


def final_config(spec: StudySpec, params: dict[str, Any], stage: FinalStage, device: str = "auto") -> RunConfig:
    """The best trial's config on the full training split, measured on the test set at its end."""
    trial = trial_config(spec, params, device)
    changes: dict[str, Any] = {"test_eval": "end", "val_epochs": None}
    compared = dict(spec.compare).get("field")
    if compared is None or resolve_field(compared) != "data.subset":  # a compared subset stays as it is
        changes["subset"] = None
    if stage.epochs is not None:
        changes["epochs"] = stage.epochs
    elif trial.data.subset is not None and "subset" in changes:
        # A trial on a subset: keep its number of steps (its lr schedule was tuned for that many).
        changes["iterations"] = make_budget(trial.train, trial.data.subset).total_iterations
    return apply_overrides(trial, changes)


@dataclass(frozen=True)
class FinalPlan:
    """The final stage of one study, seed for seed: each candidate trial's runs (trial number, runs;
    the best first) and the baseline's runs (the space's recipe: ``trial_config`` with no param set)."""

    candidates: tuple[tuple[int, tuple[RunConfig, ...]], ...]
    baseline: tuple[RunConfig, ...]

    def runs(self) -> list[RunConfig]:
        """Every run once, the best's and the baseline's first: a candidate that is the recipe itself
        (no searched value moved) is the baseline's own runs, not a second copy of them."""
        best, *others = self.candidates
        ordered = [*best[1], *self.baseline, *(run for _, runs in others for run in runs)]
        return list({run_id(run): run for run in ordered}.values())


def top_candidates(study: optuna.Study, top: int) -> list[optuna.trial.FrozenTrial]:
    """The best trial, then the next-best COMPLETE trials (lowest validation error) whose params
    differ from every one chosen before, ``top`` at most."""
    chosen = [study.best_trial]
    for trial in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.value):
        if len(chosen) >= top:
            break
        if all(trial.params != other.params for other in chosen):
            chosen.append(trial)
    return chosen


def final_plan(spec: StudySpec, study: optuna.Study, stage: FinalStage) -> FinalPlan | None:
    """The final stage's runs of a study (None with ``seeds`` 0 or no COMPLETE trial): every
    candidate and the baseline under one rule (:func:`final_config`) and one list of seeds, so
    seed s of each trains on the same data order."""
    if stage.seeds == 0 or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None

    def seeded(params: dict[str, Any]) -> tuple[RunConfig, ...]:
        config = final_config(spec, params, stage, spec.base.device)
        return tuple(dataclasses.replace(config, seed=FINAL_SEED_BASE + i) for i in range(stage.seeds))

    candidates = tuple((trial.number, seeded(trial.params)) for trial in top_candidates(study, stage.top))
    return FinalPlan(candidates, seeded({}))


def final_runs(spec: StudySpec, study: optuna.Study, stage: FinalStage) -> list[RunConfig]:
    """The final stage's runs of the study's best COMPLETE trial ([] if it has none)."""
    plan = final_plan(spec, study, stage)
    return list(plan.candidates[0][1]) if plan is not None else []


def train_final(spec: StudySpec, study: optuna.Study, stage: FinalStage, devices: str | Sequence[str],
                threads: int | None = None, progress: bool = True, fit: Callable[..., Any] = engine_fit,
                memory_fraction: float | None = None) -> list[RunRecord]:
    """:func:`train_finals` of one study (``devices``: one device string or the workers' list)."""
    workers = (devices,) if isinstance(devices, str) else tuple(devices)
    return train_finals([(spec, study)], stage, WorkerPool(workers, threads, memory_fraction, fit), progress)[0]


def train_finals(studies: Sequence[tuple[StudySpec, optuna.Study]], stage: FinalStage, pool: WorkerPool,
                 progress: bool = True) -> list[list[RunRecord]]:
    """Train (or find: a finished run is not trained again) the final runs of every study (a
    --compare group's values together), candidates and baselines as one batch in the worker
    ``pool`` (the trials' device slots, threads and memory cap; runs that differ only in their seed
    may fuse). A run another process is training is waited for and its record read. Each study
    records its final run ids (:func:`record_plan`), so its report finds them; returns the records
    of each study's best trial."""
    plans = [final_plan(spec, study, stage) for spec, study in studies]
    results = {spec.results for spec, _ in studies}
    if len(results) > 1:
        raise ValueError(f"the final stage trains into one results folder; these studies use {sorted(results)}")
    runs = {run_id(run): run for plan in plans if plan is not None for run in plan.runs()}
    if runs:
        train_all(list(runs.values()), results.pop(), pool, progress, desc="final stage")
    records = []
    for (spec, study), plan in zip(studies, plans):
        if plan is not None:
            record_plan(study, plan)
        records.append([find_record(spec.results, run_id(run)) for run in plan.candidates[0][1]] if plan else [])
    return records


def record_plan(study: optuna.Study, plan: FinalPlan) -> None:
    """The study's user attrs naming its final runs: ``final_run_ids``/``final_trial`` (the best
    trial's), ``final_seeds``, ``baseline_run_ids`` and ``final_top`` ([trial, run ids] per candidate)."""
    trial, runs = plan.candidates[0]
    study.set_user_attr("final_run_ids", [run_id(run) for run in runs])
    study.set_user_attr("final_trial", trial)
    study.set_user_attr("final_seeds", [run.seed for run in runs])
    study.set_user_attr("baseline_run_ids", [run_id(run) for run in plan.baseline])
    study.set_user_attr("final_top", [[number, [run_id(run) for run in group]] for number, group in plan.candidates])


def final_interval(errors: list[float], test_images: int | None) -> dict[str, Any]:
    """Mean test error (%) of the final runs and its 95% interval: Student's t over seeds when there
    are two or more (every seed is measured on the same test set, so that set's sampling is not in
    it); with one seed, the Wilson interval of its error count on ``test_images`` (how much the test
    set's sampling alone could move it: seed-to-seed spread is not in it)."""
    n = len(errors)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": None, "interval": "no final run"}
    mean = sum(errors) / n
    if n >= 2:
        from scipy import stats

        sd = math.sqrt(sum((e - mean) ** 2 for e in errors) / (n - 1))
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        return {"n": n, "mean": mean, "ci95": [mean - half, mean + half],
                "interval": f"t over {n} seeds; the sampling of the one shared test set is not in it"}
    if not test_images:
        return {"n": 1, "mean": mean, "ci95": None, "interval": "one seed; test set size unknown"}
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(round(mean / 100 * test_images), test_images, alpha=0.05, method="wilson")
    return {"n": 1, "mean": mean, "ci95": [100 * low, 100 * high],
            "interval": f"Wilson, test-set sampling of {test_images:,} images only (one seed)"}


def final_table(studies: list[optuna.Study], results: str):
    """One row per final run of the studies (a --compare group's sub-studies, or one study):
    value (the compared value; None for a plain study), seed, test and validation error."""
    rows = []
    runs = load_runs(results)  # ids stored before a run-id migration are mapped to the records' new ids
    for study in studies:
        for rid in current_run_ids(study.user_attrs.get("final_run_ids", []), runs):
            record = find_record(results, rid)
            if record is not None and record.status == "completed":
                rows.append({"value": study.user_attrs.get("compare_value"), "seed": record.config["seed"], "run_id": rid,
                             "test_error": record.final.get("test_error"), "val_error": record.final.get("val_error"),
                             "test_size": (record.provenance or {}).get("test_size")})
    return pd.DataFrame(rows, columns=["value", "seed", "run_id", "test_error", "val_error", "test_size"])
