"""Rebuild an ablation grid's report from its run records (trains nothing).

    resnet-grid-report --grid degradation [--results results]     (from a checkout: python ablation/report.py)

Writes summary.csv, report.md and PNG figures to <results>/ablation/<grid>/, for the cells the
last `resnet-grid --grid <grid>` asked for (its grid.json manifest).
"""

from __future__ import annotations

import argparse
import sys

from resnet_core import grid
from resnet_core.cli import add_flags, entry


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="resnet-grid-report", description=__doc__.splitlines()[0])
    parser.add_argument("--grid", required=True, help="grid name, or the grid's .toml file as given to resnet-grid")
    add_flags(parser, "results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
