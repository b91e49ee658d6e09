"""Small data sets work with the default sizes: the validation split adapts, a budget's subset is a
ceiling, and every command line runs on synthetic data and a 1,500-image ImageFolder without size flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet_core.cli import run_cli
from resnet_core.commands import grid as grid_command
from resnet_core.commands import study as study_command
from resnet_core.config import DataConfig
from resnet_core.data import load_data, pool_size
from resnet_core.splits import DEFAULT_VAL_SIZE, default_val_size, effective_val_size, split_indices
from resnet_core.store import load_runs
from resnet_core.commands import train as train_command

TINY = ["--epochs", "1", "--device", "cpu", "--threads", "1", "--set", "depth=8", "--set", "widths=4,8,16",
        "--set", "batch_size=50", "--set", "eval_batch_size=500"]
STUDY_TINY = TINY[:10] + TINY[12:]  # without --set batch_size=50: the recipe space searches the batch size


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RESNET_CORE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def imagefolder_1500(root: Path) -> Path:
    """1,200 training + 300 test 32x32 PNGs in 3 classes (labels visible in the mean colour)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 400), ("test", 100)):
        for label, name in enumerate(("ant", "bee", "wasp")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 128, (32, 32, 3), dtype=np.uint8)
                pixels[..., label] += 120
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def test_the_default_validation_size_is_a_tenth_of_small_data_and_5000_of_cifar():
    assert [default_val_size(n) for n in (20, 150, 1200, 2000, 50000, 60000)] == [10, 75, 120, 200, 5000, 5000]
    assert effective_val_size(DEFAULT_VAL_SIZE, 50000) == 5000  # CIFAR-10: the 45k/5k split and ids as before
    assert effective_val_size(DEFAULT_VAL_SIZE, 1200) == 120  # the default used to fail here
    assert effective_val_size(DEFAULT_VAL_SIZE, 20000) == 5000  # worked before: same id, so the same split
    assert effective_val_size(300, 1200) == 300 and effective_val_size(0, 1200) == 0  # asked for: kept
    labels = torch.arange(50000) % 10
    default = split_indices(labels, effective_val_size(DEFAULT_VAL_SIZE, 50000), None, 0)
    assert all(torch.equal(a, b) for a, b in zip(default, split_indices(labels, 5000, None, 0)))
    bundle = load_data(DataConfig(source="synthetic"))  # 2,000 training images
    assert (len(bundle.train_y), len(bundle.val_y)) == (1800, 200) and pool_size(DataConfig(source="synthetic")) == 1800


def _sizes(results: Path) -> list[tuple[int, int, int]]:
    runs = load_runs(results)
    return list(zip(runs["provenance.train_size"], runs["provenance.val_size"], runs["provenance.test_size"]))


def test_resnet_train_runs_on_synthetic_data_with_default_sizes(tmp_path):
    code = run_cli(train_command.main, ["--data", "synthetic", "--results", str(tmp_path), "--quiet", *TINY])
    assert code == 0
    assert _sizes(tmp_path) == [(1800, 200, 500)]  # the record states the sizes it used


def test_resnet_train_dry_run_prints_the_validation_size_the_data_resolve_to(tmp_path, capsys):
    """The default val_size (5,000) holds out 200 of synthetic's 2,000 images: the printed config says 200."""
    assert run_cli(train_command.main, ["--data", "synthetic", "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out[:out.index("\n}\n") + 2])
    assert printed["data"]["val_size"] == 200 == default_val_size(2000)
    assert "1,800 training / 200 validation / 500 test images" in out


def test_resnet_grid_runs_on_a_1500_image_imagefolder_with_default_sizes(tmp_path):
    root = imagefolder_1500(tmp_path / "bugs")
    grid = tmp_path / "one.toml"
    grid.write_text('name = "one"\nreport = "generic"\nseeds = 1\n[axes]\nresidual = [true]\n')
    code = run_cli(grid_command.main, ["--grid", str(grid), "--data", str(root), "--results", str(tmp_path / "r"),
                                       *TINY])  # the quick budget's 10,000-image subset is a ceiling
    assert code == 0
    assert _sizes(tmp_path / "r") == [(1080, 120, 300)]


def test_resnet_study_runs_on_synthetic_data_with_default_sizes(tmp_path, capsys):
    code = run_cli(study_command.main, ["--trials", "2", "--data", "synthetic", "--results", str(tmp_path),
                                        "--quiet", "--no-figures", "--sampler", "random", *STUDY_TINY])
    assert code == 0, capsys.readouterr().err
    # 2 trials and the default final stage's one run and its baseline's: the quick budget's 3,250 subset is all 1,800 here (its 2,000 validation images a ceiling too)
    assert _sizes(tmp_path) == [(1800, 200, 500)] * 4
    out = capsys.readouterr().out
    assert "trials of up to 1 epoch on 1,800 training images, judged on 200 validation images" in out
    report = next((tmp_path / "studies").glob("*/report.md")).read_text()
    assert "train 1800 / validation 200 / test 500" in report and "## Final stage (test error)" in report


def test_a_study_report_names_the_validation_images_its_final_stage_held_out(tmp_path, capsys):
    """The standard budget keeps the default val_size (5000): on synthetic data that is 200 images."""
    code = run_cli(study_command.main, ["--trials", "1", "--budget", "standard", "--final-seeds", "1", "--data", "synthetic",
                                        "--results", str(tmp_path), "--quiet", "--no-figures", "--sampler", "random", *STUDY_TINY])
    assert code == 0, capsys.readouterr().err
    report = next((tmp_path / "studies").glob("*/report.md")).read_text()
    assert "on the full training split (validation 200 images held out)" in report
