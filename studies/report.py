"""Rebuild a study's reports from its storage and run records (no training).

    python studies/report.py --study-name NAME [--storage URL] [--results DIR]

Writes trials.csv, best.json, report.md and figures into DIR/studies/NAME/ (a --compare group
also gets comparison.csv and the isolation plot).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resnet_core.cli import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study-name", required=True, help="a study, or the group name of a --compare study")
    parser.add_argument("--storage", help="Optuna RDB URL or journal file (default: <results>/studies/<name>.log)")
    parser.add_argument("--results", default="results", help="results directory holding runs/ (default results)")
    parser.add_argument("--out", type=Path, help="output folder (default: <results>/studies/<name>/)")
    parser.add_argument("--no-figures", action="store_true", help="tables and report.md only")
    return parser


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from resnet_core.study import default_storage, report_warnings, write_reports

    args = build_parser().parse_args(argv)
    storage = args.storage or default_storage(args.results, args.study_name)
    out = write_reports(args.study_name, storage, args.results, args.out, figures=not args.no_figures)
    print(f"reports in {out}")
    for warning in report_warnings(storage, args.results):
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
