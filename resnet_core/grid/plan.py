"""Planning a grid: one request (what the command line asks for) checked and resolved before anything
trains -- the grid file with its command-line edits, the budget (``auto`` by device; its subset a
ceiling on small data), the devices and fusion, the run-id migration (once per command, here) and every
run config, built and so validated. :func:`plan_grid` returns a frozen :class:`GridPlan`; a dry run builds
no cells (a huge grid streams through :mod:`resnet_core.grid.estimate` instead).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from resnet_core.budgets import AUTO, Budget, resolve_grid_budget
from resnet_core.cli import UsageError
from resnet_core.config import default_data_source, parse_assignments, resolve_field
from resnet_core.data import load_data
from resnet_core.devices import resolve_device
from resnet_core.grid.cells import Cell, expand, iter_cells, run_count
from resnet_core.grid.kinds import Pairs
from resnet_core.grid.spec import NAMED_AXES, GridSpec, load_grid, parse_axis_option, with_axis, with_seeds
from resnet_core.migrate import print_migration
from resnet_core.reports import plural
from resnet_core.runner import MAX_FUSED, check_fuse, check_parallelism, fuses, plan_devices
from resnet_core.splits import capped_subset
from resnet_core.store import check_writable

LENGTH_FIELDS = ("train.epochs", "train.iterations")


@dataclass(frozen=True)
class GridRequest:
    """What a driver asks for, in the command line's terms, before any check (``resnet-grid``'s flags)."""

    grid: str  # a built-in grid name or a .toml path
    axes: tuple[str, ...] = ()  # --axis FIELD=V1,V2: replace or add an axis
    seeds: int | None = None  # None: the grid file's
    budget: str = AUTO
    epochs: int | None = None  # replace the budget's length
    iterations: int | None = None
    subset: int | None = None  # replaces the budget's subset (a given subset is kept as given)
    data: str | None = None  # None: the grid file's data, else $RESNET_CORE_DATA
    val_size: int | None = None
    sets: tuple[str, ...] = ()  # --set field=value, applied to every run last
    device: str = "auto"
    workers: int = 0  # 0: one per GPU slot, or 1 on a CPU
    workers_per_gpu: int = 1
    threads: int | None = None  # torch threads per run (None: the cores over the workers)
    memory_fraction: float | None = None  # each worker's share of its GPU's memory
    fuse: str = "auto"
    results: str = "results"
    dask: str | None = None  # a Dask scheduler address or local:N
    dry_run: bool = False
    progress: bool = True


@dataclass(frozen=True)
class GridPlan:
    """A checked grid: what will train, on what budget and devices. ``cells`` holds every run (empty in a
    dry run); ``migrated`` the finished runs a real run would first rename from an older run-id schema."""

    request: GridRequest
    spec: GridSpec
    overrides: Pairs  # command-line settings of every run, applied after the grid file
    budget: Budget
    why: str  # why this budget (and its subset) was chosen
    devices: tuple[str, ...]  # one per local worker slot (empty for a real run on Dask)
    fuse: bool  # a cell's seeds train as one fused model
    migrated: frozenset[str] = frozenset()
    cells: tuple[Cell, ...] = ()

    @property
    def length_axis(self) -> str | None:
        return length_axis(self.spec)

    def iter_cells(self) -> Iterator[Cell]:
        """Each run, built when asked for (a dry run of a huge grid never holds them all)."""
        return iter_cells(self.spec, dict(self.overrides), self.budget)

    def budget_entry(self) -> dict[str, Any]:
        """The budget as the grid's manifest (and so its report) names it."""
        return {"name": self.budget.name, "why": self.why, "length": self.budget.length_text(self.length_axis),
                "note": self.budget.note}

    def lines(self) -> list[str]:
        """What the console says before anything trains: the grid's size, its budget, its fusion."""
        seeds, runs = len(self.spec.seeds), run_count(self.spec)
        return [f"grid {self.spec.name}: {plural(runs, 'run')} ({plural(runs // seeds, 'cell')} x {plural(seeds, 'seed')})",
                f"budget {self.budget.name} ({self.why}): {self.budget.length_text(self.length_axis)}; {self.budget.note}",
                fusion_line(self.request, self.fuse, seeds)]


def plan_grid(request: GridRequest, client=None) -> GridPlan:
    """Check and resolve ``request`` (with ``--dask``, ``client`` is the cluster's: ``--budget auto``
    asks its workers for their devices). A dry run writes nothing and builds no cells."""
    check_request(request)
    spec = build_spec(request)
    request = with_data(request, spec)
    budget, why = fit_subset(request, *choose_budget(request, spec, client), spec)
    devices = () if request.dask and not request.dry_run else plan_devices(request.workers, request.device,
                                                                           request.workers_per_gpu)
    fuse = fusion(request, devices)
    overrides = tuple(settings(request).items())
    cells = () if request.dry_run else tuple(expand(spec, dict(overrides), budget))  # all validated first
    if not request.dry_run:
        check_writable(request.results)  # an unwritable folder: one line now, not after a run has trained
    # Records and checkpoints named by an older run-id schema are renamed before anything is counted
    # (a dry run writes nothing: it says what would be renamed).
    runs = (cell.run for cell in cells or iter_cells(spec, dict(overrides), budget))
    migration = print_migration(request.results, runs, dry_run=request.dry_run)
    return GridPlan(request, spec, overrides, budget, why, devices, fuse, migration.done_ids, cells)


def check_request(request: GridRequest) -> None:
    """The counts and settings a request can get wrong without reading anything: one line each."""
    check_parallelism(request.workers, request.workers_per_gpu, request.threads, request.memory_fraction)
    check_fuse(request.fuse)
    if request.dask:
        dask_module().local_workers(request.dask)  # a malformed local:N is a usage error too


def build_spec(request: GridRequest) -> GridSpec:
    """The grid file with the request's ``--axis`` and ``--seeds`` edits."""
    spec = load_grid(request.grid)
    for text in request.axes:
        spec = with_axis(spec, *parse_axis_option(text))
    return with_seeds(spec, request.seeds) if request.seeds is not None else spec


def with_data(request: GridRequest, spec: GridSpec) -> GridRequest:
    """The request naming its data: ``--data``, the grid file's own, else $RESNET_CORE_DATA (recorded in
    every run's config, so a record names the data it used)."""
    if request.data is not None or grid_sets_data(spec):
        return request
    return dataclasses.replace(request, data=default_data_source())


def grid_sets_data(spec: GridSpec) -> bool:
    """Whether the grid file names its data (in [fixed], an axis, a cell or a rule)."""
    pairs = [*spec.fixed, *spec.axes, *(p for v in spec.variants for p in v.settings),
             *(p for r in spec.rules for p in r.set)]
    return any(name not in NAMED_AXES and resolve_field(name) == "data.source" for name, _ in pairs)


def settings(request: GridRequest) -> dict[str, Any]:
    """Command-line settings applied to every run, after the grid file (the length goes through the budget)."""
    values = {"data.source": request.data, "data.val_size": request.val_size}
    given = {name: value for name, value in values.items() if value is not None}
    return {**given, **parse_assignments(request.sets)}


def length_axis(spec: GridSpec) -> str | None:
    """The grid's axis that sets the run length (epochs or iterations), if it has one."""
    names = [name for name, _ in spec.axes if name not in NAMED_AXES and resolve_field(name) in LENGTH_FIELDS]
    return names[0] if names else None


def choose_budget(request: GridRequest, spec: GridSpec, client=None) -> tuple[Budget, str]:
    """The budget (``--budget``, with --epochs/--iterations/--subset replacing its length) and why;
    with --dask, ``auto`` goes by the devices of the cluster's workers (``client``), not this driver's."""
    if client is None:
        device_type = resolve_device(request.device).type
    else:
        device_type = dask_module().cluster_device_type(client, request.device) if request.budget == AUTO else "cpu"
    budget, why = resolve_grid_budget(request.budget, device_type)
    axis = length_axis(spec)
    if axis and (request.epochs is not None or request.iterations is not None):
        raise ValueError(f"--epochs/--iterations and the axis {axis!r} both set the length: give one")
    return budget.with_length(request.epochs, request.iterations, request.subset), why


def fit_subset(request: GridRequest, budget: Budget, why: str, spec: GridSpec) -> tuple[Budget, str]:
    """A budget's subset is a ceiling (``splits.capped_subset``): data with fewer training images (after
    validation) train on all of them, and the budget's line says so. A ``--subset`` is kept as given.
    With --dask the data may live only on the workers: where this driver cannot read them, the
    budget's subset stands."""
    if budget.subset is None or request.subset is not None:
        return budget, why
    first = next(iter_cells(spec, settings(request), dataclasses.replace(budget, subset=None)))
    try:
        pool = len(load_data(first.run.data, "cpu").train_y)
    except OSError:
        if not request.dask:
            raise
        return budget, why
    subset = capped_subset(budget.subset, pool)
    if subset == budget.subset:
        return budget, why
    return dataclasses.replace(budget, subset=subset), f"{why}; the data hold {pool:,} training images, fewer than its subset"


def fusion(request: GridRequest, devices: tuple[str, ...]) -> bool:
    """Whether a cell's seeds train as one fused model (``--fuse``); a Dask worker trains runs alone."""
    if not request.dask:
        return fuses(request.fuse, devices)
    if request.fuse == "on":
        raise UsageError("--fuse on is not available with --dask (a Dask worker trains one run at a time): "
                         "leave --fuse out, or train on local workers")
    return False


def fusion_line(request: GridRequest, fused: bool, seeds: int) -> str:
    """How the grid's seeds train: as one fused model per cell, or one run at a time."""
    if request.dask:
        return "fusion: off (a Dask cluster trains each run alone)"
    if not fused:
        why = ": not on a GPU" if request.fuse == "auto" else ""
        return f"fusion: off (--fuse {request.fuse}{why}): each run trains alone"
    return (f"fusion: on (--fuse {request.fuse}): the {seeds} seeds of a cell train as one model "
            f"(at most {MAX_FUSED} a group); the estimate counts runs one at a time")


def dask_module():
    """resnet_core.dask_runner, or a one-line error when the optional "scale" extra is missing."""
    try:
        from resnet_core import dask_runner as module
    except ModuleNotFoundError as exc:
        raise ValueError(f"--dask needs {exc.name!r}: pip install 'resnet-core[scale]'") from None
    return module
