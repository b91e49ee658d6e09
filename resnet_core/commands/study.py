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
from pathlib import Path

import optuna

from resnet_core import study as st
from resnet_core.budgets import resolve_study_budget
from resnet_core.cli import UsageError, check_flags, check_positive_seconds, entry
from resnet_core.commands.parsers import study_parser as build_parser
from resnet_core.config import default_data_source, parse_assignments
from resnet_core.devices import resolve_device, worker_devices
from resnet_core.migrate import print_migration
from resnet_core.runner import WorkerPool, check_fuse, check_parallelism, fuses


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_numbers(args)
    # Records named by an older run-id schema: renamed, so trials find them (a dry run only says so).
    print_migration(args.results, dry_run=args.dry_run)
    devices = worker_devices(args.workers, args.device, args.workers_per_gpu)
    single = len(devices) == 1
    data_device = _data_device(devices[0]) if single else "cpu"  # several workers: each loads its own copy
    budget, why = resolve_study_budget(args.budget, resolve_device(devices[0]).type)
    setup, data = st.plan(st.StudyRequest(
        space=args.space, model=args.model, budget=budget.name, epochs=args.epochs, iterations=args.iterations,
        data=args.data or default_data_source(), subset=args.subset, val_size=args.val_size, seed=args.seed or 0,
        overrides=tuple(parse_assignments(args.set).items()), sampler=args.sampler, pruner=args.pruner,
        storage=args.storage, study_name=args.study_name, results=args.results, stale_after=args.stale_after,
        compare=args.compare, data_device=data_device, trials=args.add if args.add is not None else args.trials,
    ))
    specs = st.compare_specs(setup.spec, args.compare, _values(args.compare_values)) if args.compare else [setup.spec]
    for spec in specs:  # a resumed study asked another question is refused here, dry run or not
        st.check_resumable(spec, args.allow_change)
    targets = [_target(args, st.current_counts(s)["finished"]) for s in specs]
    stage = final_stage(args, budget)
    _print_plan(setup, specs, targets, devices, args, stage, why)
    if args.dry_run:
        return 0
    for spec, target in zip(specs, targets):
        st.run_study(spec, target, devices, timeout=args.timeout, data=data if single else None,
                     progress=not args.quiet, threads=args.threads, allow_change=args.allow_change,
                     memory_fraction=args.gpu_memory_fraction)
    pool = WorkerPool(tuple(devices), args.threads, args.gpu_memory_fraction, fuse=fuses(args.fuse, devices))
    _final_stage(specs, stage, pool, not args.quiet)
    out = st.write_reports(setup.spec.name, setup.spec.storage, args.results, figures=not args.no_figures)
    reached = _print_outcome(specs, targets, out)
    for warning in st.report_warnings(setup.spec.storage, args.results):
        print(warning, file=sys.stderr)
    return 0 if reached else 1


def _check_numbers(args: argparse.Namespace) -> None:
    """Counts and budgets that cannot be negative: one line naming the flag, before any work."""
    if (args.trials is None) == (args.add is None):
        raise UsageError("give exactly one of --trials N (target finished trials) and --add N")
    for name, meaning in (("trials", "finished trials"), ("add", "more finished trials")):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UsageError(f"--{name} {value}: expected an integer >= 0 ({meaning})")
    if args.final_seeds is not None and args.final_seeds < 0:
        raise UsageError(f"--final-seeds {args.final_seeds}: expected an integer >= 0 (0 skips the final stage)")
    if args.final_epochs is not None and args.final_epochs < 1:
        raise UsageError(f"--final-epochs {args.final_epochs}: expected an integer >= 1")
    check_flags(args)
    check_positive_seconds(args, "timeout", "stale_after")
    check_parallelism(args.workers, args.workers_per_gpu, args.threads, args.gpu_memory_fraction)
    check_fuse(args.fuse)


def _data_device(device: str) -> str:
    return str(resolve_device(device))


def _values(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def _target(args: argparse.Namespace, finished: int) -> int:
    return finished + args.add if args.add is not None else args.trials


def final_stage(args: argparse.Namespace, budget) -> st.FinalStage:
    """--final-seeds (default: the budget's; 3 per value with --compare, whose interval needs seeds)."""
    seeds = args.final_seeds if args.final_seeds is not None else (3 if args.compare else budget.search.final_seeds)
    return st.FinalStage(seeds, args.final_epochs, args.final_top)


def _print_plan(setup, specs, targets, devices, args, stage: st.FinalStage, why: str) -> None:
    done = [st.current_counts(s)["finished"] for s in specs]
    measured = (st.concurrency_from_bench(args.concurrency_from, setup.spec.base.train.batch_size)
                if args.concurrency_from else None)
    timing = st.estimate(setup.spec, setup.train_size, setup.eval_size, devices,
                         sum(max(0, t - d) for t, d in zip(targets, done)), args.threads, measured)
    for line in st.plan_lines(setup, setup.spec, sum(targets), sum(done), devices, timing, why):
        print(line)
    if args.compare:
        print(f"compare  {args.compare}: {len(specs)} sub-studies ({', '.join(s.name for s in specs)}), "
              f"{targets[0]} finished trials each, then the final stage per value")
    print(f"final    {stage.describe() if stage.seeds else 'skipped (--final-seeds 0)'}")
    sys.stdout.flush()


def _final_stage(specs, stage: st.FinalStage, pool: WorkerPool, progress: bool) -> None:
    """The best config of each (sub-)study re-trained by the trials' workers, every value's seeds at
    once (finished runs are found, not trained again)."""
    if stage.seeds == 0:
        return
    studies = [(spec, optuna.load_study(study_name=spec.name, storage=st.open_storage(spec.storage, spec.stale_after)))
               for spec in specs]
    for (spec, _), records in zip(studies, st.train_finals(studies, stage, pool, progress)):
        if not records:
            print(f"{spec.name}: no COMPLETE trial, no final stage")


def _print_outcome(specs, targets, out: Path) -> bool:
    """One line per (sub-)study; True when every one reached its target of finished trials."""
    reached = True
    for spec, target in zip(specs, targets):
        c = st.current_counts(spec)
        reached &= c["finished"] >= target
        status = "reached" if c["finished"] >= target else "NOT reached"
        print(f"{spec.name}: {c['finished']} finished ({c['complete']} complete, {c['pruned']} pruned), "
              f"{c['failed']} failed; target {target} {status}")
    print("\n".join(st.console_summary(out)))
    return reached


def console() -> None:
    """``resnet-study``: a scheduler's SIGTERM stops like Ctrl-C (record and checkpoint kept, exit 130);
    figures are files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the command's choice: failed trials get one line each
    entry(main)


if __name__ == "__main__":
    console()
