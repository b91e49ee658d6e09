"""resnet_core: the configurable CIFAR ResNet family, its data, its training engine and its records.

What a notebook needs, in the order of a run (docs/DESIGN.md, "Architecture")::

    from resnet_core import RunConfig, build_model, fit, load_data, load_runs, recipe
    run = RunConfig(train=recipe("quick"))
    record = fit(run, results_dir="results")
    table = load_runs("results")
"""

from resnet_core.config import (
    RECIPES,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    recipe,
    run_id,
)
from resnet_core.data import load_data
from resnet_core.engine import fit
from resnet_core.models import build_model
from resnet_core.store import load_runs

__all__ = [
    "RECIPES",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "build_model",
    "fit",
    "load_data",
    "load_runs",
    "recipe",
    "run_id",
]
