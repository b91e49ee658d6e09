"""resnet_core: the configurable CIFAR ResNet family, its data, its training engine and its records.

What a notebook needs, in the order of a run (docs/DESIGN.md, "Architecture"; a whole session with
seaborn plots: docs/notebook.md). Offline, in seconds: a small ResNet on synthetic images::

    from resnet_core import DataConfig, ModelConfig, RunConfig, fit, load_histories, load_runs, recipe
    run = RunConfig(model=ModelConfig(depth=8), train=recipe("quick"), data=DataConfig(source="synthetic:300"))
    record = fit(run, results_dir="results")  # the same call again returns the finished record
    runs = load_runs("results")  # one row per run: config, final errors, provenance
    epochs = load_histories("results")  # one row per epoch of each run

``DataConfig(source=...)`` also takes ``"cifar10"`` (downloaded into ``./data``) or a folder of images.
``build_model`` and ``load_data`` are the two steps inside ``fit``, for use on their own.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it. Resolved on first use (PEP 562), so `python -m resnet_core.models`
# and the command lines do not import every module (and torch) twice.
EXPORTS = {
    "DataConfig": "config", "ModelConfig": "config", "RunConfig": "config", "TrainConfig": "config",
    "apply_overrides": "config", "RECIPES": "recipes", "recipe": "recipes", "run_id": "identity",
    "build_model": "models", "load_data": "data", "fit": "engine", "load_runs": "store", "load_histories": "store",
}
__all__ = sorted(EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module 'resnet_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f"resnet_core.{EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
