"""How a study searches: registries of samplers and pruners (explicit arguments, seeded per
worker), and creating or joining a study that must ask the same question the same way."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from resnet_core.config import run_config_from_dict
from resnet_core.identity import identity_dict
from resnet_core.study.common import FINISHED, experimental_ok
from resnet_core.study.pruners import make_pruner
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


def describe_sampler(name: str, seed: int) -> str:
    details = {"tpe": "multivariate, constant liar, 10 random startup trials", "qmc": "scrambled Sobol",
               "gp": "10 random startup trials", "cmaes": "5 random startup trials", "random": ""}
    return f"{name} (seed {seed}{', ' + details[name] if details.get(name) else ''})"


def create_study(spec: StudySpec, allow_change: bool = False) -> tuple[optuna.Study, bool]:
    """Create the study, or open it and check it asks the same question (base config and space)
    the same way (sampler and pruner; another one only with ``allow_change``, and it is recorded).

    Returns the study and whether this call created it. Of several hosts starting at once exactly
    one creates it (the storage's unique study name decides); the others join it.
    """
    storage = open_storage(spec.storage, spec.stale_after)
    kwargs = {"study_name": spec.name, "storage": storage, "sampler": make_sampler(spec.sampler, spec.seed),
              "pruner": make_pruner(*spec.pruner_shape())}
    try:
        study, created = optuna.create_study(direction="minimize", **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(**kwargs), False
    search_change = check_same_question(study, spec, allow_change)
    if search_change:
        history = study.user_attrs.get("search_history") or [[0, *search_change[0]]]
        study.set_user_attr("search_history", [*history, [len(study.trials), *search_change[1]]])
    existing = _recorded_attrs(study)
    for key, value in spec.attrs().items():
        if existing.get(key) != value:
            study.set_user_attr(key, value)
    return study, created


def check_same_question(study: optuna.Study, spec: StudySpec, allow_change: bool = False) -> tuple[list, list] | None:
    """A one-line ValueError when ``spec`` asks an existing study another question (base config or
    space), or searches it another way (sampler, pruner) without ``allow_change``; changes nothing.
    Returns (before, now) search settings of an allowed change, None when they are the same.
    :func:`create_study` and a dry run (``plan.resumable_counts``) both ask it, so they refuse alike."""
    existing = _recorded_attrs(study)
    for key in ("base_config", "space"):
        if key in existing and existing[key] != spec.attrs()[key]:
            changed = _first_difference(existing[key], spec.attrs()[key])
            raise ValueError(f"study {spec.name!r} exists with a different {key} ({changed}): "
                             "pass --study-name NEW to start another study")
    return _search_change(study, spec, allow_change)


def _recorded_attrs(study: optuna.Study) -> dict[str, Any]:
    """The study's user attrs, its base config read back through the dataclasses: a field added since
    (with its default) or an old name is the same question, not a different base config."""
    existing = dict(study.user_attrs)
    if "base_config" in existing:
        existing["base_config"] = identity_dict(run_config_from_dict(existing["base_config"]))
    return existing


SEARCH_KEYS = ("sampler", "pruner")  # how a study searches: its report names them for every trial


def _search_change(study: optuna.Study, spec: StudySpec, allow_change: bool) -> tuple[list, list] | None:
    """A rerun with another sampler or pruner is refused (the report would claim it for every
    trial) unless ``allow_change``: then (before, now), which ``search_history`` records from this trial."""
    existing = study.user_attrs
    now = [spec.sampler, spec.pruner]
    before = [existing.get(key, value) for key, value in zip(SEARCH_KEYS, now)]
    if before == now:
        return None
    changed = "; ".join(f"--{key} {old} in the study, {new} now" for key, old, new in zip(SEARCH_KEYS, before, now)
                        if old != new)
    if not allow_change:
        raise ValueError(f"study {spec.name!r} was run another way ({changed}): pass --allow-change to go on "
                         "this way (the report then says from which trial), or --study-name NEW")
    return before, now


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
