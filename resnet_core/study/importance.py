"""Parameter importances where a study has the evidence for them: at the deepest rung (epoch) that
enough trials reached, not among the few trials a pruned study completes.

Optuna's evaluators read COMPLETE trials only, so the trials at that rung are copied into an
in-memory study as COMPLETE trials whose value is their validation error there. fANOVA (Hutter et
al. 2014, Optuna's FanovaImportanceEvaluator) fits a random forest, so it is run for several forest
seeds and reported as mean and standard deviation: an importance as large as its spread is noise.
The spread leaves out the sampling of the trials themselves (the forests all fit the same trials).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import optuna
import pandas as pd
from optuna.trial import create_trial

from resnet_core.reports import markdown_table, plural
from resnet_core.study.rungs import measured_values

MIN_TRIALS = 8  # fewer trials than this at every rung: no importances (a forest on 7 points is noise)
SEEDS = 5
IMPORTANCE_COLUMNS = ["param", "importance_mean", "importance_sd"]


@dataclass(frozen=True)
class RungImportances:
    """Importances at one epoch (``epoch`` None when none was computed, ``reason`` says why).
    ``table``: param, importance_mean, importance_sd, then one column per seed (seed_0, ...)."""

    epoch: int | None
    trials: int
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=IMPORTANCE_COLUMNS))
    seeds: int = SEEDS
    reason: str = ""

    def label(self) -> str:
        """``at epoch 4, 14 trials``."""
        return f"at epoch {self.epoch}, {plural(self.trials, 'trial')}"

    def summary(self) -> dict[str, Any]:
        """What best.json records: the rung, the evaluator and each parameter's mean and sd."""
        if self.epoch is None:
            return {"epoch": None, "reason": self.reason}
        params = {row.param: {"mean": row.importance_mean, "sd": row.importance_sd}
                  for row in self.table.itertuples(index=False)}
        return {"epoch": self.epoch, "trials": self.trials, "evaluator": "fanova", "seeds": self.seeds,
                "params": params}


def reached(study: optuna.Study) -> dict[int, int]:
    """Trials (with params) that measured validation at each epoch."""
    counts: dict[int, int] = {}
    for trial in study.get_trials(deepcopy=False):
        if trial.params:
            for epoch in measured_values(trial):
                counts[epoch] = counts.get(epoch, 0) + 1
    return counts


def deepest_rung(study: optuna.Study, min_trials: int = MIN_TRIALS) -> tuple[int, int] | None:
    """(epoch, trials) of the deepest epoch at least ``min_trials`` trials measured, else None."""
    counts = reached(study)
    enough = [epoch for epoch, n in counts.items() if n >= min_trials]
    return (max(enough), counts[max(enough)]) if enough else None


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every study it creates; a report's in-memory study is not the user's news."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def rung_study(study: optuna.Study, epoch: int) -> optuna.Study:
    """An in-memory study of the trials that measured ``epoch``, each COMPLETE with that value."""
    copies = [create_trial(params=t.params, distributions=t.distributions, value=measured_values(t)[epoch])
              for t in study.get_trials(deepcopy=False) if t.params and epoch in measured_values(t)]
    with _quiet_optuna():
        rung = optuna.create_study(direction="minimize")
    rung.add_trials(copies)
    return rung


def rung_importances(study: optuna.Study, min_trials: int = MIN_TRIALS, seeds: int = SEEDS) -> RungImportances:
    """fANOVA importances (normalised to sum to 1 per seed) of the validation error at the deepest
    rung at least ``min_trials`` trials reached, for forest seeds 0..seeds-1."""
    rung = deepest_rung(study, min_trials)
    if rung is None:
        return RungImportances(None, 0, seeds=seeds, reason=_not_computed(study, min_trials))
    epoch, n = rung
    try:
        import sklearn  # noqa: F401  (fANOVA's random forest)
    except ImportError:
        return RungImportances(None, 0, seeds=seeds, reason="fANOVA needs scikit-learn (pip install scikit-learn)")
    copy = rung_study(study, epoch)
    per_seed = [optuna.importance.get_param_importances(
        copy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)) for seed in range(seeds)]
    table = pd.DataFrame(per_seed).fillna(0.0).T.rename(columns=lambda seed: f"seed_{seed}")
    table.insert(0, "importance_sd", table.std(axis=1, ddof=1) if seeds > 1 else 0.0)
    table.insert(0, "importance_mean", table.filter(like="seed_").mean(axis=1))
    table = table.rename_axis("param").reset_index().sort_values("importance_mean", ascending=False)
    return RungImportances(epoch, n, table.reset_index(drop=True), seeds)


def _not_computed(study: optuna.Study, min_trials: int) -> str:
    """Why no importances: the rung with the most trials falls short (or nothing was measured)."""
    counts = reached(study)
    if not counts:
        return "no trial has measured validation yet"
    most = max(counts.values())
    epoch = max(e for e, n in counts.items() if n == most)
    return (f"no epoch was reached by at least {min_trials} trials (most: {plural(most, 'trial')} at epoch "
            f"{epoch})")


def importance_lines(importances: RungImportances) -> list[str]:
    """The report's section on parameter importances."""
    lines = ["## Parameter importances", ""]
    if importances.epoch is None:
        return lines + [f"Not computed: {importances.reason}.", ""]
    shown = importances.table[IMPORTANCE_COLUMNS].rename(
        columns={"importance_mean": "importance (mean)", "importance_sd": f"sd over {importances.seeds} seeds"})
    return lines + [
        f"Of the validation error {importances.label()} (the deepest epoch at least {MIN_TRIALS} trials reached): "
        f"fANOVA (Optuna's FanovaImportanceEvaluator) for {plural(importances.seeds, 'forest seed')}, each "
        "normalised to sum to 1 (importances.csv: every seed). An importance no larger than its sd is noise; the "
        "sd is over forest seeds only and leaves out which trials happened to reach this epoch, so with few "
        "trials a parameter without effect can still score well above its sd.", "",
        markdown_table(shown, floatfmt=".3f"), ""]
