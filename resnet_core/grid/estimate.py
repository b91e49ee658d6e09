"""A grid's dry run: its cells with their finished seeds, and a time estimate from one measured step rate
per distinct model. Cells stream through one at a time (a 100k-run grid is never held in memory) and
are built, and so checked, as they come, with what training would refuse of their data refused now.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from resnet_core.config import DataConfig, RunConfig
from resnet_core.data import load_data
from resnet_core.devices import resolve_device
from resnet_core.engine import check_fits_data, estimate_seconds, measure_step_rate
from resnet_core.grid.cells import Cell, run_count
from resnet_core.grid.plan import GridPlan
from resnet_core.reports import plural
from resnet_core.runner import finished
from resnet_core.store import runs_dir

LISTED_CELLS = 50  # a dry run lists this many cells; the rest of a huge grid is counted in one line
PROGRESS_EVERY_S = 2.0  # seconds between a dry run's progress lines (stderr)


def rate_key(run: RunConfig) -> tuple:
    """What a training step's speed depends on: the model and the batch's size and precision."""
    return run.model, run.train.batch_size, run.train.amp, run.train.channels_last, run.train.compile


class DryRun:
    """A dry run's running totals: cells stream through it one at a time, and each distinct model's
    step rate is measured once, not once per cell. ``migrated``: ids of finished runs whose records a
    real run would first rename from an older run-id schema."""

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

    def add(self, cell: Cell) -> None:
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

    def _rate(self, cell: Cell) -> float:
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


def dry_run(plan: GridPlan) -> DryRun:
    """Every run of ``plan`` checked and counted, and its time estimated, on the plan's first device."""
    dry = DryRun(plan.request.results, plan.devices[0], run_count(plan.spec), plan.migrated)
    for cell in plan.iter_cells():
        dry.add(cell)
    return dry


def estimate_lines(plan: GridPlan, dry: DryRun) -> list[str]:
    """One line per listed cell (runs, finished runs, step rate) and the total with its estimate."""
    lines = []
    for label, (runs, done, key) in dry.cells.items():
        rate = f"{dry.rates[key]:.0f} img/s" if key in dry.rates else "-"
        lines.append(f"  {label:<48} seeds {runs}  done {done}  {rate}")
    listed = sum(runs for runs, _, _ in dry.cells.values())
    if dry.runs > listed:
        lines.append(f"  ... and {plural(dry.runs - listed, 'more run')} in further cells")
    # Runs on distinct GPUs overlap; CPU workers share the same cores, so they barely do.
    parallel = len(set(plan.devices)) if resolve_device(plan.devices[0]).type == "cuda" else 1
    where = ", ".join(sorted({str(resolve_device(d)) for d in plan.devices}))
    rates = ", ".join(f"{rate:.0f}" for rate in dry.rates.values()) or "-"
    lines.append(f"{plural(dry.runs, 'run')}, {dry.done} already done; estimated {_duration(dry.seconds / parallel)} "
                 f"for the rest on {where} (rough: measured step rate of each of {len(dry.rates)} distinct model(s): "
                 f"{rates} img/s; {parallel} in parallel)")
    return lines


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
