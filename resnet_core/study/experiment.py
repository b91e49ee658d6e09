"""A study as one experiment, as a grid is one (``grid/``): what the command asks (a
:class:`StudyOrder`: the question and how to run it) -> :func:`plan_study` -> a frozen
:class:`StudyPlan` (everything checked before any trial, what is done, the console's plan lines
with the estimate) -> :func:`execute_study` (the trials on Optuna workers, then the final stage on
the trials' worker slots) -> :func:`report_study` (report files and the command's last lines).
``commands/study.py`` only turns flags into the order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from resnet_core.budgets import resolve_study_budget
from resnet_core.devices import resolve_device, worker_devices
from resnet_core.migrate import print_migration
from resnet_core.runner import WorkerPool, fuses
from resnet_core.study.compare import compare_specs
from resnet_core.study.final import FinalStage, train_finals
from resnet_core.study.estimate import concurrency_from_bench, estimate, plan_lines
from resnet_core.study.plan import Setup, StudyRequest, current_counts, plan, resumable_counts
from resnet_core.study.report import console_summary, report_warnings, write_reports
from resnet_core.study.spec import StudySpec
from resnet_core.study.storage import open_storage
from resnet_core.study.workers import run_study


@dataclass(frozen=True)
class StudyOrder:
    """A study as the command asks for it: the question (``request``; its budget, data device and
    trials are filled in by :func:`plan_study`) and how to run it. Exactly one of ``trials`` (the
    finished trials the study should hold) and ``add`` (more than it holds now) is given."""

    request: StudyRequest
    budget: str = "auto"  # a study budget's name, or auto (by the first worker's device)
    trials: int | None = None
    add: int | None = None
    workers: int = 1
    device: str = "auto"
    workers_per_gpu: int = 1
    threads: int | None = None
    memory_fraction: float | None = None
    fuse: str = "auto"  # the final stage's seeds as one fused model (runner.fuses)
    timeout: float | None = None
    allow_change: bool = False
    compare_values: tuple[str, ...] | None = None
    final_seeds: int | None = None  # None: the budget's (3 per value with --compare)
    final_epochs: int | None = None
    final_top: int = 1
    concurrency_from: str | None = None  # a benchmark result: workers sharing a GPU at its measured speed-up
    figures: bool = True
    progress: bool = True
    dry_run: bool = False


@dataclass(frozen=True)
class StudyPlan:
    """A checked study (or --compare group): its specs, the finished trials each should hold and holds
    now, the worker devices, the final stage, and what the console says before any trial."""

    order: StudyOrder
    setup: Setup
    specs: tuple[StudySpec, ...]
    targets: tuple[int, ...]
    done: tuple[int, ...]
    devices: tuple[str, ...]
    stage: FinalStage
    lines: tuple[str, ...]
    data: Any = field(default=None, compare=False, repr=False)  # the loaded DataBundle (one worker), else None


def plan_study(order: StudyOrder) -> StudyPlan:
    """Check and resolve ``order`` before any trial (a dry run too): the budget (``auto`` by device),
    the run-id migration of the results folder (once; a dry run only says what it would rename), the
    question (:func:`resnet_core.study.plan.plan`), a resumed study asked another question refused,
    the trials to run, the final stage and the estimate."""
    devices = tuple(worker_devices(order.workers, order.device, order.workers_per_gpu))
    budget, why = resolve_study_budget(order.budget, resolve_device(devices[0]).type)
    field_name = order.request.compare
    seeds = order.final_seeds if order.final_seeds is not None else (3 if field_name else budget.search.final_seeds)
    stage = FinalStage(seeds, order.final_epochs, order.final_top)  # its flags are refused before any work
    print_migration(order.request.results, dry_run=order.dry_run)
    single = len(devices) == 1
    trials = order.add if order.add is not None else order.trials or 0  # a rung holds back only in big studies
    request = dataclasses.replace(order.request, budget=budget.name, trials=trials,
                                  data_device=str(resolve_device(devices[0])) if single else "cpu")
    setup, data = plan(request)  # several workers: each loads its own copy of the data
    specs = tuple(compare_specs(setup.spec, field_name, list(order.compare_values) if order.compare_values else None)
                  if field_name else [setup.spec])
    done = tuple(resumable_counts(spec, order.allow_change)["finished"] for spec in specs)  # another question: refused
    targets = tuple(d + order.add if order.add is not None else order.trials for d in done)
    lines = _plan_lines(order, setup, specs, targets, done, devices, stage, why)
    return StudyPlan(order, setup, specs, targets, done, devices, stage, tuple(lines), data if single else None)


def _plan_lines(order: StudyOrder, setup: Setup, specs, targets, done, devices, stage: FinalStage,
                why: str) -> list[str]:
    """The console's plan: the study, its space and budget, the pruning, the trials and their time,
    the --compare group and the final stage."""
    measured = (concurrency_from_bench(order.concurrency_from, setup.spec.base.train.batch_size)
                if order.concurrency_from else None)
    to_run = sum(max(0, t - d) for t, d in zip(targets, done))
    timing = estimate(setup.spec, setup.train_size, setup.eval_size, list(devices), to_run, order.threads, measured,
                      final_runs=stage.seeds * (stage.top + 1) * len(specs), test_size=setup.test_size)
    lines = plan_lines(setup, setup.spec, sum(targets), sum(done), list(devices), timing, why)
    if order.request.compare:
        lines.append(f"compare  {order.request.compare}: {len(specs)} sub-studies ({', '.join(s.name for s in specs)}), "
                     f"{targets[0]} finished trials each, then the final stage per value")
    return lines + [f"final    {stage.describe() if stage.seeds else 'skipped (--final-seeds 0)'}"]


def execute_study(plan: StudyPlan) -> list[str]:
    """Run each (sub-)study's missing trials on the workers, then the final stage of every one in
    the trials' worker slots (finished runs are found, not trained again). Returns lines naming
    sub-studies without a final stage."""
    order = plan.order
    for spec, target in zip(plan.specs, plan.targets):
        run_study(spec, target, list(plan.devices), timeout=order.timeout, data=plan.data, progress=order.progress,
                  threads=order.threads, allow_change=order.allow_change, memory_fraction=order.memory_fraction)
    if plan.stage.seeds == 0:
        return []
    pool = WorkerPool(plan.devices, order.threads, order.memory_fraction, fuse=fuses(order.fuse, list(plan.devices)))
    studies = [(spec, optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage, spec.stale_after)))
               for spec in plan.specs]
    finals = train_finals(studies, plan.stage, pool, order.progress)
    return [f"{spec.name}: no COMPLETE trial, no final stage" for (spec, _), records in zip(studies, finals)
            if not records]


@dataclass(frozen=True)
class StudyReport:
    """What :func:`report_study` wrote and says: the report folder, the console's last lines, the
    warnings (for stderr) and whether every (sub-)study reached its target of finished trials."""

    out: Path
    lines: tuple[str, ...]
    warnings: tuple[str, ...]
    reached: bool


def report_study(plan: StudyPlan) -> StudyReport:
    """Write the reports (one study, or a --compare group's) and say how each (sub-)study ended:
    its trials by state against its target, then the best trial, the final stage's test errors and
    the tuned-minus-baseline difference, and where the reports are."""
    spec = plan.setup.spec
    results = plan.order.request.results
    out = write_reports(spec.name, spec.storage, results, figures=plan.order.figures)
    lines, reached = [], True
    for sub, target in zip(plan.specs, plan.targets):
        c = current_counts(sub)
        reached &= c["finished"] >= target
        lines.append(f"{sub.name}: {c['finished']} finished ({c['complete']} complete, {c['pruned']} pruned), "
                     f"{c['failed']} failed; target {target} {'reached' if c['finished'] >= target else 'NOT reached'}")
    lines += console_summary(out)
    return StudyReport(out, tuple(lines), tuple(report_warnings(spec.storage, results)), reached)
