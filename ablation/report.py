"""Rebuild an ablation grid's report from its run records (trains nothing).

    python ablation/report.py --grid degradation [--results results]

Writes summary.csv, report.md and PNG figures to <results>/ablation/<grid>/, for the cells the
last `ablation/run.py --grid <grid>` asked for (its grid.json manifest).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resnet_core.cli import run_cli
from resnet_core.grid import load_grid, report_dir
from resnet_core.grid_report import build_grid_report, skipped_warning, write_report
from resnet_core.store import misnamed_warning

GRIDS_DIR = Path(__file__).resolve().parent / "grids"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", required=True, help="grid name, or the grid's .toml file as given to ablation/run.py")
    parser.add_argument("--results", default="results", help="results directory (default: results)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = load_grid(args.grid, GRIDS_DIR).name if args.grid.endswith(".toml") else args.grid
    report = build_grid_report(args.results, name)
    for path in write_report(report, report_dir(args.results, name)):
        print(path)
    for warning in (skipped_warning(report, args.results), misnamed_warning(report.misnamed, args.results)):
        if warning:
            print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
