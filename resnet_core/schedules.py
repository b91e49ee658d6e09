"""How a run optimises: the optimizer factory, the learning-rate schedules and the training length
in steps (registries: an unknown name fails in the config, not here)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


class TrainSettings(Protocol):
    """What this module reads of a run's training settings: a ``config.TrainConfig``, named here and
    not imported, since config.py checks its choices against this module's registries."""

    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    milestones: tuple[float, ...]
    gamma: float
    warmup_iterations: int
    warmup_fraction: float
    warmup_lr: float
    cycle_momentum: bool
    batch_size: int
    epochs: int | None
    iterations: int | None


def _sgd(params, cfg: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def _adam(params, cfg: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _adamw(params, cfg: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


OPTIMIZERS = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}


def build_optimizer(model: nn.Module, cfg: TrainSettings) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](model.parameters(), cfg)


def _step_factor(progress: float, cfg: TrainSettings) -> float:
    return cfg.gamma ** sum(progress >= m for m in cfg.milestones)


def _cosine_factor(progress: float, cfg: TrainSettings) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _onecycle_factor(progress: float, cfg: TrainSettings) -> float:
    # Smith & Topin 2017: rise from lr/25 to lr over the first 30%, then cosine down to ~lr/1e4.
    rise = 0.3
    if progress < rise:
        return 1 / 25 + (1 - 1 / 25) * progress / rise
    return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * min((progress - rise) / (1 - rise), 1.0)))


def _constant_factor(progress: float, cfg: TrainSettings) -> float:
    return 1.0


SCHEDULES = {"step": _step_factor, "cosine": _cosine_factor, "onecycle": _onecycle_factor, "constant": _constant_factor}


def lr_at(iteration: int, total_iterations: int, cfg: TrainSettings) -> float:
    """Learning rate of step ``iteration`` (0-based) of ``total_iterations``.

    ``warmup_iterations`` is the paper's warm-up, not a ramp: "we use 0.01 to warm up the training
    until the training error is below 80% (about 400 iterations), and then go back to 0.1" (He et
    al. 2015 §4.2). ``warmup_fraction`` is the gradual warm-up of Goyal et al. 2017 §2.2: the
    schedule's lr scaled by (i + 1) / W over the first W = fraction x total iterations.
    """
    if iteration < cfg.warmup_iterations:
        return cfg.warmup_lr
    lr = cfg.lr * SCHEDULES[cfg.schedule](iteration / total_iterations, cfg)
    ramp = warmup_length(cfg, total_iterations)
    return lr * (iteration + 1) / ramp if iteration < ramp else lr


def warmup_length(cfg: TrainSettings, total_iterations: int) -> int:
    """Iterations of the gradual warm-up (``warmup_fraction`` of the run, at least 1 when set)."""
    return max(1, round(cfg.warmup_fraction * total_iterations)) if cfg.warmup_fraction else 0


# Smith 2018 ("A disciplined approach to neural network hyper-parameters", §4.3): decrease the momentum
# while the lr rises and increase it while the lr falls, 0.95 down to 0.85; torch's OneCycleLR default.
CYCLE_MOMENTUM_HIGH, CYCLE_MOMENTUM_LOW = 0.95, 0.85


def momentum_at(iteration: int, total_iterations: int, cfg: TrainSettings) -> float:
    """SGD momentum of step ``iteration``: ``cfg.momentum``, or under ``cycle_momentum`` the mirror of the
    schedule's lr factor: 0.85 where the lr is at its peak, toward 0.95 as it falls to 0 (under one-cycle
    0.95 -> 0.85 at the peak -> 0.95 at the end; a warm-up's ramp is not mirrored)."""
    if not cfg.cycle_momentum:
        return cfg.momentum
    factor = SCHEDULES[cfg.schedule](iteration / total_iterations, cfg)
    return CYCLE_MOMENTUM_HIGH - (CYCLE_MOMENTUM_HIGH - CYCLE_MOMENTUM_LOW) * factor


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def set_momentum(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    for group in optimizer.param_groups:
        group["momentum"] = momentum


# -------------------------------------------------------------------------------- the budget

@dataclass(frozen=True)
class StepPlan:
    """A run's length in optimizer steps (not a training budget: those are resnet_core/budgets.py)."""

    steps_per_epoch: int
    total_iterations: int
    epochs: int


def make_budget(cfg: TrainSettings, train_size: int) -> StepPlan:
    """Steps per epoch drop the last partial batch (a 1-image batch would upset BatchNorm)."""
    if train_size < 1:
        raise ValueError("the training split is empty: lower val_size or raise subset")
    steps = max(1, train_size // cfg.batch_size)
    if cfg.iterations is not None:
        return StepPlan(steps, cfg.iterations, math.ceil(cfg.iterations / steps))
    return StepPlan(steps, cfg.epochs * steps, cfg.epochs)
