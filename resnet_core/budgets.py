"""Budgets: how long runs train, on how much data, and the schedule shape that length needs.

One class serves grids and studies. A budget is applied on top of a recipe (``recipes.RECIPES``):
it sets the run's length (epochs or iterations), the training subset, the settings every run of
the budget shares (schedule, warm-up) and conditional settings the source of the budget used
(the paper's ResNet-110 warm-up). Command-line length flags replace the budget's length.

Why short budgets change the schedule: every residual branch starts with BatchNorm gamma 1, so the
identity path grows with depth and a deep net at the paper's lr 0.1 from step 0 spikes in its first
steps (loss 10-17 for ResNet-56). Over the paper's 64k iterations that is a blip; over a few hundred
it eats the budget and the deep *residual* nets look degraded too. A gradual warm-up (one-cycle's
ramp here) removes the spike for every cell alike, so the grid still compares like with like.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

Pairs = tuple[tuple[str, Any], ...]
AUTO = "auto"


@dataclass(frozen=True)
class SearchShape:
    """How a study searches within its budget's run length (grids have none).

    ``pruner`` is the default of ``--pruner``; for successive halving and Hyperband ``first_rung`` is
    the first epoch a trial is judged at (``None``: right after the pruner's warm-up), ``reduction``
    the factor of trials dropped at each rung and ``max_rungs`` how many rungs judge a trial (``None``:
    every rung first x reduction^k before the last epoch), ``hold_back`` how many trials stop at a rung
    before any goes on (Optuna's ``bootstrap_count``; ``None``: ``pruners.bootstrap_for``'s rule by
    the study's size); ``final_seeds`` is the default of
    ``--final-seeds`` (the final stage's re-training seeds); ``val_size`` the validation images
    trials are judged on when no ``--val-size`` is given, a ceiling: data whose default split is
    smaller keep it (``splits.capped_val_size``). Grids keep the split's default (their tables
    compare with the paper's 45k/5k split).
    """

    pruner: str = "median"
    first_rung: int | None = None
    reduction: int = 3
    max_rungs: int | None = None
    hold_back: int | None = None
    final_seeds: int = 3
    val_size: int | None = None


@dataclass(frozen=True)
class Budget:
    """A named training budget; see the module docstring for how it is applied.

    ``recipe`` names the base recipe (studies); ``None`` keeps the grid's own. ``train`` holds
    settings applied to every run; ``rules`` are ``(match, set)`` pairs applied after a grid's axes.
    A study budget also has a ``search`` shape (:class:`SearchShape`).
    """

    name: str
    epochs: int | None = None
    iterations: int | None = None
    subset: int | None = None
    recipe: str | None = None
    train: Pairs = ()
    rules: tuple[tuple[Pairs, Pairs], ...] = ()
    note: str = ""
    search: SearchShape = SearchShape()

    def with_length(self, epochs: int | None = None, iterations: int | None = None,
                    subset: int | None = None) -> Budget:
        """The budget with command-line length flags applied (a flag replaces, never adds)."""
        changes: dict[str, Any] = {}
        if epochs is not None:
            changes.update(epochs=epochs, iterations=None)
        if iterations is not None:
            changes.update(iterations=iterations, epochs=None)
        if subset is not None:
            changes["subset"] = subset
        return dataclasses.replace(self, **changes) if changes else self

    def settings(self) -> dict[str, Any]:
        """Config settings (``apply_overrides`` names) every run of this budget gets."""
        values: dict[str, Any] = dict(self.train)
        if self.epochs is not None:
            values["epochs"] = self.epochs
        elif self.iterations is not None:
            values["iterations"] = self.iterations
        if self.subset is not None:
            values["subset"] = self.subset
        return values

    def length_text(self, length_axis: str | None = None) -> str:
        """``4 epochs on 10,000 training images``; a grid's length axis replaces the length."""
        length = (f"{self.epochs} epoch{'s' * (self.epochs != 1)}" if self.epochs is not None
                  else f"{self.iterations:,} iteration{'s' * (self.iterations != 1)}")
        if length_axis is not None:
            length = f"the length from the grid's {length_axis!r} axis"
        data = f" on {self.subset:,} training images" if self.subset is not None else " on the whole training split"
        return length + data


# He et al. 2015 §4.2: "we use 0.01 to warm up the training until the training error is below 80%
# (about 400 iterations), and then go back to 0.1" -- for ResNet-110 only.
PAPER_RESNET110_WARMUP = (((("depth", 110),), (("warmup_iterations", 400),)),)

GRID_BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        "quick", epochs=4, subset=10000, train=(("schedule", "onecycle"), ("warmup_iterations", 0)),
        note="CPU-sized; one-cycle schedule (lr ramps up from lr/25 over the first "
             "30% of iterations, then anneals), the same for every cell"),
    "standard": Budget(
        "standard", epochs=40, train=(("warmup_fraction", 0.02), ("warmup_iterations", 0)),
        note="GPU-sized; the recipe's schedule with a linear warm-up over the first "
             "2% of iterations (Goyal et al. 2017), the same for every cell"),
    "paper": Budget(
        "paper", iterations=64000, rules=PAPER_RESNET110_WARMUP,
        note="He et al. 2015: ~182 epochs of 45k images, the recipe as published, "
             "with the paper's lr-0.01 warm-up for 400 iterations at depth 110 only"),
}

# Studies are multi-fidelity by default (Optuna's documentation pairs TPE with Hyperband or successive
# halving): most trials stop after a short first rung and the best 1/reduction go on (Li et al. 2020,
# asynchronous successive halving). One rung with a large reduction: a 50-trial study must leave
# several trials at the full length, since the report's importances, rankings and tuned-vs-baseline
# comparison stand on them. Simulated with Optuna's own pruner (``pruners.simulated_work``, trials of
# random quality), rungs at 1 x 4^k or 1 x 3^k, or any hold-back, leave 0 or 1 complete trials in some
# studies; one rung keeping the best 1/8 with no hold-back left at least 5 in every simulation.
STUDY_BUDGETS: dict[str, Budget] = {
    # Sized for a 2-core CPU: a 50-trial study, its final stage and its untuned baseline should finish in
    # about ten minutes. A study spends about one epoch of the subset per trial at the rung, plus the
    # epochs of the trials that go on (1/8 of them, each to the full length), plus a validation pass per
    # rung reached, plus two final runs: the subset and the validation size set its time, epochs x subset
    # (the images a full trial sees) its accuracy. Hence 10 epochs of 3,250 images, judged on 2,000
    # validation images (a ceiling: smaller data keep their default split), since measuring 5,000 was a
    # large share of a rung-1 trial.
    # Its evaluation batch is 128: on a 2-core CPU resnet20 infers faster in batches of 128 than of
    # 1,000 (which overflows the caches; `python benchmarks/eval_batch.py`), and a batch's size changes
    # no result in eval mode.
    "quick": Budget("quick", epochs=10, subset=3250, recipe="quick",
                    search=SearchShape(pruner="sha", first_rung=1, reduction=8, max_rungs=1, hold_back=0,
                                       final_seeds=1, val_size=2000),
                    train=(("eval_batch_size", 128), ("cycle_momentum", True)),
                    note="CPU-sized: up to 10 one-cycle epochs (momentum cycling 0.95-0.85-0.95 against the lr) "
                         "on 3,250 images, judged on 2,000 validation images; successive halving keeps the best "
                         "1/8 after epoch 1"),
    "standard": Budget("standard", epochs=30, recipe="paper",
                       search=SearchShape(pruner="sha", first_rung=3, reduction=8, max_rungs=1, hold_back=0),
                       note="GPU-sized: up to 30 epochs on the 45k split, steps at 50%/75%; successive "
                            "halving keeps the best 1/8 after epoch 3"),
    "paper": Budget("paper", iterations=64000, recipe="paper", search=SearchShape(pruner="median"),
                    note="He et al. 2015: 64k iterations, batch 128 (~182 epochs); median pruner"),
}


def lookup(name: str, table: dict[str, Budget], allow_auto: bool = False) -> Budget:
    """A budget by name; an unknown name is a one-line error listing the known ones."""
    if name not in table:
        known = ([AUTO] if allow_auto else []) + list(table)
        raise ValueError(f"--budget {name!r} is invalid: expected one of {', '.join(known)}")
    return table[name]


def auto_grid_budget(device_type: str) -> tuple[str, str]:
    """(budget name, why) for ``--budget auto``: the paper's length on a GPU, quick elsewhere."""
    if device_type == "cuda":
        return "paper", "auto: a CUDA device is available, so the paper's 64k iterations"
    return "quick", (f"auto: no GPU (device {device_type}); the paper's 64k iterations would take days here, "
                     "pass --budget paper to insist")


def resolve_study_budget(name: str, device_type: str) -> tuple[Budget, str]:
    """The study budget for ``--budget NAME``: ``auto`` is standard (30 epochs a trial) on a GPU and
    quick on anything else, since a study multiplies a run's time by its trials."""
    if name == AUTO:
        if device_type == "cuda":
            return STUDY_BUDGETS["standard"], "auto: a CUDA device is available"
        return STUDY_BUDGETS["quick"], f"auto: no GPU (device {device_type}), so the CPU-sized budget"
    return lookup(name, STUDY_BUDGETS, allow_auto=True), "as asked (--budget)"


def resolve_grid_budget(name: str, device_type: str) -> tuple[Budget, str]:
    """The grid budget for ``--budget NAME`` (``auto`` by device) and the reason it was chosen."""
    if name == AUTO:
        chosen, why = auto_grid_budget(device_type)
        return GRID_BUDGETS[chosen], why
    return lookup(name, GRID_BUDGETS, allow_auto=True), "as asked (--budget)"
