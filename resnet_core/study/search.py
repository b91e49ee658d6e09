"""How a study searches: registries of samplers and pruners (explicit arguments, seeded per
worker), and creating or joining a study that must ask the same question the same way."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from resnet_core.config import run_config_from_dict
from resnet_core.identity import identity_dict
from resnet_core.study.common import FINISHED, experimental_ok
from resnet_core.study.spec import StudySpec
from resnet_core.study.storage import open_storage


# Sampler arguments are explicit: Optuna 5 changed TPE's defaults (multivariate, constant liar).
# Worker i seeds its sampler with seed + i, else parallel workers would propose identical trials;
# QMC is the exception: its points are indexed by trial number, so every worker shares one seed.
def _tpe(seed: int, worker: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed + worker, n_startup_trials=10, n_ei_candidates=24, multivariate=True,
                                      group=False, constant_liar=True)


def _random(seed: int, worker: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed + worker)


def _qmc(seed: int, worker: int) -> optuna.samplers.BaseSampler:
    with experimental_ok():
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed, warn_asynchronous_seeding=False,
                                          warn_independent_sampling=False)


def _cmaes(seed: int, worker: int) -> optuna.samplers.BaseSampler:
    try:
        import cmaes  # noqa: F401  (optional dependency of Optuna's CMA-ES sampler)
    except ImportError:
        raise ValueError("sampler 'cmaes' needs the cmaes package (pip install cmaes); "
                         "or use tpe, random, qmc, gp") from None
    return optuna.samplers.CmaEsSampler(seed=seed + worker, n_startup_trials=5, warn_independent_sampling=False,
                                        independent_sampler=optuna.samplers.RandomSampler(seed=seed + worker))


def _gp(seed: int, worker: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed + worker, n_startup_trials=10, deterministic_objective=False,
                                     warn_independent_sampling=False)


SAMPLERS = {"tpe": _tpe, "random": _random, "qmc": _qmc, "cmaes": _cmaes, "gp": _gp}
INDEXED_SAMPLERS = frozenset({"qmc"})  # points indexed by trial number: one seed for the whole study


def make_sampler(name: str, seed: int, worker: int = 0) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed, worker)


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


def _median(epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=_first_judged(epochs), interval_steps=1,
                                       n_min_trials=3)


def _hyperband(epochs: int) -> optuna.pruners.BasePruner:
    first = _first_judged(epochs)
    return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max(epochs, first + 1),
                                          reduction_factor=3)


def _sha(epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=_first_judged(epochs), reduction_factor=3,
                                                  min_early_stopping_rate=0)


def _no_pruner(epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


PRUNERS = {"median": _median, "hyperband": _hyperband, "sha": _sha, "none": _no_pruner}


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}: expected one of {', '.join(PRUNERS)}")
    return PRUNERS[name](epochs)


def describe_sampler(name: str, seed: int) -> str:
    details = {"tpe": "multivariate, constant liar, 10 random startup trials", "qmc": "scrambled Sobol",
               "gp": "10 random startup trials", "cmaes": "5 random startup trials", "random": ""}
    return f"{name} (seed {seed}{', ' + details[name] if details.get(name) else ''})"


def prunable_epochs(name: str, epochs: int) -> list[int]:
    """The epochs at which pruner ``name`` may stop a trial of ``epochs`` epochs: after the warm-up,
    never the last (the objective's callback finishes a trial that reached it), and for successive
    halving and Hyperband only at their rungs (min_resource x 3^k; Hyperband's brackets start at
    different k, so together they use the same rungs)."""
    if name == "none":
        return []
    first, last = _first_judged(epochs), epochs - 1
    if name == "median":
        return list(range(first, last + 1))
    rungs, step = [], first
    while step <= last:
        rungs.append(step)
        step *= 3
    return rungs


def _epochs_text(numbers: list[int]) -> str:
    if not numbers:
        return ""
    if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"epochs {numbers[0]}-{numbers[-1]}"
    return ("epoch " if len(numbers) == 1 else "epochs ") + ", ".join(map(str, numbers))


def describe_pruner(name: str, epochs: int) -> str:
    """The pruner and exactly which epochs it may stop a trial at (``prunable_epochs``)."""
    if name == "none":
        return "none (every trial trains its full budget)"
    warm = _warmup(epochs)
    details = {"median": "5 startup trials, >= 3 trials per epoch", "hyperband": f"max {epochs} epochs, factor 3",
               "sha": "factor 3"}
    protected = f"epoch{'s' * (warm != 1)} 1{f'-{warm}' if warm > 1 else ''} protected as warm-up"
    when = _epochs_text(prunable_epochs(name, epochs))
    where = f"may prune at {when} only" if when else "prunes nothing: no epoch after the warm-up before the last"
    return f"{name} ({details.get(name, 'custom')}; {protected}; {where}; the final epoch is never pruned)"


def create_study(spec: StudySpec, allow_change: bool = False) -> tuple[optuna.Study, bool]:
    """Create the study, or open it and check it asks the same question (base config and space)
    the same way (sampler and pruner; another one only with ``allow_change``, and it is recorded).

    Returns the study and whether this call created it. Of several hosts starting at once exactly
    one creates it (the storage's unique study name decides); the others join it.
    """
    storage = open_storage(spec.storage, spec.stale_after)
    kwargs = {"study_name": spec.name, "storage": storage, "sampler": make_sampler(spec.sampler, spec.seed),
              "pruner": make_pruner(spec.pruner, spec.budget_epochs)}
    try:
        study, created = optuna.create_study(direction="minimize", **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(**kwargs), False
    existing = dict(study.user_attrs)
    if "base_config" in existing:
        # Read back through the dataclasses: a field added since (with its default) or an old name is
        # the same question, not a different base config.
        existing["base_config"] = identity_dict(run_config_from_dict(existing["base_config"]))
    for key in ("base_config", "space"):
        if key in existing and existing[key] != spec.attrs()[key]:
            changed = _first_difference(existing[key], spec.attrs()[key])
            raise ValueError(f"study {spec.name!r} exists with a different {key} ({changed}): "
                             "pass --study-name NEW to start another study")
    _check_search_change(study, spec, allow_change)
    for key, value in spec.attrs().items():
        if existing.get(key) != value:
            study.set_user_attr(key, value)
    return study, created


SEARCH_KEYS = ("sampler", "pruner")  # how a study searches: its report names them for every trial


def _check_search_change(study: optuna.Study, spec: StudySpec, allow_change: bool) -> None:
    """A rerun with another sampler or pruner is refused (the report would claim it for every
    trial) unless ``allow_change``: then ``search_history`` records from which trial each applies."""
    existing = study.user_attrs
    now = [spec.sampler, spec.pruner]
    before = [existing.get(key, value) for key, value in zip(SEARCH_KEYS, now)]
    if before == now:
        return
    changed = "; ".join(f"--{key} {old} in the study, {new} now" for key, old, new in zip(SEARCH_KEYS, before, now)
                        if old != new)
    if not allow_change:
        raise ValueError(f"study {spec.name!r} was run another way ({changed}): pass --allow-change to go on "
                         "this way (the report then says from which trial), or --study-name NEW")
    history = existing.get("search_history") or [[0, *before]]
    study.set_user_attr("search_history", [*history, [len(study.trials), *now]])


def search_history_text(study: optuna.Study) -> str:
    """``tpe/median for trials 0-3; random/none from trial 4`` ("" if the study never changed)."""
    history = study.user_attrs.get("search_history") or []
    parts = []
    for index, (first, sampler, pruner) in enumerate(history):
        until = history[index + 1][0] - 1 if index + 1 < len(history) else None
        span = f"from trial {first}" if until is None else f"for trials {first}-{until}"
        parts.append(f"sampler {sampler}, pruner {pruner} {span}")
    return "; ".join(parts)


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
    return f"{path}: {old!r} in the study, {new!r} now"


def counts(study: optuna.Study) -> dict[str, int]:
    """finished (COMPLETE + PRUNED: what --trials counts), running, waiting, failed."""
    trials = study.get_trials(deepcopy=False)
    by = lambda *states: sum(t.state in states for t in trials)  # noqa: E731
    return {"finished": by(*FINISHED), "running": by(TrialState.RUNNING), "waiting": by(TrialState.WAITING),
            "failed": by(TrialState.FAIL), "complete": by(TrialState.COMPLETE), "pruned": by(TrialState.PRUNED)}
