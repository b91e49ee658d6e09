"""Ablation grids: a TOML file of axes expanded into run configs, planned, trained and reported.

The package, top to bottom (each module imports only those above it): ``kinds`` (the registry of
report kinds), ``spec`` (grid files: format, parsing, command-line edits), ``cells`` (cells and seeds
as validated run configs), ``manifest`` (``grid.json``), ``plan`` (a request checked and resolved:
budget, devices, fusion, migration, the runs), ``estimate`` (the dry run), ``execute`` (joblib or
Dask), ``report`` (the report files).

Only the names below are used outside the package (tests import the modules); each loads its module
when first asked for, so reading a grid file loads neither the workers nor pandas. No public name is
a module's name: ``grid.plan`` would be the module or the function depending on import order.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "available_grids": "spec", "load_grid": "spec",
    "GridRequest": "plan", "check_request": "plan", "plan_grid": "plan",
    "dry_run": "estimate", "estimate_lines": "estimate",
    "cluster": "execute", "execute_plan": "execute", "summary": "execute",
    "publish_report": "report",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'resnet_core.grid' has no attribute {name!r}: expected one of {', '.join(__all__)}")
    return getattr(importlib.import_module(f"resnet_core.grid.{_PUBLIC[name]}"), name)
