"""The train command line: exit codes, one-line errors, summaries (the bench's: tests/test_bench.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TRAIN = [sys.executable, "-m", "resnet_core.train"]
SMALL = ["--model", "resnet20", "--set", "depth=8", "--recipe", "quick", "--epochs", "1", "--data", "synthetic",
         "--val-size", "200", "--subset", "400", "--device", "cpu", "--quiet"]


def run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)


def test_train_completes_and_prints_a_summary(tmp_path):
    done = run(TRAIN + SMALL + ["--results", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("completed: resnet20") and "test err" in line
    records = list((tmp_path / "runs").glob("*.json"))
    assert len(records) == 1
    config = json.loads(records[0].read_text())["config"]
    assert config["model"]["depth"] == 8 and config["train"]["epochs"] == 1 and config["data"]["subset"] == 400


def test_config_file_layer_then_flags(tmp_path):
    (tmp_path / "cfg.toml").write_text('lr = 0.02\n[model]\nresidual = false\n')
    done = run(TRAIN + SMALL + ["--config", str(tmp_path / "cfg.toml"), "--weight-decay", "0.001",
                                "--results", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    config = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())["config"]
    assert config["train"]["lr"] == 0.02 and config["model"]["residual"] is False
    assert config["train"]["weight_decay"] == 0.001


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "depth=21"], "depth=21"),
        (["--set", "dept=20"], "unknown config field 'dept'"),
        (["--model", "resnet21"], "unknown model preset 'resnet21'"),
        (["--recipe", "fast"], "unknown recipe 'fast'"),
        (["--data", "/nonexistent/dir"], "/nonexistent/dir"),
        (["--val-size", "6000"], "val_size=6000"),  # 5000 is the default: on small data it adapts
        (["--epochs", "-1"], "--epochs -1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, extra, message):
    done = run(TRAIN + SMALL + extra + ["--results", str(tmp_path)])
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert not (tmp_path / "runs").exists()


def test_diverged_run_exits_non_zero(tmp_path):
    done = run(TRAIN + SMALL + ["--set", "norm=none", "--lr", "10000", "--schedule", "constant",
                                "--results", str(tmp_path)])
    assert done.returncode == 1
    assert done.stdout.strip().splitlines()[-1].startswith("diverged")
