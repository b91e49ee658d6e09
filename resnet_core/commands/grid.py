"""Run an ablation grid: every cell x seed is one fit(); finished runs are never trained again.

    resnet-grid --grid degradation                                   # budget auto: quick on a CPU, paper on a GPU
    resnet-grid --grid degradation --budget standard                 # 40 epochs (GPU-sized)
    resnet-grid --grid degradation --axis epochs=1,2,4,8             # how long until the effect shows?
    resnet-grid --grid degradation --axis depth=20,32,44,56,110      # add ResNet-110
    resnet-grid --grid degradation --seeds 1 --epochs 3 --subset 10000 --workers 1
    resnet-grid --grid my_grid.toml --dry-run                        # a user's grid file
    resnet-grid --grid degradation --dask tcp://HOST:8786            # on a Dask cluster
    resnet-grid --grid degradation --dask local:4                    # a local Dask cluster

(From a checkout, ``python ablation/run.py`` is the same command.) Built-in grids live in
resnet_core/grids/*.toml (format: resnet_core/grid.py). Run records go to
<results>/runs/, the report (summary.csv, report.md, figures) to <results>/ablation/<grid>/.
With --dask the workers train and this process writes the records (resnet_core/dask_runner.py).
Re-running the same command resumes an interrupted grid; Ctrl-C or SIGTERM stops it cleanly.
Exit codes: 0 done (diverged runs are results), 1 some run failed (see the summary), 2 a usage
error (reported before anything trains), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time

from resnet_core import grid as grids
from resnet_core.budgets import AUTO, Budget, resolve_grid_budget
from resnet_core.cli import UsageError, check_flags, entry
from resnet_core.commands.parsers import grid_parser as build_parser
from resnet_core.config import DataConfig, RunConfig, default_data_source, parse_assignments, resolve_field
from resnet_core.data import load_data
from resnet_core.devices import resolve_device
from resnet_core.engine import check_fits_data, estimate_seconds, measure_step_rate
from resnet_core.grid_manifest import report_dir, save_manifest
from resnet_core.grid_report import build_grid_report, skipped_warning, write_report
from resnet_core.reports import plural
from resnet_core.migrate import print_migration
from resnet_core.runner import (
    MAX_FUSED, check_fuse, check_parallelism, check_writable, finished, fuses, plan_devices, preload_data, run_all, split_done,
)
from resnet_core.store import misnamed_warning, runs_dir

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_flags(args)
    return args


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """Command-line settings applied to every run, after the grid file (the length goes through the budget)."""
    values = {"data.source": args.data, "data.val_size": args.val_size}
    given = {name: value for name, value in values.items() if value is not None}
    return {**given, **parse_assignments(args.set)}


LENGTH_FIELDS = ("train.epochs", "train.iterations")


def length_axis(spec: grids.GridSpec) -> str | None:
    """The grid's axis that sets the run length (epochs or iterations), if it has one."""
    names = [name for name, _ in spec.axes if name not in grids.NAMED_AXES and grids.resolve_field(name) in LENGTH_FIELDS]
    return names[0] if names else None


def choose_budget(args: argparse.Namespace, spec: grids.GridSpec, client=None) -> tuple[Budget, str]:
    """The budget (``--budget``, with --epochs/--iterations/--subset replacing its length) and why;
    with --dask, ``auto`` goes by the devices of the cluster's workers (``client``), not this driver's."""
    if client is None:
        device_type = resolve_device(args.device).type
    else:
        device_type = dask_runner().cluster_device_type(client, args.device) if args.budget == AUTO else "cpu"
    budget, why = resolve_grid_budget(args.budget, device_type)
    axis = length_axis(spec)
    if axis and (args.epochs is not None or args.iterations is not None):
        raise ValueError(f"--epochs/--iterations and the axis {axis!r} both set the length: give one")
    return budget.with_length(args.epochs, args.iterations, args.subset), why


def fit_subset(args: argparse.Namespace, budget: Budget, why: str, spec: grids.GridSpec) -> tuple[Budget, str]:
    """A budget's subset is a ceiling: data with fewer training images (after validation) train on
    all of them, and the plan line says so. With --dask the data may live only on the workers: where
    this driver cannot read them, the budget's subset stands."""
    settings = overrides(args)
    if budget.subset is None or args.subset is not None:
        return budget, why
    first = next(grids.iter_cells(spec, settings, dataclasses.replace(budget, subset=None)))
    try:
        pool = len(load_data(first.run.data, "cpu").train_y)
    except OSError:
        if not args.dask:
            raise
        return budget, why
    if pool >= budget.subset:
        return budget, why
    return dataclasses.replace(budget, subset=None), f"{why}; the data hold {pool:,} training images, fewer than its subset"


def size_line(spec: grids.GridSpec, runs: int) -> str:
    seeds = len(spec.seeds)
    return f"grid {spec.name}: {plural(runs, 'run')} ({plural(runs // seeds, 'cell')} x {plural(seeds, 'seed')})"


def budget_line(budget: Budget, why: str, axis: str | None) -> str:
    return f"budget {budget.name} ({why}): {budget.length_text(axis)}; {budget.note}"


def fusion_line(args: argparse.Namespace, seeds: int) -> str:
    """How the grid's seeds train: as one fused model per cell, or one run at a time (``--fuse``)."""
    if args.dask:
        if args.fuse == "on":
            raise UsageError("--fuse on is not available with --dask (a Dask worker trains one run at a time): "
                             "leave --fuse out, or train on local workers")
        return "fusion: off (a Dask cluster trains each run alone)"
    on = fuses(args.fuse, plan_devices(args.workers, args.device, args.workers_per_gpu))
    if not on:
        return f"fusion: off (--fuse {args.fuse}{': not on a GPU' if args.fuse == 'auto' else ''}): each run trains alone"
    return (f"fusion: on (--fuse {args.fuse}): the {seeds} seeds of a cell train as one model "
            f"(at most {MAX_FUSED} a group); the estimate counts runs one at a time")


def grid_sets_data(spec: grids.GridSpec) -> bool:
    """Whether the grid file names its data (in [fixed], an axis, a cell or a rule)."""
    pairs = [*spec.fixed, *spec.axes, *(p for v in spec.variants for p in v.settings),
             *(p for r in spec.rules for p in r.set)]
    return any(name not in grids.NAMED_AXES and resolve_field(name) == "data.source" for name, _ in pairs)


def build_spec(args: argparse.Namespace) -> grids.GridSpec:
    spec = grids.load_grid(args.grid)
    for text in args.axis:
        spec = grids.with_axis(spec, *grids.parse_axis_option(text))
    return grids.with_seeds(spec, args.seeds) if args.seeds is not None else spec


LISTED_CELLS = 50  # a dry run lists this many cells; the rest of a huge grid is counted in one line
PROGRESS_EVERY_S = 2.0  # seconds between a dry run's progress lines (stderr)


def rate_key(run: RunConfig) -> tuple:
    """What a training step's speed depends on: the model and the batch's size and precision."""
    return run.model, run.train.batch_size, run.train.amp, run.train.channels_last, run.train.compile


class DryRun:
    """A dry run's running totals: cells stream through it one at a time (a 100k-run grid is never
    held in memory), and each distinct model's step rate is measured once, not once per cell."""

    def __init__(self, results: str, device: str, total: int, migrated: frozenset[str] = frozenset()):
        self.results, self.device, self.total, self.migrated = results, device, total, migrated
        # No record file at all (a new grid): nothing can be done, and no run id need be hashed.
        self.recorded = {p.stem for p in runs_dir(results).glob("*.json")}
        self.rates: dict[tuple, float] = {}
        self.sizes: dict[DataConfig, tuple[int, int, int, int]] = {}
        self.cells: dict[str, list] = {}  # label -> [runs, done, rate key] of the listed cells
        self.runs = self.done = 0
        self.seconds = 0.0
        self.started = self.shown = time.monotonic()

    def add(self, cell: grids.Cell) -> None:
        done = cell.run_id in self.migrated or (
            bool(self.recorded) and cell.run_id in self.recorded and finished(cell.run, self.results) is not None)
        self.runs += 1
        self.done += done
        if not done:
            train_size, eval_size, classes, channels = self._sizes(cell.run.data)
            check_fits_data(cell.run, classes, channels)  # what training would refuse, refused now
            self.seconds += estimate_seconds(cell.run, self._rate(cell), train_size, eval_size)
        if cell.label in self.cells or len(self.cells) < LISTED_CELLS:
            counts = self.cells.setdefault(cell.label, [0, 0, rate_key(cell.run)])
            counts[0] += 1
            counts[1] += done
        if time.monotonic() - self.shown >= PROGRESS_EVERY_S:
            self.shown = time.monotonic()
            self._say(f"{self.runs:,} of {plural(self.total, 'run')} checked")

    def _rate(self, cell: grids.Cell) -> float:
        key = rate_key(cell.run)
        if key not in self.rates:
            self._say(f"measuring the step rate of model {len(self.rates) + 1} ({cell.label})")
            self.rates[key] = measure_step_rate(dataclasses.replace(cell.run, device=self.device), steps=3)
        return self.rates[key]

    def _sizes(self, cfg: DataConfig) -> tuple[int, int, int, int]:
        """(training images, evaluated images, classes, image channels) of the data ``cfg`` loads."""
        if cfg not in self.sizes:
            data = load_data(cfg, "cpu")
            self.sizes[cfg] = (len(data.train_y), len(data.val_y) + len(data.test_y),
                               data.num_classes, data.train_x.shape[1])
        return self.sizes[cfg]

    def _say(self, message: str) -> None:
        print(f"dry run: {message}; {len(self.rates)} model(s) measured, "
              f"{time.monotonic() - self.started:.0f} s", file=sys.stderr, flush=True)


def print_plan(spec: grids.GridSpec, settings: dict[str, object], budget: Budget, results: str,
               devices: tuple[str, ...], migrated: frozenset[str] = frozenset()) -> None:
    """The dry run: the cells with their finished seeds, and a time estimate from one measured step
    rate per distinct model. Cells are built (and so checked) one at a time. ``migrated``: ids of
    finished runs whose records a real run would first rename from an older run-id schema."""
    plan = DryRun(results, devices[0], grids.run_count(spec), migrated)
    for cell in grids.iter_cells(spec, settings, budget):
        plan.add(cell)
    for label, (runs, done, key) in plan.cells.items():
        rate = f"{plan.rates[key]:.0f} img/s" if key in plan.rates else "-"
        print(f"  {label:<48} seeds {runs}  done {done}  {rate}")
    listed = sum(runs for runs, _, _ in plan.cells.values())
    if plan.runs > listed:
        print(f"  ... and {plural(plan.runs - listed, 'more run')} in further cells")
    # Runs on distinct GPUs overlap; CPU workers share the same cores, so they barely do.
    parallel = len(set(devices)) if resolve_device(devices[0]).type == "cuda" else 1
    where = ", ".join(sorted({str(resolve_device(d)) for d in devices}))
    rates = ", ".join(f"{rate:.0f}" for rate in plan.rates.values()) or "-"
    print(f"{plural(plan.runs, 'run')}, {plan.done} already done; estimated {_duration(plan.seconds / parallel)} for the rest on "
          f"{where} (rough: measured step rate of each of {len(plan.rates)} distinct model(s): {rates} img/s; "
          f"{parallel} in parallel)")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def print_summary(cells: list[grids.Cell], outcomes) -> int:
    """One line per run that did not complete; returns the exit code (1 if any run failed)."""
    counts: dict[str, int] = {}
    for cell, outcome in zip(cells, outcomes):
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.status != "completed":
            print(f"  {outcome.status}: {cell.label}, seed {cell.seed} ({outcome.run_id}): {outcome.error or ''}")
    print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return 1 if counts.get("failed", 0) else 0


def run_local(args: argparse.Namespace, spec: grids.GridSpec, cells: list[grids.Cell], budget: dict):
    """The cells in local worker processes (joblib), one device slot each."""
    runs = [c.run for c in cells]
    plan_devices(args.workers, args.device, args.workers_per_gpu)  # an unavailable device: one line, now
    # A missing dataset is one error now, not a failed record per run; the decode cache gets built once.
    preload_data(split_done(runs, args.results)[1])
    save_manifest(args.results, spec, cells, budget)
    return run_all(runs, args.results, workers=args.workers, device=args.device,
                   workers_per_gpu=args.workers_per_gpu, desc=spec.name, threads=args.threads,
                   progress=not args.quiet, memory_fraction=args.gpu_memory_fraction, fuse=args.fuse)


def dask_runner():
    """resnet_core.dask_runner, or a one-line error when the optional "scale" extra is missing."""
    try:
        from resnet_core import dask_runner as module
    except ModuleNotFoundError as exc:
        raise ValueError(f"--dask needs {exc.name!r}: pip install 'resnet-core[scale]'") from None
    return module


def run_dask(args: argparse.Namespace, spec: grids.GridSpec, cells: list[grids.Cell], budget: dict, client):
    """The cells on a Dask cluster. The device and the data are the workers' (this driver needs neither)."""
    workers = len(client.scheduler_info(n_workers=-1)["workers"])
    print(f"dask scheduler {client.scheduler.address}: {workers} worker(s) now" + ("" if workers else ", waiting for some"))
    save_manifest(args.results, spec, cells, budget)
    return dask_runner().run_all_dask([c.run for c in cells], args.results, client, threads=args.threads, desc=spec.name)


def cluster(args: argparse.Namespace):
    """The Dask client of ``--dask`` for the whole command (None without it): --budget auto asks its workers."""
    return dask_runner().dask_client(args.dask) if args.dask else contextlib.nullcontext(None)


def write_and_print_report(results: str, grid_name: str) -> None:
    report = build_grid_report(results, grid_name)
    for path in write_report(report, report_dir(results, grid_name)):
        print(path)
    for warning in (skipped_warning(report, results), misnamed_warning(report.misnamed, results)):
        if warning:
            print(warning, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_parallelism(args.workers, args.workers_per_gpu, args.threads, args.gpu_memory_fraction)
    check_fuse(args.fuse)
    if args.dask:
        dask_runner().local_workers(args.dask)  # a malformed local:N is a usage error too
    spec = build_spec(args)
    if args.data is None and not grid_sets_data(spec):
        args.data = default_data_source()  # $RESNET_CORE_DATA, recorded in every run's config
    with cluster(args) as client:
        return run_grid(args, spec, client)


def run_grid(args: argparse.Namespace, spec: grids.GridSpec, client) -> int:
    """Plan, train (locally, or on the Dask ``client``) and report the grid; returns the exit code."""
    budget, why = choose_budget(args, spec, client)
    # Records and checkpoints named by an older run-id schema are renamed before anything is counted
    # (a dry run writes nothing: it says what would be renamed).
    migration = print_migration(args.results, (cell.run for cell in grids.iter_cells(spec, overrides(args), budget)),
                                dry_run=args.dry_run)
    axis = length_axis(spec)
    if args.dry_run:  # cells are built one at a time as the plan goes: a huge grid starts printing at once
        total = grids.run_count(spec)
        print(size_line(spec, total))
        budget, why = fit_subset(args, budget, why, spec)
        print(budget_line(budget, why, axis))
        print(fusion_line(args, len(spec.seeds)))
        print_plan(spec, overrides(args), budget, args.results,
                   plan_devices(args.workers, args.device, args.workers_per_gpu), migration.done_ids)
        return 0
    cells = grids.expand(spec, overrides(args), budget)  # every config is validated before anything trains
    fitted, why = fit_subset(args, budget, why, spec)
    if fitted != budget:
        budget, cells = fitted, grids.expand(spec, overrides(args), fitted)
    print(size_line(spec, len(cells)))
    print(budget_line(budget, why, axis))
    print(fusion_line(args, len(spec.seeds)))
    chosen = {"name": budget.name, "why": why, "length": budget.length_text(axis), "note": budget.note}
    check_writable(args.results)
    outcomes = run_dask(args, spec, cells, chosen, client) if args.dask else run_local(args, spec, cells, chosen)
    code = print_summary(cells, outcomes)
    write_and_print_report(args.results, spec.name)
    return code


def console() -> None:
    """``resnet-grid``: SIGTERM stops the grid as Ctrl-C does (records flushed, exit 130)."""
    entry(main)


if __name__ == "__main__":
    console()
