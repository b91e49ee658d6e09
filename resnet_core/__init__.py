"""resnet_core: the configurable CIFAR ResNet family, its data, its training engine and its records.

What a notebook needs, in the order of a run (docs/DESIGN.md, "Architecture")::

    from resnet_core import RunConfig, build_model, fit, load_data, load_runs, recipe
    run = RunConfig(train=recipe("quick"))
    record = fit(run, results_dir="results")
    table = load_runs("results")
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it. Resolved on first use (PEP 562), so `python -m resnet_core.models`
# and the command lines do not import every module (and torch) twice.
EXPORTS = {
    "DataConfig": "config", "ModelConfig": "config", "RunConfig": "config", "TrainConfig": "config",
    "apply_overrides": "config", "RECIPES": "recipes", "recipe": "recipes", "run_id": "identity",
    "build_model": "models", "load_data": "data", "fit": "engine", "load_runs": "store",
}
__all__ = sorted(EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module 'resnet_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f"resnet_core.{EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
