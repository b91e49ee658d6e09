"""Rebuild a study's reports from its storage and run records (no training).

    resnet-study-report --study-name NAME [--storage URL] [--results DIR]   (from a checkout: python studies/report.py)

Writes trials.csv, best.json, report.md and figures into DIR/studies/NAME/ (a --compare group
also gets comparison.csv and the isolation plot).
"""

from __future__ import annotations

import sys

from resnet_core.cli import entry
from resnet_core.commands.parsers import study_report_parser as build_parser
from resnet_core.study import default_storage, report_warnings, write_reports


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
