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
resnet_core/grids/*.toml (format: resnet_core/grid/spec.py). Run records go to
<results>/runs/, the report (summary.csv, report.md, figures) to <results>/ablation/<grid>/.
With --dask the workers train and this process writes the records (resnet_core/dask_runner.py).
Re-running the same command resumes an interrupted grid; Ctrl-C or SIGTERM stops it cleanly.
Exit codes: 0 done (diverged runs are results), 1 some run failed (see the summary), 2 a usage
error (reported before anything trains), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from resnet_core import grid
from resnet_core.cli import check_flags, entry
from resnet_core.commands.parsers import grid_parser as build_parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_flags(args)
    return args


def request_of(args: argparse.Namespace) -> grid.GridRequest:
    """The flags as a request of the grid layer (resnet_core/grid/plan.py)."""
    return grid.GridRequest(
        grid=args.grid, axes=tuple(args.axis), seeds=args.seeds, budget=args.budget, epochs=args.epochs,
        iterations=args.iterations, subset=args.subset, data=args.data, val_size=args.val_size, sets=tuple(args.set),
        device=args.device, workers=args.workers, workers_per_gpu=args.workers_per_gpu, threads=args.threads,
        memory_fraction=args.gpu_memory_fraction, fuse=args.fuse, results=args.results, dask=args.dask,
        dry_run=args.dry_run, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    request = request_of(parse_args(argv))
    grid.check_request(request)
    with grid.cluster(request) as client:
        plan = grid.plan_grid(request, client)
        print("\n".join(plan.lines()))
        if request.dry_run:
            print("\n".join(grid.estimate_lines(plan, grid.dry_run(plan))))
            return 0
        lines, code = grid.summary(plan, grid.execute_plan(plan, client))
        print("\n".join(lines))
    paths, warnings = grid.publish_report(request.results, plan.spec.name)
    print("\n".join(map(str, paths)))
    for warning in warnings:
        print(warning, file=sys.stderr)
    return code


def console() -> None:
    """``resnet-grid``: SIGTERM stops the grid as Ctrl-C does (records flushed, exit 130)."""
    entry(main)


if __name__ == "__main__":
    console()
