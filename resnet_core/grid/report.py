"""A grid's report: the generic part (header, cells, per-cell figure) plus its kind's part, and the
files they become. A grid file's ``report = "..."`` picks its kind from the registry (resnet_core/grid/kinds.py).

Reports read only the run records and the grid's manifest (docs/DESIGN.md, result store), so they
can be rebuilt at any time without training (``ablation/report.py``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from matplotlib.figure import Figure

from resnet_core.degradation import KindOutput
from resnet_core.grid.kinds import report_kind
from resnet_core.grid.manifest import load_manifest, report_dir
from resnet_core.migrate import current_run_ids
from resnet_core.provenance import code_state
from resnet_core.reports import (
    display_table,
    grid_table,
    header_lines,
    markdown_table,
    plot_cell_errors,
    plot_learning_curves,
    plural,
    summarize_cells,
)
from resnet_core.store import atomic_write_bytes, atomic_write_text, load_histories, load_runs, misnamed_warning

GENERIC_CURVES = ("Train error (dashed) and validation error (solid) per epoch, mean over completed seeds "
                  "(generic grids measure the test set at the end only: grid/kinds.py).")


def generic_kind(table: pd.DataFrame, histories: pd.DataFrame, manifest: Mapping[str, Any]) -> KindOutput:
    """Learning curves per cell, on validation error (the test set is measured once, at the end)."""
    return KindOutput(figures={"curves": plot_learning_curves(histories, table, hue="cell", held_out="val")},
                      captions={"curves": GENERIC_CURVES})


CAPTIONS = {  # the generic part's figures; a kind captions its own (KindOutput.captions)
    "test_error_by_cell": "Final test error per cell: mean over completed seeds (n per cell in its label), bars a "
                          "95% t-interval clipped to the possible 0-100%.",
}


@dataclass
class Report:
    """Everything a grid's report consists of; :func:`write_report` puts it on disk."""

    summary: pd.DataFrame
    markdown: str
    figures: dict[str, Figure] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # unreadable files in runs/ (counted in the header)
    misnamed: list[str] = field(default_factory=list)  # record copies in runs/ (named in the header, not counted)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # extra CSVs (trends.csv, ...)


def _section(title: str, body: str) -> str:
    return f"\n## {title}\n\n{body}\n"


def build_report(runs: pd.DataFrame, histories: pd.DataFrame, manifest: Mapping[str, Any],
                 built_by: Mapping[str, Any] | None = None) -> Report:
    """Tables, verdicts and figures of one grid from the result store's frames and its manifest.

    ``built_by`` is the code state of the process building the report (``provenance.code_state``).
    """
    table = grid_table(runs, manifest)
    axes = list(manifest["axes"])
    summary = summarize_cells(table, axes)
    skipped, misnamed = list(runs.attrs.get("skipped", [])), list(runs.attrs.get("misnamed", []))
    extra: KindOutput = report_kind(manifest.get("report", "generic")).builder()(table, histories, manifest)
    parts = ["\n".join(header_lines(table, manifest, skipped, built_by, misnamed)),
             *(_section(title, body) for title, body in extra.sections[:1]),  # verdicts first, when any
             _section("Cells", markdown_table(display_table(summary, axes))),
             *(_section(title, body) for title, body in extra.sections[1:])]
    figures = {"test_error_by_cell": plot_cell_errors(summary), **extra.figures}
    captions = {**CAPTIONS, **extra.captions}
    parts.append(_section("Figures", "\n\n".join(f"![{name}]({name}.png)\n\n{captions[name]}" for name in figures)))
    return Report(summary=summary, markdown="\n".join(parts), figures=figures, skipped=skipped, misnamed=misnamed,
                  tables=extra.tables)


def write_report(report: Report, out_dir: str | Path, dpi: int = 120) -> list[Path]:
    """summary.csv, report.md, the kind's CSVs and one PNG per figure under ``out_dir``; returns the paths.

    Every file is written atomically (temp file, then rename): a kill leaves the old file or the
    new one, never half of one.
    """
    out = Path(out_dir)
    paths = [out / "summary.csv", out / "report.md"]
    atomic_write_text(paths[0], report.summary.to_csv(index=False))
    atomic_write_text(paths[1], report.markdown + "\n")
    for name, frame in report.tables.items():
        paths.append(out / f"{name}.csv")
        atomic_write_text(paths[-1], frame.to_csv(index=False))
    for name, figure in report.figures.items():
        paths.append(out / f"{name}.png")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi)
        atomic_write_bytes(paths[-1], buffer.getvalue())
    return paths


def skipped_warning(report: Report, results_dir: str | Path) -> str | None:
    """The command lines' warning line for unreadable files in ``runs/`` (None when there are none)."""
    if not report.skipped:
        return None
    return (f"warning: skipped {plural(len(report.skipped), 'unreadable file')} in {Path(results_dir) / 'runs'} "
            "(corrupt JSON or not a run record; counted in report.md)")


def build_grid_report(results_dir: str | Path, grid_name: str) -> Report:
    """A grid's report from its manifest and the run records (no training, no files written)."""
    manifest, runs = load_manifest(results_dir, grid_name), load_runs(results_dir)
    # A manifest from before a run-id migration (restored from a backup) names old ids: its runs are
    # the migrated records that name those ids as their previous ones.
    renamed = current_run_ids([entry["run_id"] for entry in manifest["runs"]], runs)
    manifest = {**manifest, "runs": [{**entry, "run_id": rid} for entry, rid in zip(manifest["runs"], renamed)]}
    return build_report(runs, load_histories(results_dir), manifest, code_state())


def publish_report(results_dir: str | Path, grid_name: str) -> tuple[list[Path], list[str]]:
    """Write a grid's report from its records (no training): the files written and the warnings a
    command prints (unreadable files, misnamed records in ``runs/``)."""
    report = build_grid_report(results_dir, grid_name)
    paths = write_report(report, report_dir(results_dir, grid_name))
    warnings = (skipped_warning(report, results_dir), misnamed_warning(report.misnamed, results_dir))
    return paths, [warning for warning in warnings if warning]
