"""Rebuild a study's reports from its storage and run records (no training).

    resnet-study-report --study-name NAME [--storage URL] [--results DIR]   (from a checkout: python studies/report.py)

Writes trials.csv, best.json, report.md and figures into DIR/studies/NAME/ (a --compare group
also gets comparison.csv and the isolation plot).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resnet_core.cli import add_flags, entry
from resnet_core.study import default_storage, report_warnings, write_reports


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnet-study-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--study-name", required=True, help="a study, or the group name of a --compare study")
    parser.add_argument("--storage", help="Optuna RDB URL or journal file (default: <results>/studies/<name>.log)")
    add_flags(parser, "results")
    parser.add_argument("--out", type=Path, help="output folder (default: <results>/studies/<name>/)")
    parser.add_argument("--no-figures", action="store_true", help="tables and report.md only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    storage = args.storage or default_storage(args.results, args.study_name)
    out = write_reports(args.study_name, storage, args.results, args.out, figures=not args.no_figures)
    print(f"reports in {out}")
    for warning in report_warnings(storage, args.results):
        print(warning, file=sys.stderr)
    return 0


def console() -> None:
    """``resnet-study-report``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, on machines without a display
    entry(main)


if __name__ == "__main__":
    console()
