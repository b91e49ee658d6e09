"""Pruners: a registry of Optuna pruners over epochs, which epochs each may stop a trial at (the
same epochs a trial measures validation at), and how many epochs a study is expected to train."""

from __future__ import annotations

import random

import optuna
from optuna.trial import TrialState


def _warmup(epochs: int) -> int:
    """Epochs no trial is judged on: slow starters (deep plain nets, warm-up) are not cut unfairly."""
    return max(1, epochs // 4)


def _first_judged(epochs: int) -> int:
    """The first epoch a pruner may stop a trial at: the one after the warm-up.

    The objective reports epoch e (numbered from 1) as Optuna step e, and Optuna judges a step s only
    when s >= n_warmup_steps (MedianPruner) or s >= min_resource x 3^k (successive halving, Hyperband).
    So the warm-up's epochs 1..w are protected by a threshold of w + 1, not w (w let it prune at w).
    """
    return _warmup(epochs) + 1


def _first_rung(epochs: int, first_rung: int | None) -> int:
    """Successive halving's first rung: the budget's (a short rung most trials stop at), else the
    epoch after the warm-up."""
    return first_rung if first_rung is not None else _first_judged(epochs)


def _median(epochs: int, first_rung: int | None, reduction: int, bootstrap: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=_first_judged(epochs), interval_steps=1,
                                       n_min_trials=3)


def _hyperband(epochs: int, first_rung: int | None, reduction: int, bootstrap: int) -> optuna.pruners.BasePruner:
    first = _first_rung(epochs, first_rung)
    return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max(epochs, first + 1),
                                          reduction_factor=reduction, bootstrap_count=bootstrap)


def _sha(epochs: int, first_rung: int | None, reduction: int, bootstrap: int) -> optuna.pruners.BasePruner:
    # Asynchronous successive halving (Li et al. 2020): at rung k (epoch first x reduction^k) a trial
    # goes on only if it is in the best 1/reduction of the trials that reached that rung so far.
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=_first_rung(epochs, first_rung),
                                                  reduction_factor=reduction, min_early_stopping_rate=0,
                                                  bootstrap_count=bootstrap)


def _no_pruner(epochs: int, first_rung: int | None, reduction: int, bootstrap: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


PRUNERS = {"median": _median, "hyperband": _hyperband, "sha": _sha, "none": _no_pruner}
RUNG_PRUNERS = frozenset({"sha", "hyperband"})  # judged at rungs first x reduction^k, not after every epoch


def make_pruner(name: str, epochs: int, first_rung: int | None = None, reduction: int = 3,
                bootstrap: int = 0, max_rungs: int | None = None) -> optuna.pruners.BasePruner:
    """The pruner ``name``; ``max_rungs`` needs no pruner setting: a trial measures validation only
    at the rungs ``prunable_epochs`` lists (and its last epoch), so a later rung is never asked."""
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}: expected one of {', '.join(PRUNERS)}")
    if first_rung is not None and not 1 <= first_rung:
        raise ValueError(f"first rung {first_rung}: expected an epoch >= 1")
    if reduction < 2:
        raise ValueError(f"pruner reduction factor {reduction}: expected an integer >= 2")
    if bootstrap < 0:
        raise ValueError(f"pruner bootstrap {bootstrap}: expected an integer >= 0")
    if max_rungs is not None and max_rungs < 1:
        raise ValueError(f"pruner max_rungs {max_rungs}: expected an integer >= 1, or None for every rung")
    return PRUNERS[name](epochs, first_rung, reduction, bootstrap)


def prunable_epochs(name: str, epochs: int, first_rung: int | None = None, reduction: int = 3,
                    bootstrap: int = 0, max_rungs: int | None = None) -> list[int]:
    """The epochs at which pruner ``name`` may stop a trial of ``epochs`` epochs: after the warm-up,
    never the last (the objective's callback finishes a trial that reached it), and for successive
    halving and Hyperband only at their rungs (first x reduction^k; Hyperband's brackets start at
    different k, so together they use the same rungs), the first ``max_rungs`` of them when it is
    set. These are also the only epochs a trial measures validation at besides its last
    (``trial_config``)."""
    if name == "none":
        return []
    last = epochs - 1
    if name == "median":
        return list(range(_first_judged(epochs), last + 1))
    if name not in RUNG_PRUNERS:  # a pruner registered elsewhere: it may read any epoch
        return list(range(1, last + 1))
    rungs, step = [], _first_rung(epochs, first_rung)
    while step <= last and (max_rungs is None or len(rungs) < max_rungs):
        rungs.append(step)
        step *= reduction
    return rungs


def bootstrap_for(trials: int, name: str, epochs: int, first_rung: int | None = None, reduction: int = 3,
                  max_rungs: int | None = None) -> int:
    """How many trials stop at each rung of successive halving or Hyperband before any goes on from it.

    Optuna promotes each of the first reduction - 1 trials at a rung that is the best so far there
    (it cannot pause a trial until the rung fills), so every early record goes on: in a 50-trial quick
    study TPE kept beating its own rung records and 13 of 21 trials at epoch 4 trained all 12 epochs,
    not the 1/4 asked for (rungs 1 and 4, factor 4). Holding the first ``reduction`` back (Optuna's
    ``bootstrap_count``) makes a trial go on only as the best 1/reduction of at least reduction + 1. The hold-back repeats
    at every rung: about (reduction + 1) x reduction^(rungs - 1) trials pass before the first one
    completes, so a study holds back only when it has at least twice that many (small studies still
    complete trials).
    """
    if name not in RUNG_PRUNERS:
        return 0
    rungs = len(prunable_epochs(name, epochs, first_rung, reduction, 0, max_rungs))
    first_complete = (reduction + 1) * reduction ** max(0, rungs - 1)
    return reduction if rungs and trials >= 2 * first_complete else 0


def _epochs_text(numbers: list[int]) -> str:
    if not numbers:
        return ""
    if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"epochs {numbers[0]}-{numbers[-1]}"
    return ("epoch " if len(numbers) == 1 else "epochs ") + ", ".join(map(str, numbers))


def rung_rule(reduction: int, bootstrap: int = 0) -> str:
    """Who goes on from a rung of successive halving or Hyperband (``bootstrap_for``)."""
    held = f"the first {bootstrap} trial{'s' * (bootstrap != 1)} at a rung stop there, then " if bootstrap else ""
    return f"{held}the best 1/{reduction} of the trials at a rung go on"


def describe_pruner(name: str, epochs: int, first_rung: int | None = None, reduction: int = 3,
                    bootstrap: int = 0, max_rungs: int | None = None) -> str:
    """The pruner and exactly which epochs it may stop a trial at (``prunable_epochs``)."""
    if name == "none":
        return "none (every trial trains its full budget)"
    first = _first_rung(epochs, first_rung) if name in RUNG_PRUNERS else _first_judged(epochs)
    warm = first - 1
    details = {"median": "5 startup trials, >= 3 trials per epoch",
               "hyperband": f"max {epochs} epochs, factor {reduction}; {rung_rule(reduction, bootstrap)}",
               "sha": rung_rule(reduction, bootstrap)}
    protected = (f"epoch{'s' * (warm != 1)} 1{f'-{warm}' if warm > 1 else ''} protected as warm-up" if warm
                 else "no warm-up")
    when = _epochs_text(prunable_epochs(name, epochs, first_rung, reduction, bootstrap, max_rungs))
    where = f"may prune at {when} only" if when else "prunes nothing: no epoch after the warm-up before the last"
    return f"{name} ({details.get(name, 'custom')}; {protected}; {where}; the final epoch is never pruned)"


def expected_work(trials: int, name: str, epochs: int, first_rung: int | None = None, reduction: int = 3,
                  bootstrap: int = 0, max_rungs: int | None = None, repeats: int = 10) -> tuple[float, float]:
    """(epochs trained, validation passes) a study of ``trials`` trials is expected to need under
    this pruner: the mean of ``repeats`` simulations with Optuna's own pruner on an in-memory study
    (each trial a random quality that keeps its rank at every epoch, one worker; a trial measures
    validation at the epochs its pruner reads and at its last). Real values decide the real counts;
    this sizes a budget and tells the user what to expect before training."""
    work = simulated_work(trials, name, epochs, first_rung, reduction, bootstrap, max_rungs, repeats)
    return work["epochs"], work["passes"]


def simulated_work(trials: int, name: str, epochs: int, first_rung: int | None = None, reduction: int = 3,
                   bootstrap: int = 0, max_rungs: int | None = None, repeats: int = 10) -> dict[str, float]:
    """:func:`expected_work`'s simulations in full: mean epochs trained, validation passes and
    COMPLETE trials, and the fewest COMPLETE trials of any simulation (``min_complete``)."""
    if name == "none" or trials <= 0:
        n = float(max(0, trials))
        return {"epochs": n * epochs, "passes": n, "complete": n, "min_complete": n}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each simulated study would log its creation
    try:
        runs = [_simulated(name, epochs, trials, (first_rung, reduction, bootstrap, max_rungs), seed)
                for seed in range(repeats)]
    finally:
        optuna.logging.set_verbosity(verbosity)
    mean = lambda i: sum(r[i] for r in runs) / repeats  # noqa: E731
    return {"epochs": mean(0), "passes": mean(1), "complete": mean(2), "min_complete": float(min(r[2] for r in runs))}


def _simulated(name: str, epochs: int, trials: int, rungs: tuple[int | None, int, int, int | None],
               seed: int) -> tuple[int, int, int]:
    read = set(prunable_epochs(name, epochs, *rungs)) | {epochs}
    draw = random.Random(seed)
    sim = optuna.create_study(pruner=make_pruner(name, epochs, *rungs),
                              sampler=optuna.samplers.RandomSampler(seed=seed))
    trained = measured = complete = 0
    for _ in range(trials):
        trial, quality = sim.ask(), draw.random()
        for epoch in range(1, epochs + 1):
            trained += 1
            if epoch not in read:
                continue
            measured += 1
            trial.report(quality * (1 + 1 / epoch), epoch)
            if epoch < epochs and trial.should_prune():
                sim.tell(trial, state=TrialState.PRUNED)
                break
        else:
            sim.tell(trial, quality)
            complete += 1
    return trained, measured, complete
