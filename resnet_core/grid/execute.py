"""Training a grid's plan: in local worker processes (joblib, :mod:`resnet_core.runner`) or on a Dask
cluster (:mod:`resnet_core.dask_runner`), after its manifest is written; finished runs are found, not
trained again. Another executor (e.g. Ray) is one more function here taking the plan's runs and
returning their ``runner.Outcome`` in order (docs/DESIGN.md, "The experiment layer").
"""

from __future__ import annotations

import contextlib
from typing import Sequence

from resnet_core.grid.manifest import save_manifest
from resnet_core.grid.plan import GridPlan, GridRequest, dask_module
from resnet_core.runner import Outcome, WorkerPool, preload_data, split_done, train_all


def cluster(request: GridRequest):
    """The Dask client of ``--dask`` for the whole command (None without it): --budget auto asks its workers."""
    return dask_module().dask_client(request.dask) if request.dask else contextlib.nullcontext(None)


def execute_plan(plan: GridPlan, client=None) -> list[Outcome]:
    """Train every run of ``plan`` not yet finished (on the Dask ``client`` when given); returns one
    outcome per run in the plan's order. A failed or diverged run is an outcome, never an exception."""
    save_manifest(plan.request.results, plan.spec, plan.cells, plan.budget_entry())
    return run_dask(plan, client) if client is not None else run_local(plan)


def run_local(plan: GridPlan) -> list[Outcome]:
    """The runs in local worker processes, one device slot each."""
    r, runs = plan.request, [c.run for c in plan.cells]
    # A missing dataset is one error now, not a failed record per run; the decode cache gets built once.
    preload_data(split_done(runs, r.results)[1])
    pool = WorkerPool(plan.devices, r.threads, r.memory_fraction, fuse=plan.fuse)
    return train_all(runs, r.results, pool, r.progress, desc=plan.spec.name)


def run_dask(plan: GridPlan, client) -> list[Outcome]:
    """The runs on a Dask cluster. The device and the data are the workers' (this driver needs neither)."""
    workers = len(client.scheduler_info(n_workers=-1)["workers"])
    print(f"dask scheduler {client.scheduler.address}: {workers} worker(s) now" + ("" if workers else ", waiting for some"))
    return dask_module().run_all_dask([c.run for c in plan.cells], plan.request.results, client,
                                      threads=plan.request.threads, progress=plan.request.progress, desc=plan.spec.name)


def summary(plan: GridPlan, outcomes: Sequence[Outcome]) -> tuple[list[str], int]:
    """One line per run that did not complete and a count by status; the exit code (1 if any run failed)."""
    counts: dict[str, int] = {}
    lines = []
    for cell, outcome in zip(plan.cells, outcomes):
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.status != "completed":
            lines.append(f"  {outcome.status}: {cell.label}, seed {cell.seed} ({outcome.run_id}): {outcome.error or ''}")
    lines.append(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return lines, 1 if counts.get("failed", 0) else 0
