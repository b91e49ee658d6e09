"""What the grid fault tests (test_dask.py, test_faults_ablation.py) share: a tiny grid and the drivers."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

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
    """The grid command behind ``ablation/<name>.py``: ``run`` is resnet-grid, ``report`` resnet-grid-report."""
    return importlib.import_module({"run": "resnet_core.commands.grid", "report": "resnet_core.commands.grid_report"}[name])


def run_grid(grid: Path, results: Path, *extra: str) -> int:
    """ablation/run.py in this process on the tiny grid (exit code as the CLI returns it)."""
    from resnet_core.cli import run_cli

    return run_cli(driver("run").main, ["--grid", str(grid), *FAST, "--results", str(results), *extra])


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """In-process runs set torch's thread count; give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def grid_file_fixture(name: str):
    """A module-scoped fixture: the tiny grid written to a .toml file named after the grid."""

    @pytest.fixture(scope="module")
    def grid(tmp_path_factory) -> Path:
        path = tmp_path_factory.mktemp("grid") / f"{name}.toml"
        path.write_text(tiny_grid(name))
        return path

    return grid


@pytest.fixture(scope="module")
def reference(grid, tmp_path_factory) -> Path:
    """The grid run locally and uninterrupted, one run at a time, one thread per run."""
    results = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    try:
        assert run_grid(grid, results) == 0
    finally:
        torch.set_num_threads(threads)
    return results
