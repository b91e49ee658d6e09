"""Rebuild an ablation grid's report from its run records (trains nothing).

    resnet-grid-report --grid degradation [--results results]     (from a checkout: python ablation/report.py)

Writes summary.csv, report.md and PNG figures to <results>/ablation/<grid>/, for the cells the
last `resnet-grid --grid <grid>` asked for (its grid.json manifest).
"""

from __future__ import annotations

import sys

from resnet_core import grid
from resnet_core.cli import entry
from resnet_core.commands.parsers import grid_report_parser as build_parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = grid.load_grid(args.grid).name if args.grid.endswith(".toml") else args.grid
    paths, warnings = grid.publish_report(args.results, name)
    for path in paths:
        print(path)
    for warning in warnings:
        print(warning, file=sys.stderr)
    return 0


def console() -> None:
    """``resnet-grid-report``."""
    entry(main)


if __name__ == "__main__":
    console()
