"""Planning a study: one request (what the driver asks for) checked in full before any trial
(space, config, sampler, pruner, storage, data) and what the study holds already; what the plan
says and how long it should take is :mod:`resnet_core.study.estimate`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from resnet_core.budgets import Budget
from resnet_core.config import RunConfig, apply_overrides, resolve_field
from resnet_core.data import load_data, pool_size, training_images
from resnet_core.engine import check_fits_data
from resnet_core.schedules import make_budget
from resnet_core.splits import capped_subset, capped_val_size
from resnet_core.store import check_name, check_writable
from resnet_core.study.pruners import bootstrap_for, make_pruner
from resnet_core.study.search import check_same_question, counts, make_sampler
from resnet_core.study.space import SPACES_DIR, check_settings_kept, read_space, validate_space
from resnet_core.study.spec import TRIAL_TEST_EVAL, StudySpec, base_run, budget, default_study_name
from resnet_core.study.storage import check_storage, default_storage, is_rdb_url, open_storage


@dataclass(frozen=True)
class Setup:
    """A validated study (or --compare group) and facts about its data, before any trial."""

    spec: StudySpec
    train_size: int
    eval_size: int
    data_description: str
    val_size: int | None = None  # validation images of a trial (the default adapts to small data)
    test_size: int = 0  # test images a final run measures at its end


@dataclass(frozen=True)
class StudyRequest:
    """What a driver asks for: a study (or --compare group) described in flags' terms, before any
    check. :func:`plan` turns it into a validated :class:`StudySpec`."""

    space: str = "recipe"  # a name in resnet_core/spaces or a .toml path
    model: str = "resnet20"  # preset the space starts from
    budget: str = "quick"  # study budget name (resnet_core/budgets.py)
    epochs: int | None = None  # overrides the budget's length
    iterations: int | None = None  # overrides the budget's length (the paper's is 64k iterations)
    data: str | None = None
    subset: int | None = None
    val_size: int | None = None
    seed: int = 0  # the sampler's seed and every trial's run seed
    overrides: tuple[tuple[str, Any], ...] = ()  # (field, value) fixed for every trial, as --set gives them
    sampler: str = "tpe"
    pruner: str = "auto"  # auto: the budget's (successive halving on the quick and standard budgets)
    storage: str | None = None  # default: a journal file under <results>/studies/
    study_name: str | None = None  # default: <space>-<model>-<data>-<budget>
    results: str = "results"
    stale_after: float = 600.0
    compare: str | None = None  # the field of a --compare group
    trials: int = 0  # the trials a run adds: a rung holds back its first ones only in a study this big
    spaces_dir: Path = SPACES_DIR
    data_device: str = "cpu"  # where the returned DataBundle lives


def plan(request: StudyRequest) -> tuple[Setup, Any]:
    """Check everything a study needs (space, config, sampler, pruner, storage, data) before any trial.

    Returns the setup and the loaded DataBundle (on ``request.data_device``; also warms the data
    cache so parallel workers do not decode it at once).
    """
    r = request
    plan_budget = budget(r.budget)
    if not r.stale_after > 0:
        raise ValueError(f"--stale-after {r.stale_after}: expected a number of seconds > 0")
    if r.epochs is not None and r.iterations is not None:
        raise ValueError("give at most one of --epochs and --iterations (the length of a full trial)")
    base = base_run(r.model, plan_budget, epochs=r.epochs, iterations=r.iterations, data=r.data, subset=r.subset,
                    val_size=r.val_size, seed=r.seed, overrides=dict(r.overrides))
    make_sampler(r.sampler, r.seed)  # after the config has checked the seed, in a line that names it
    base = _fit_budget_sizes(base, r, plan_budget)
    search = read_space(r.space, r.spaces_dir)
    fixed = validate_space(search, base)  # base with the space's [fixed] fields set
    search = search.applicable_to(fixed)
    check_settings_kept(search, dict(r.overrides))  # a --set the trials would replace is refused, not ignored
    if not search.params:
        raise ValueError(f"space {search.source}: no parameter applies to this study ({search.describe()})")
    if r.compare is not None:
        resolve_field(r.compare)
    label = f"e{r.epochs}" if r.epochs else f"i{r.iterations}" if r.iterations else plan_budget.name
    suffix = f"-compare-{r.compare}" if r.compare else ""
    name = r.study_name or default_study_name(search.name, r.model, base.data.source, label) + suffix
    check_name(name, "--study-name")  # it names the journal and the report folder under --results
    storage = r.storage or default_storage(r.results, name)
    check_writable(r.results, "results directory")  # run records, checkpoints and reports go there
    check_storage(storage, r.stale_after)  # an unreachable server fails now, not after the data are loaded
    bundle = load_data(base.data, r.data_device)
    check_fits_data(fixed, bundle.num_classes, bundle.train_x.shape[1])
    budget_epochs = make_budget(fixed.train, len(bundle.train_y)).epochs
    pruner, first_rung, reduction, max_rungs, hold_back = _pruner_choice(r, plan_budget,
                                                                       _recorded(storage, name, r.stale_after))
    bootstrap = (hold_back if hold_back is not None
                 else bootstrap_for(r.trials, pruner, budget_epochs, first_rung, reduction, max_rungs))
    make_pruner(pruner, budget_epochs, first_rung, reduction, bootstrap, max_rungs)
    spec = StudySpec(name=name, storage=storage, space=search, base=base,
                     model=r.model, recipe=plan_budget.recipe, budget=label, budget_epochs=budget_epochs,
                     sampler=r.sampler, pruner=pruner, seed=r.seed, results=str(r.results),
                     stale_after=r.stale_after, first_rung=first_rung, reduction=reduction, bootstrap=bootstrap,
                     max_rungs=max_rungs)
    tested = len(bundle.test_y) if TRIAL_TEST_EVAL != "never" else 0  # what one trial evaluates each epoch
    return Setup(spec, len(bundle.train_y), len(bundle.val_y) + tested, bundle.description, len(bundle.val_y),
                 len(bundle.test_y)), bundle


def _fit_budget_sizes(base: RunConfig, r: StudyRequest, plan_budget: Budget) -> RunConfig:
    """The budget's validation size and subset are ceilings (as a grid's subset is): data too small
    for them keep their default validation split and train on all the images left. A size given by
    a flag (``--val-size``, ``--set val_size=``) is kept as given."""
    set_val = any(resolve_field(name) == "data.val_size" for name, _ in r.overrides)
    budget_val = r.val_size is None and not set_val and plan_budget.search.val_size is not None
    budget_subset = r.subset is None and base.data.subset is not None
    if not (budget_val or budget_subset):
        return base
    images = training_images(base.data)
    if budget_val:
        base = apply_overrides(base, {"val_size": capped_val_size(plan_budget.search.val_size, images)})
    if budget_subset:
        base = apply_overrides(base, {"subset": capped_subset(base.data.subset, pool_size(base.data, images))})
    return base


def _pruner_choice(r: StudyRequest, plan_budget: Budget,
                   recorded: optuna.Study | None) -> tuple[str, int | None, int, int | None, int | None]:
    """(pruner, first rung, reduction, max rungs, hold-back): ``--pruner auto`` is the budget's, or the
    one an existing study recorded (a study made before a default changed goes on as it began, its
    hold-back by ``bootstrap_for``'s rule); a named pruner takes the budget's rungs (create_study
    refuses a change unless --allow-change)."""
    attrs = recorded.user_attrs if recorded is not None else {}
    if r.pruner == "auto" and "pruner" in attrs:
        return (attrs["pruner"], attrs.get("pruner_first_rung"), int(attrs.get("pruner_reduction", 3)),
                attrs.get("pruner_max_rungs"), None)
    shape = plan_budget.search
    pruner = shape.pruner if r.pruner == "auto" else r.pruner
    return pruner, shape.first_rung, shape.reduction, shape.max_rungs, shape.hold_back


def _recorded(storage_url: str, name: str, stale_after: float) -> optuna.Study | None:
    """The study ``name`` if it exists already (None otherwise); creates nothing."""
    if not is_rdb_url(storage_url) and not Path(storage_url).exists():
        return None
    storage = open_storage(storage_url, stale_after)
    if name not in optuna.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def resumable_counts(spec: StudySpec, allow_change: bool = False) -> dict[str, int]:
    """Before any trial (a dry run too): the one-line refusal :func:`create_study` gives when an
    existing study of this name was asked another question or searched another way, then its counts
    (:func:`current_counts`), on one opening of the storage; creates nothing."""
    study = _recorded(spec.storage, spec.name, spec.stale_after)
    if study is not None:
        check_same_question(study, spec, allow_change)
    return _counts_or_zeros(study)


def current_counts(spec: StudySpec) -> dict[str, int]:
    """Counts of an existing study (all zeros if it does not exist yet); creates nothing."""
    return _counts_or_zeros(_recorded(spec.storage, spec.name, spec.stale_after))


def _counts_or_zeros(study: optuna.Study | None) -> dict[str, int]:
    if study is None:
        return {k: 0 for k in ("finished", "running", "waiting", "failed", "complete", "pruned")}
    return counts(study)
