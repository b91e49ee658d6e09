"""Issue 26's input probes: every value a user can get wrong is one line and exit code 2, refused where
the config is built or where the data are first read, so a dry run refuses what training would.

Each test reproduces one probe on tiny synthetic data and checks what the user gets: the exit code,
the single line naming the field, file or path, and that nothing was created.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
import pytest
import torch

from grid_helpers import driver, keep_torch_threads  # noqa: F401
from resnet_core.commands import train
from resnet_core.cli import run_cli
from resnet_core.commands import study as run_driver
from resnet_core.commands import study_report as report_driver
from resnet_core.config import DataConfig, RunConfig, apply_overrides, to_dict
from resnet_core.data import load_data
from resnet_core.devices import resolve_device
from resnet_core.migrate import migrate_run_ids
from resnet_core.store import RunRecord, load_runs, read_record, write_record
from resnet_core.study.storage import open_storage
from test_data import make_imagefolder
from test_faults_journal import study_args

TRAIN_FAST = ["--data", "synthetic:200", "--val-size", "40", "--epochs", "1", "--device", "cpu", "--set", "depth=8",
              "--threads", "1", "--quiet"]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def refused(capsys, main, argv: list[str]) -> str:
    """The one error line of a command that must exit 2, without the ``error: `` prefix."""
    assert run_cli(main, argv) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: ")
    return line.removeprefix("error: ")


# ------------------------------------------------ values checked where the config is built

BAD_SETTINGS = {  # --set value -> the start of its line: the field, the value, what is valid
    "width_multiplier=inf": "width_multiplier=inf is invalid: expected a finite number > 0",
    "lr=inf": "lr=inf is invalid: expected a finite number > 0",
    "weight_decay=inf": "weight_decay=inf is invalid: expected a finite number >= 0",
    "warmup_lr=inf": "warmup_lr=inf is invalid: expected a finite number > 0",
    "seed=5000000000": "seed=5000000000 is invalid: expected an integer from 0 to 4294967295",
    "split_seed=-1": "split_seed=-1 is invalid: expected an integer from 0 to 4294967295",
    "device=cuda:x": "device='cuda:x' is invalid: expected auto, cpu, cuda, cuda:N",
    "num_classes=3": "num_classes=3 is invalid: the data have 10 classes; expected num_classes >= 10",
    "in_channels=1": "in_channels=1 is invalid: the data's images have 3 channels; expected in_channels=3",
}


@pytest.mark.parametrize("setting", sorted(BAD_SETTINGS))
def test_a_dry_run_refuses_what_training_would_in_one_line(setting, tmp_path, capsys):
    """Before: inf overflowed (a traceback) or trained and diverged; seeds past numpy's range, a
    negative split seed, cuda:x, too few classes and a channel count the data cannot supply all
    passed the dry run and failed (or were ignored) only in training."""
    argv = [*TRAIN_FAST, "--set", setting, "--results", str(tmp_path / "r")]
    assert refused(capsys, train.main, [*argv, "--dry-run"]).startswith(BAD_SETTINGS[setting])
    assert refused(capsys, train.main, argv).startswith(BAD_SETTINGS[setting])
    assert not (tmp_path / "r").exists()


def test_a_float_seed_from_a_config_file_is_checked_against_the_seed_range(tmp_path, capsys):
    """TOML reads ``seed = 1e23`` as a float with an integer value: it became a 24-digit seed."""
    (tmp_path / "cfg.toml").write_text("seed = 1e23\n")
    line = refused(capsys, train.main, [*TRAIN_FAST, "--config", str(tmp_path / "cfg.toml"), "--dry-run"])
    assert line == f"seed={int(1e23)} is invalid: expected an integer from 0 to 4294967295 (2**32 - 1)"


@pytest.mark.parametrize("name, value", [("width_multiplier", float("inf")), ("lr", float("-inf")),
                                         ("weight_decay", float("nan")), ("split_seed", -1), ("seed", 2**32)])
def test_non_finite_and_out_of_range_values_are_value_errors_naming_the_field(name, value):
    with pytest.raises(ValueError, match=rf"^{name}={value!r} is invalid: expected "):
        apply_overrides(RunConfig(), {name: value})


def test_the_largest_seed_is_accepted():
    assert apply_overrides(RunConfig(), {"seed": 2**32 - 1, "split_seed": 2**32 - 1}).seed == 2**32 - 1


# ---------------------------------------------------------------------------------- devices

@pytest.mark.parametrize("name, message", [
    ("mps", "device='mps' is not available here: this torch has no usable Apple GPU (MPS); use --device cpu or auto"),
    ("cuda:x", "device='cuda:x' is invalid: expected auto, cpu, cuda, cuda:N (N a GPU index: 0, 1, ...) or mps"),
    ("cuda:00", "device='cuda:00' is invalid: expected auto, cpu, cuda, cuda:N (N a GPU index: 0, 1, ...) or mps"),
])
def test_an_unusable_device_is_one_line_naming_what_is_valid(name, message, tmp_path, capsys, monkeypatch):
    """Before: RuntimeError tracebacks from torch ("not linked with support for mps devices",
    "Invalid device string: 'cuda:x'") when the first tensor moved, after the dry run passed."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError) as caught:
        resolve_device(name)
    assert str(caught.value) == message
    argv = [*TRAIN_FAST, "--device", name, "--results", str(tmp_path / "r"), "--dry-run"]
    assert refused(capsys, train.main, argv) == message


# ----------------------------------------------------------------------------- data classes

def test_a_one_class_image_folder_is_refused_naming_the_path(tmp_path, capsys):
    """Before: it trained, and every image being of the one class, reported 0.00% error."""
    root = make_imagefolder(tmp_path / "one", classes=("cat",), train=12, test=4)
    message = f"{root} holds 1 class (cat): a classifier needs at least 2 class folders"
    with pytest.raises(ValueError) as caught:
        load_data(DataConfig(source=str(root), val_size=2))
    assert str(caught.value) == message
    argv = ["--data", str(root), "--val-size", "2", "--epochs", "1", "--device", "cpu", "--set", "depth=8",
            "--results", str(tmp_path / "r")]
    assert refused(capsys, train.main, [*argv, "--dry-run"]) == message
    assert refused(capsys, train.main, argv) == message
    assert not (tmp_path / "r").exists()


GRID = """
name = "probe"
seeds = 1
[fixed]
depth = 8
widths = [4, 8, 16]
batch_size = 32
{extra}
[axes]
residual = [true, false]
"""


@pytest.mark.parametrize("extra, message", [
    ("num_classes = 3", "num_classes=3 is invalid: the data have 10 classes"),
    ("in_channels = 1", "in_channels=1 is invalid: the data's images have 3 channels"),
])
@pytest.mark.parametrize("dry", [True, False])
def test_a_grid_refuses_a_model_its_data_cannot_train_before_any_run(extra, message, dry, tmp_path, capsys):
    """Before: the grid's dry run passed; the runs failed (num_classes) or trained the RGB model
    anyway under a run id that said in_channels=1."""
    path = tmp_path / "probe.toml"
    path.write_text(GRID.format(extra=extra))
    argv = ["--grid", str(path), "--data", "synthetic:200", "--val-size", "40", "--epochs", "1", "--device", "cpu",
            "--threads", "1", "--quiet", "--results", str(tmp_path / "r"), *(["--dry-run"] if dry else [])]
    assert refused(capsys, driver("run").main, argv).startswith(message)
    assert not (tmp_path / "r" / "runs").exists()


def test_a_study_refuses_a_model_its_data_cannot_train_in_its_plan(tmp_path, capsys):
    args = study_args(tmp_path, "--trials", "1", "--dry-run", "--set", "in_channels=1")
    assert refused(capsys, run_driver.main, args).startswith("in_channels=1 is invalid: the data's images have 3 ")


def test_a_study_seed_past_the_samplers_range_names_the_field(tmp_path, capsys):
    """Before: numpy's "Seed must be between 0 and 2**32 - 1", naming no field."""
    args = study_args(tmp_path, "--trials", "1", "--dry-run", "--seed", str(2**32))
    assert refused(capsys, run_driver.main, args) == ("seed=4294967296 is invalid: expected an integer from 0 to "
                                                      "4294967295 (2**32 - 1)")


# ------------------------------------------------------------------------------ run records

@pytest.mark.parametrize("schema", [[2], "two", True, 0])
def test_a_record_with_a_malformed_run_id_schema_is_skipped_with_a_warning(schema, tmp_path):
    """The record is skipped, as any unreadable record is (one warning naming the file and the
    field), so the other records and every command stay usable. Before: migration raised a
    TypeError ([2]) or a ValueError ("two") on every command, and never finished."""
    results = tmp_path / "r"
    good = RunRecord("a" * 16, "completed", to_dict(RunConfig()), provenance={"run_id_schema": 2})
    bad = RunRecord("b" * 16, "completed", to_dict(RunConfig()), provenance={"run_id_schema": schema})
    write_record(results, good)
    bad_path = write_record(results, bad)
    with pytest.raises(ValueError) as caught:
        read_record(bad_path)
    assert str(caught.value) == (f"{bad_path}: field 'provenance.run_id_schema' is {schema!r}, not a run-id "
                                 "schema (an integer >= 1)")
    migrate_run_ids(results)
    migrate_run_ids(results)  # the marker was written: the scan finished
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        runs = load_runs(results)
    assert list(runs["run_id"]) == ["a" * 16] and runs.attrs["skipped"] == [str(bad_path)]
    assert [str(w.message) for w in caught_warnings] == [f"skipping {caught.value}"]


# ----------------------------------------------------------------------------- study journal

def write_journal(path: Path) -> list[bytes]:
    """A study of 1 finished trial in a journal file; returns its lines."""
    study = optuna.create_study(study_name="tiny", storage=open_storage(str(path)))
    trial = study.ask()
    study.tell(trial, 0.5)
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("where", ["middle", "end"])
@pytest.mark.parametrize("line", [b'{"x": 1}\n', b'{"op_code": 4, "worker_id": "w"}\n', b"[1, 2]\n"])
def test_a_json_line_that_is_no_optuna_operation_is_one_line_naming_the_journal_and_line(
        where, line, tmp_path, capsys):
    """The choice, beside the repair of a damaged tail (resnet_core/study/journal.py): that repair
    cuts what a killed or failed write leaves (a line without its end, or one that is not JSON).
    A whole JSON line that is no operation was written by something else: it is the user's data,
    and cutting a whole line would shift the line offsets that each process's Optuna reader keeps.
    So it is never cut; wherever it stands, reading the journal is one line naming the file and the
    line, and both the study and its report exit 2. Before: a bare KeyError or AssertionError."""
    results = tmp_path / "res"
    path = results / "studies" / "tiny.log"
    path.parent.mkdir(parents=True)
    lines = write_journal(path)
    at = 1 if where == "middle" else len(lines)
    path.write_bytes(b"".join([*lines[:at], line, *lines[at:]]))
    text = json.dumps(json.loads(line))
    message = (f"journal {path} line {at + 1} is not an Optuna operation ({text}): something other than a study "
               "wrote it; delete that line (or restore the file from a copy) and run again")
    assert refused(capsys, report_driver.main, ["--study-name", "tiny", "--results", str(results)]) == message
    assert refused(capsys, run_driver.main, study_args(tmp_path, "--trials", "2", results=results)) == message
    path.write_bytes(b"".join(lines))  # the line deleted, as the message says: the study reads again
    assert len(optuna.load_study(study_name="tiny", storage=open_storage(str(path))).trials) == 1


# ------------------------------------------------------------------------------ study names

@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "x" * 250, "x" * 201, "é" * 101])
def test_a_study_name_that_cannot_be_a_file_name_is_refused_before_anything_is_made(name, tmp_path, capsys,
                                                                                     monkeypatch):
    """Before: a newline was accepted into file names and reports; a 250-character name failed
    only when Optuna's lock file outgrew the 255-byte limit, leaving an empty journal behind."""
    monkeypatch.chdir(tmp_path)
    args = study_args(tmp_path, "--trials", "1")
    args[args.index("--study-name") + 1] = name
    assert refused(capsys, run_driver.main, args) == (
        f"--study-name {name!r} is invalid: expected a single name (no '/', '\\' or '..') of printable characters, "
        "at most 200 bytes in UTF-8, used as a file name under the results folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


def test_a_name_of_200_bytes_is_a_whole_study(tmp_path, capsys):
    """The limit leaves room for every file Optuna makes beside the journal (its lock's rename)."""
    args = study_args(tmp_path, "--trials", "1")
    args[args.index("--study-name") + 1] = "é" * 100
    assert run_cli(run_driver.main, args) == 0, capsys.readouterr().err
