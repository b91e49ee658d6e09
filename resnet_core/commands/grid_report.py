"""Rebuild an ablation grid's report from its run records (trains nothing).

    resnet-grid-report --grid degradation [--results results]     (from a checkout: python ablation/report.py)

Writes summary.csv, report.md and PNG figures to <results>/ablation/<grid>/, for the cells the
last `resnet-grid --grid <grid>` asked for (its grid.json manifest).
"""

from __future__ import annotations

import argparse
import sys
from resnet_core.cli import entry
from resnet_core.commands.parsers import grid_report_parser as build_parser
from resnet_core.grid import load_grid
from resnet_core.grid_manifest import report_dir
from resnet_core.grid_report import build_grid_report, skipped_warning, write_report
from resnet_core.store import misnamed_warning

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = load_grid(args.grid).name if args.grid.endswith(".toml") else args.grid
    report = build_grid_report(args.results, name)
    for path in write_report(report, report_dir(args.results, name)):
        print(path)
    for warning in (skipped_warning(report, args.results), misnamed_warning(report.misnamed, args.results)):
        if warning:
            print(warning, file=sys.stderr)
    return 0


def console() -> None:
    """``resnet-grid-report``."""
    entry(main)


if __name__ == "__main__":
    console()
