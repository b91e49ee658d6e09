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


def _median(epochs: int, first_rung: int | None, reduction: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=_first_judged(epochs), interval_steps=1,
                                       n_min_trials=3)


def _hyperband(epochs: int, first_rung: int | None, reduction: int) -> optuna.pruners.BasePruner:
    first = _first_rung(epochs, first_rung)
    return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max(epochs, first + 1),
                                          reduction_factor=reduction)


def _sha(epochs: int, first_rung: int | None, reduction: int) -> optuna.pruners.BasePruner:
    # Asynchronous successive halving (Li et al. 2020): at rung k (epoch first x reduction^k) a trial
    # goes on only if it is in the best 1/reduction of the trials that reached that rung so far.
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=_first_rung(epochs, first_rung),
                                                  reduction_factor=reduction, min_early_stopping_rate=0)


def _no_pruner(epochs: int, first_rung: int | None, reduction: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


PRUNERS = {"median": _median, "hyperband": _hyperband, "sha": _sha, "none": _no_pruner}
RUNG_PRUNERS = frozenset({"sha", "hyperband"})  # judged at rungs first x reduction^k, not after every epoch


def make_pruner(name: str, epochs: int, first_rung: int | None = None, reduction: int = 3) -> optuna.pruners.BasePruner:
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}: expected one of {', '.join(PRUNERS)}")
    if first_rung is not None and not 1 <= first_rung:
        raise ValueError(f"first rung {first_rung}: expected an epoch >= 1")
    if reduction < 2:
        raise ValueError(f"pruner reduction factor {reduction}: expected an integer >= 2")
    return PRUNERS[name](epochs, first_rung, reduction)


def prunable_epochs(name: str, epochs: int, first_rung: int | None = None, reduction: int = 3) -> list[int]:
    """The epochs at which pruner ``name`` may stop a trial of ``epochs`` epochs: after the warm-up,
    never the last (the objective's callback finishes a trial that reached it), and for successive
    halving and Hyperband only at their rungs (first x reduction^k; Hyperband's brackets start at
    different k, so together they use the same rungs). These are also the only epochs a trial
    measures validation at besides its last (``trial_config``)."""
    if name == "none":
        return []
    last = epochs - 1
    if name == "median":
        return list(range(_first_judged(epochs), last + 1))
    if name not in RUNG_PRUNERS:  # a pruner registered elsewhere: it may read any epoch
        return list(range(1, last + 1))
    rungs, step = [], _first_rung(epochs, first_rung)
    while step <= last:
        rungs.append(step)
        step *= reduction
    return rungs


def _epochs_text(numbers: list[int]) -> str:
    if not numbers:
        return ""
    if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"epochs {numbers[0]}-{numbers[-1]}"
    return ("epoch " if len(numbers) == 1 else "epochs ") + ", ".join(map(str, numbers))


def describe_pruner(name: str, epochs: int, first_rung: int | None = None, reduction: int = 3) -> str:
    """The pruner and exactly which epochs it may stop a trial at (``prunable_epochs``)."""
    if name == "none":
        return "none (every trial trains its full budget)"
    first = _first_rung(epochs, first_rung) if name in RUNG_PRUNERS else _first_judged(epochs)
    warm = first - 1
    details = {"median": "5 startup trials, >= 3 trials per epoch",
               "hyperband": f"max {epochs} epochs, factor {reduction}",
               "sha": f"the best 1/{reduction} of the trials at a rung go on"}
    protected = (f"epoch{'s' * (warm != 1)} 1{f'-{warm}' if warm > 1 else ''} protected as warm-up" if warm
                 else "no warm-up")
    when = _epochs_text(prunable_epochs(name, epochs, first_rung, reduction))
    where = f"may prune at {when} only" if when else "prunes nothing: no epoch after the warm-up before the last"
    return f"{name} ({details.get(name, 'custom')}; {protected}; {where}; the final epoch is never pruned)"


def expected_work(trials: int, name: str, epochs: int, first_rung: int | None = None, reduction: int = 3,
                  repeats: int = 10) -> tuple[float, float]:
    """(epochs trained, validation passes) a study of ``trials`` trials is expected to need under
    this pruner: the mean of ``repeats`` simulations with Optuna's own pruner on an in-memory study
    (each trial a random quality that keeps its rank at every epoch, one worker; a trial measures
    validation at the epochs its pruner reads and at its last). Real values decide the real counts;
    this sizes a budget and tells the user what to expect before training."""
    if name == "none" or trials <= 0:
        return float(max(0, trials) * epochs), float(max(0, trials))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each simulated study would log its creation
    try:
        runs = [_simulated(name, epochs, trials, first_rung, reduction, seed) for seed in range(repeats)]
    finally:
        optuna.logging.set_verbosity(verbosity)
    return sum(r[0] for r in runs) / repeats, sum(r[1] for r in runs) / repeats


def _simulated(name: str, epochs: int, trials: int, first_rung: int | None, reduction: int,
               seed: int) -> tuple[int, int]:
    read = set(prunable_epochs(name, epochs, first_rung, reduction)) | {epochs}
    draw = random.Random(seed)
    sim = optuna.create_study(pruner=make_pruner(name, epochs, first_rung, reduction),
                              sampler=optuna.samplers.RandomSampler(seed=seed))
    trained = measured = 0
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
    return trained, measured
