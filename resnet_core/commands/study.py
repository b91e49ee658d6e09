"""Run an Optuna study of the ResNet harness (thin driver: flags -> resnet_core.study -> reports).

    resnet-study --trials 50                         # recipe of resnet20, quick budget, then a final run
    resnet-study --trials 50 --final-seeds 3 --final-epochs 10   # the best config re-trained 3 times, 10 epochs
    resnet-study --trials 50 --space architecture --budget standard --workers 4
    resnet-study --trials 20 --space architecture --compare residual --final-seeds 3
    resnet-study --add 10 --study-name NAME          # 10 more finished trials

(From a checkout, ``python studies/run.py`` is the same command.)

--trials N is the number of FINISHED trials (COMPLETE + PRUNED) the study should hold: running
the same command again after an interruption runs only what is missing. The objective is the
validation error of the final epoch; the test set is never used to choose. The final stage then
re-trains the best config with --final-seeds new seeds on the full training split (validation held
out), trains the untuned baseline (the space's recipe) alike on the same seeds, and reports both test
errors and their paired difference with 95% intervals in best.json and report.md.

Several hosts: start the same command with the same --storage postgresql://... and --study-name
on each; they share one study and stop together when it holds N finished trials. A host that dies
mid-trial is noticed after --stale-after seconds without a heartbeat: its trial is failed and run
again by a surviving host (from its checkpoint when --results is a shared folder).
Ctrl-C or SIGTERM stops cleanly (the running trial keeps its record and checkpoint; exit code 130).
Exit codes: 0 the target was reached, 1 it was not (trials failed, or --timeout), 2 a usage error
(one line, before any training), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

import optuna

from resnet_core.cli import UsageError, check_flags, check_positive_seconds, entry
from resnet_core.commands.parsers import study_parser as build_parser
from resnet_core.config import default_data_source, parse_assignments
from resnet_core.runner import check_fuse, check_parallelism
from resnet_core.study import StudyOrder, StudyRequest, execute_study, plan_study, report_study


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_numbers(args)
    plan = plan_study(order_from(args))
    print("\n".join(plan.lines), flush=True)
    if args.dry_run:
        return 0
    for line in execute_study(plan):
        print(line)
    report = report_study(plan)
    print("\n".join(report.lines))
    for warning in report.warnings:
        print(warning, file=sys.stderr)
    return 0 if report.reached else 1


def order_from(args: argparse.Namespace) -> StudyOrder:
    """The flags as a study order: the question (a StudyRequest) and how to run it."""
    request = StudyRequest(
        space=args.space, model=args.model, epochs=args.epochs, iterations=args.iterations,
        data=args.data or default_data_source(), subset=args.subset, val_size=args.val_size, seed=args.seed or 0,
        overrides=tuple(parse_assignments(args.set).items()), sampler=args.sampler, pruner=args.pruner,
        storage=args.storage, study_name=args.study_name, results=args.results, stale_after=args.stale_after,
        compare=args.compare)
    values = tuple(v.strip() for v in args.compare_values.split(",") if v.strip()) if args.compare_values else None
    return StudyOrder(
        request, budget=args.budget, trials=args.trials, add=args.add, workers=args.workers, device=args.device,
        workers_per_gpu=args.workers_per_gpu, threads=args.threads, memory_fraction=args.gpu_memory_fraction,
        fuse=args.fuse, timeout=args.timeout, allow_change=args.allow_change, compare_values=values,
        final_seeds=args.final_seeds, final_epochs=args.final_epochs, final_top=args.final_top,
        concurrency_from=args.concurrency_from, figures=not args.no_figures, progress=not args.quiet,
        dry_run=args.dry_run)


def _check_numbers(args: argparse.Namespace) -> None:
    """Counts and budgets that cannot be negative: one line naming the flag, before any work."""
    if (args.trials is None) == (args.add is None):
        raise UsageError("give exactly one of --trials N (target finished trials) and --add N")
    for name, meaning in (("trials", "finished trials"), ("add", "more finished trials")):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UsageError(f"--{name} {value}: expected an integer >= 0 ({meaning})")
    check_flags(args)
    check_positive_seconds(args, "timeout", "stale_after")
    check_parallelism(args.workers, args.workers_per_gpu, args.threads, args.gpu_memory_fraction)
    check_fuse(args.fuse)


def console() -> None:
    """``resnet-study``: a scheduler's SIGTERM stops like Ctrl-C (record and checkpoint kept, exit 130);
    figures are files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the command's choice: failed trials get one line each
    entry(main)


if __name__ == "__main__":
    console()
