"""The study spec: everything a worker needs to run trials of one study (picklable), the config
every trial starts from, and a spec rebuilt from what a study recorded about itself."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import optuna

from resnet_core.budgets import STUDY_BUDGETS, Budget, lookup
from resnet_core.config import DataConfig, RunConfig, apply_overrides, run_config_from_dict
from resnet_core.identity import identity_dict
from resnet_core.recipes import recipe
from resnet_core.models import resolve_model
from resnet_core.study.pruners import prunable_epochs
from resnet_core.study.space import SearchSpace, parse_param


@dataclass(frozen=True)
class StudySpec:
    """Everything a worker process needs to run trials of one study (picklable)."""

    name: str
    storage: str  # an Optuna RDB URL, or the path of a journal file
    space: SearchSpace
    base: RunConfig
    model: str  # preset name, for the reproduce command
    recipe: str
    budget: str  # label: quick | standard | paper | <N> epochs
    budget_epochs: int  # epochs of one full trial (pruning steps are epochs 1..budget_epochs)
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    results: str = "results"
    stale_after: float = 600.0
    compare: tuple[tuple[str, Any], ...] = ()  # (("group", name), ("field", f), ("value", v)) of a --compare sub-study
    first_rung: int | None = None  # successive halving / Hyperband: first epoch judged (None: after the warm-up)
    reduction: int = 3  # successive halving / Hyperband: 1/reduction of the trials at a rung go on
    bootstrap: int = 0  # successive halving / Hyperband: trials that stop at a rung before any goes on
    max_rungs: int | None = None  # successive halving / Hyperband: rungs that judge a trial (None: all)

    def pruner_shape(self) -> tuple[str, int, int | None, int, int, int | None]:
        """(pruner, epochs, first rung, reduction, bootstrap, max rungs): the arguments of make_pruner
        and prunable_epochs."""
        return self.pruner, self.budget_epochs, self.first_rung, self.reduction, self.bootstrap, self.max_rungs

    def attrs(self) -> dict[str, Any]:
        """What a study records about itself (user attrs), so reports and re-runs need no flags."""
        return {
            "base_config": identity_dict(self.base), "space": self.space.to_dict(), "model_preset": self.model,
            "recipe": self.recipe, "budget": self.budget, "budget_epochs": self.budget_epochs,
            "sampler": self.sampler, "pruner": self.pruner, "seed": self.seed,
            "pruner_first_rung": self.first_rung, "pruner_reduction": self.reduction,
            "pruner_bootstrap": self.bootstrap, "pruner_max_rungs": self.max_rungs,
            **{f"compare_{k}": v for k, v in self.compare},
        }


def budget(name: str) -> Budget:
    """A study budget by name (resnet_core/budgets.py: one Budget class for grids and studies)."""
    return lookup(name, STUDY_BUDGETS)


def base_run(model: str, plan: Budget, *, epochs: int | None = None, iterations: int | None = None,
             data: str | None = None, subset: int | None = None, val_size: int | None = None, seed: int = 0,
             overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The config every trial starts from: preset, budget's recipe and length (``epochs`` or
    ``iterations`` replace it), data, study seed."""
    run = RunConfig(model=resolve_model(model), train=recipe(plan.recipe), data=DataConfig(), seed=seed)
    changes: dict[str, Any] = dict(plan.train)  # the budget's settings for every trial
    length = plan.with_length(epochs, iterations)
    changes.update({"epochs": length.epochs} if length.epochs is not None else {"iterations": length.iterations})
    if data:
        changes["source"] = data
    if subset is not None or plan.subset is not None:
        changes["subset"] = subset if subset is not None else plan.subset
    if val_size is not None:
        changes["val_size"] = val_size
    run = apply_overrides(apply_overrides(run, changes), dict(overrides or {}))
    if run.data.val_size == 0:
        raise ValueError("val_size=0 is invalid for a study: the objective is the validation error "
                         "(use --val-size > 0)")
    return run


def default_study_name(space: str, model: str, data_source: str, budget_label: str) -> str:
    tag = Path(data_source.rstrip("/")).name if "/" in data_source else data_source.replace(":", "")
    return f"{Path(space).stem}-{model}-{tag}-{budget_label}"


# A trial is chosen on validation only, so it never measures the test set (a third of a short trial's
# time); the final stage measures the chosen config on it. Set per trial, not in the base config, so
# a study recorded before this field still opens with the same base config.
TRIAL_TEST_EVAL = "never"


def trial_config(spec: StudySpec, params: Mapping[str, Any], device: str = "auto") -> RunConfig:
    """The run of a trial: the study's base config, the space's fixed fields, then the params. A
    trial never measures the test set (``TRIAL_TEST_EVAL``) and measures validation only at the
    epochs its pruner reads, at its last, and at any the base config lists (``val_epochs``)."""
    read = tuple(sorted(set(prunable_epochs(*spec.pruner_shape())) | set(spec.base.train.val_epochs or ())))
    run = apply_overrides(dataclasses.replace(spec.base, device=device),
                          {"test_eval": TRIAL_TEST_EVAL, "val_epochs": read})
    return apply_overrides(apply_overrides(run, dict(spec.space.fixed)), dict(params))


def spec_from_study(study: optuna.Study, storage: str, results: str) -> StudySpec:
    """Rebuild a study's spec from what it recorded about itself (reports need no flags)."""
    attrs = study.user_attrs
    recorded = attrs["space"]
    space = SearchSpace(name=recorded["name"], source="(from the study)",
                        params=tuple(parse_param(k, v, "(from the study)") for k, v in recorded["params"].items()),
                        fixed=tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in recorded["fixed"].items()),
                        inactive=tuple(recorded.get("not_searched", {}).items()))
    compare = tuple((k, attrs[f"compare_{k}"]) for k in ("group", "field", "value") if f"compare_{k}" in attrs)
    return StudySpec(name=study.study_name, storage=storage, space=space,
                     base=run_config_from_dict(attrs["base_config"]), model=attrs["model_preset"],
                     recipe=attrs["recipe"], budget=attrs["budget"],
                     budget_epochs=int(attrs["budget_epochs"]), sampler=attrs["sampler"], pruner=attrs["pruner"],
                     seed=int(attrs["seed"]), results=results, compare=compare,
                     first_rung=attrs.get("pruner_first_rung"), reduction=int(attrs.get("pruner_reduction", 3)),
                     bootstrap=int(attrs.get("pruner_bootstrap", 0)), max_rungs=attrs.get("pruner_max_rungs"))
