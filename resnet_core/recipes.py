"""Training recipes: named TrainConfig presets that a budget (resnet_core/budgets.py) and the command
lines start from. ``recipe(name)`` is the one lookup; an unknown name lists the known ones."""

from __future__ import annotations

from resnet_core.config import TrainConfig, current_name

# He et al. 2015 §4.2: SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 32k
# and 48k iterations, stop at 64k; pad-4 crop + flip. (ResNet-110 adds warmup_iterations=400.)
PAPER = TrainConfig(
    epochs=None, iterations=64000, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
    weight_decay=1e-4, schedule="step", milestones=(0.5, 0.75), gamma=0.1, augment="padcrop_flip",
)
# The tutorial this project grew from: Adam lr 1e-3, batch 100, lr divided by 3 every 20 of its
# 80 epochs, resize-40/crop-32/flip augmentation without normalisation.
TUTORIAL = TrainConfig(
    epochs=80, batch_size=100, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="step",
    milestones=(0.25, 0.5, 0.75), gamma=1 / 3, augment="tutorial", normalize=False,
)
# A smoke-run recipe: few epochs, one-cycle so that a short budget still converges somewhat.
QUICK = TrainConfig(
    epochs=3, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
    weight_decay=5e-4, schedule="onecycle", augment="padcrop_flip",
)
RECIPES = {"paper": PAPER, "tutorial": TUTORIAL, "quick": QUICK}


def recipe(name: str) -> TrainConfig:
    """A TrainConfig preset by name (the old name "seed" of "tutorial" still works, with a warning)."""
    name = current_name(name, "recipe")
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: expected one of {', '.join(RECIPES)}")
    return RECIPES[name]
