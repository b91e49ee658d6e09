"""Checks of single config values, each a one-line ValueError naming the field, the value and what
would be valid. The config dataclasses (resnet_core/config.py) call them as they are built, so every
layer (preset, file, ``--set``, a grid cell, a study's trial) and every dry run meets the same check.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

# Optuna's samplers seed numpy's legacy RandomState, which takes 0 .. 2**32 - 1 (torch takes more);
# a study's --seed is both its sampler's seed and every trial's run seed, so seeds share that range.
SEED_MAX = 2**32 - 1
# The device names a run may give; whether this machine has the device is devices.resolve_device's question.
DEVICE_PATTERN = r"auto|cpu|cuda|cuda:\d+|mps"
DEVICES_ALLOWED = "expected auto, cpu, cuda, cuda:N (N a GPU index: 0, 1, ...) or mps"


def fail(field_name: str, value: Any, allowed: str) -> NoReturn:
    raise ValueError(f"{field_name}={value!r} is invalid: {allowed}")


def check_choice(field_name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        fail(field_name, value, "expected one of " + ", ".join(map(str, choices)))


def check_positive(field_name: str, value: Any, allow_zero: bool = False) -> None:
    """A finite number above 0 (or at least 0): an infinite one would reach a layer width or the
    optimiser and fail, or diverge, only in training."""
    number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not number or not (value >= 0 if allow_zero else value > 0):
        fail(field_name, value, "expected a finite number " + (">= 0" if allow_zero else "> 0"))


def check_count(field_name: str, value: Any, minimum: int) -> None:
    """An integer of at least ``minimum`` (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(field_name, value, f"expected an integer >= {minimum}")


def check_seed(field_name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        fail(field_name, value, f"expected an integer from 0 to {SEED_MAX} (2**32 - 1)")
