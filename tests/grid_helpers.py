"""What the grid fault tests (test_dask.py, test_faults_ablation.py) share: a tiny grid and the drivers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "ablation" / "run.py"
FAST = ["--data", "synthetic:400", "--val-size", "40", "--epochs", "2", "--device", "cpu", "--threads", "1"]
COMPARED = ["cell", "runs", "completed", "test_error_mean", "test_error_std", "train_error_mean", "val_error_mean"]


def tiny_grid(name: str) -> str:
    """A 2-cell x 2-seed grid of depth-8 nets: the smallest grid with a residual-vs-plain axis."""
    return f"""
name = "{name}"
report = "generic"
seeds = 2
[fixed]
depth = 8
batch_size = 32
eval_batch_size = 200
[axes]
residual = [true, false]
"""


def driver(name: str):
    """The module ablation/<name>.py (the drivers are scripts, not package modules)."""
    spec = importlib.util.spec_from_file_location(f"ablation_{name}", REPO / "ablation" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
