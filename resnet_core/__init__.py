"""resnet_core: the configurable CIFAR ResNet family, its data, its training engine and its records."""

from resnet_core.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    recipe,
    run_id,
)

__all__ = [
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "recipe",
    "run_id",
]
