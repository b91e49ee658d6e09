"""A grid's manifest (``<results>/ablation/<grid>/grid.json``): what a report needs to find the grid's
runs again, and the grid named by its name and file hash (a path moves between machines and installs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from resnet_core.grid.cells import Cell
from resnet_core.grid.spec import GRIDS_DIR, GridSpec
from resnet_core.store import atomic_write_text, check_name


def manifest(spec: GridSpec, cells: Sequence[Cell], budget: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a report needs to find the grid's runs again: the grid, its budget and one row per run."""
    return {
        "grid": spec.name,
        "grid_file": Path(spec.source).name,
        "grid_sha256": spec.file_sha256,
        "builtin": Path(spec.source).resolve().parent == Path(GRIDS_DIR).resolve(),
        "budget": dict(budget or {}),
        "description": spec.description,
        "report": spec.report,
        "axes": list(spec.axis_names),
        "seeds": list(spec.seeds),
        "runs": [{"run_id": c.run_id, "cell": c.label, "seed": c.seed, **dict(c.key)} for c in cells],
    }


def report_dir(results_dir: str | Path, grid_name: str) -> Path:
    """Where a grid's reports go: ``<results>/ablation/<grid>/`` (its runs stay in ``<results>/runs``)."""
    return Path(results_dir) / "ablation" / check_name(grid_name, "grid name")


def save_manifest(results_dir: str | Path, spec: GridSpec, cells: Sequence[Cell],
                  budget: Mapping[str, Any] | None = None) -> Path:
    """Write ``grid.json``: the report of a grid reads it to find the grid's run records."""
    path = report_dir(results_dir, spec.name) / "grid.json"
    atomic_write_text(path, json.dumps(manifest(spec, cells, budget), indent=1, default=str))
    return path


def load_manifest(results_dir: str | Path, grid_name: str) -> dict[str, Any]:
    """The manifest the last ``ablation/run.py --grid <name>`` wrote; a missing one is a one-line error."""
    path = report_dir(results_dir, grid_name) / "grid.json"
    if not path.is_file():
        raise FileNotFoundError(f"no grid manifest at {path}: run `python ablation/run.py --grid {grid_name}` first")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    _check_manifest(path, values, grid_name)
    return values


MANIFEST_KEYS = {"grid": str, "axes": list, "runs": list}  # what a report reads from grid.json


def _check_manifest(path: Path, values: Any, grid_name: str) -> None:
    """A grid.json a report can read: the keys it uses, and one ``run_id`` and ``cell`` per run."""
    again = f"rerun `python ablation/run.py --grid {grid_name}` to write it again"
    if not isinstance(values, dict):
        raise ValueError(f"{path}: not a grid manifest (a JSON object with {', '.join(MANIFEST_KEYS)}): {again}")
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(values.get(key), kind):
            raise ValueError(f"{path}: not a grid manifest: {key!r} is missing or not a {kind.__name__}: {again}")
    if any(not isinstance(run, dict) or not {"run_id", "cell"} <= set(run) for run in values["runs"]):
        raise ValueError(f"{path}: not a grid manifest: every entry of 'runs' needs a run_id and a cell: {again}")
