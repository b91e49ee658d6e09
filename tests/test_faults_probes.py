"""Issue 10's grid and training probes: copied or misnamed records, dotted axis names, training
metrics on a split smaller than a batch, names that escape the results folder, environment errors,
a huge dry run, two drivers on one results folder, and SIGTERM of ``python -m resnet_core.train``.

Each test reproduces one probe on tiny synthetic data and checks what the user gets: the table's
counts, the exit code and the single line, how often each run trained.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from grid_helpers import REPO, RUN, driver, keep_torch_threads  # noqa: F401
from resnet_core.grid import estimate as grid_estimate
from resnet_core.grid import cells as grid_cells
from resnet_core.grid import spec as grid_spec
from resnet_core.cli import run_cli
from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from resnet_core.engine import fit
from resnet_core.store import claim_path, claim_run, read_record

FAST = ["--data", "synthetic:200", "--val-size", "40", "--epochs", "1", "--device", "cpu", "--threads", "1"]
TWO_CELLS = """
name = "probe"
seeds = 1
[fixed]
depth = 8
widths = [4, 8, 16]
batch_size = 32
eval_batch_size = 200
[axes]
residual = [true, false]
"""

# A driver whose every training (engine.make_trainer: only a run that trains builds one) appends
# the run id to $TRAIN_LOG. --workers 1 trains in the driver's own process, so the patch applies.
COUNT_TRAININGS = """
import os, runpy, sys
from resnet_core import engine
from resnet_core.identity import run_id
make_trainer = engine.make_trainer
def logged(run, data):
    with open(os.environ["TRAIN_LOG"], "a") as log:
        log.write(run_id(run) + "\\n")
    return make_trainer(run, data)
engine.make_trainer = logged
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_grid(grid: Path, results: Path, *extra: str) -> int:
    """ablation/run.py in this process on a tiny grid (exit code as the CLI returns it)."""
    return run_cli(driver("run").main, ["--grid", str(grid), *FAST, "--results", str(results), *extra])


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "probe.toml"
    path.write_text(TWO_CELLS)
    return path


@pytest.fixture(scope="module")
def finished_grid(grid, tmp_path_factory) -> Path:
    """The two-run grid, trained once; tests work on copies of its results folder."""
    results = tmp_path_factory.mktemp("finished") / "results"
    assert run_grid(grid, results) == 0
    return results


@pytest.fixture
def results(finished_grid, tmp_path) -> Path:
    copy = tmp_path / "results"
    shutil.copytree(finished_grid, copy)
    return copy


def summary(results: Path) -> pd.DataFrame:
    return pd.read_csv(results / "ablation" / "probe" / "summary.csv").set_index("residual")


# ---------------------------------------------------------------- 1: copied and misnamed records

def test_copied_and_misnamed_records_are_reported_once_and_never_counted(grid, results, capsys):
    runs = results / "runs"
    first, second = sorted(read_record(p).run_id for p in runs.glob("*.json"))
    shutil.copy(runs / f"{first}.json", runs / f"{first} (copy).json")  # cp R/runs/ID.json "R/runs/ID (copy).json"
    shutil.copy(runs / f"{first}.json", runs / f"{second}.json")  # a file named after one run, holding another

    assert run_cli(driver("report").main, ["--grid", str(grid), "--results", str(results)]) == 0
    warning = one_line(capsys.readouterr().err)
    assert warning == (f"warning: ignored 2 record files in {runs} not named <run_id>.json (a copy or a renamed "
                       f"record; never counted): {first} (copy).json, {second}.json")
    table = summary(results)
    assert list(table["runs"]) == [1, 1] and table["completed"].sum() == 1 and table["missing"].sum() == 1
    assert "- Runs: 2 in the grid: 1 completed, 1 missing" in (results / "ablation" / "probe" / "report.md").read_text()

    assert run_grid(grid, results) == 0  # no KeyError: the run whose file held another is trained again
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if "warning" in line]  # the rest is the progress bar
    assert "2 completed" in out and len(warnings) == 1 and warnings[0].startswith("warning: ignored 1 record file in")
    assert read_record(runs / f"{second}.json").run_id == second
    table = summary(results)
    assert list(table["runs"]) == [1, 1] and list(table["completed"]) == [1, 1]


# ---------------------------------------------------------------------- 2: canonical axis names

def test_a_dotted_axis_replaces_the_same_field_and_two_spellings_are_an_error(tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text('seeds = 1\n[axes]\nresidual = [true, false]\ndepth = [8, 14]\n')
    spec = grid_spec.with_axis(grid_spec.load_grid(str(path), tmp_path), "model.depth", ["8"])
    assert spec.axes == (("residual", (True, False)), ("depth", (8,)))
    cells = grid_cells.expand(spec, {"data.source": "synthetic:400"})
    assert [c.label for c in cells] == ["residual=true, depth=8", "residual=false, depth=8"]

    path.write_text('seeds = 1\n[axes]\nresidual = [true, false]\nmodel.depth = [8, 14]\n')  # a nested table
    assert grid_spec.load_grid(str(path), tmp_path).axes == (("residual", (True, False)), ("depth", (8, 14)))

    path.write_text('seeds = 1\n[axes]\ndepth = [8, 14]\n"model.depth" = [8]\n')
    assert run_cli(driver("run").main, ["--grid", str(path), *FAST, "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    assert one_line(capsys.readouterr().err) == (f"error: {path}: axes: 'depth' and 'model.depth' name the same "
                                                 "field (model.depth): give it once")


# ------------------------------------------------------------------ 4: images actually trained

def _tiny_run(source: str, batch: int, val_size: int) -> RunConfig:
    return RunConfig(model=ModelConfig(depth=8, widths=(4, 8, 16)), device="cpu",
                     train=TrainConfig(epochs=1, batch_size=batch, eval_batch_size=500),
                     data=DataConfig(source=source, val_size=val_size))


def test_training_metrics_count_the_images_of_a_split_smaller_than_a_batch(tmp_path):
    """400 training images: batch 1024 and batch 600 take the same single step on them."""
    epochs = [fit(_tiny_run("synthetic:500", batch, 100), results_dir=tmp_path / str(batch)).history[0]
              for batch in (1024, 600)]
    assert epochs[0]["train_error"] == epochs[1]["train_error"]
    assert epochs[0]["train_loss"] == epochs[1]["train_loss"]
    for epoch in epochs:
        assert epoch["images_per_s"] * epoch["seconds"] == pytest.approx(400)


def test_one_class_data_is_refused_before_a_record_is_written(tmp_path):
    """Every label the same, a run would report 0.00% error and learn nothing (issue 26)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("test", 8)):
        folder = tmp_path / "one" / split / "cat"
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match=r"one holds 1 class \(cat\): a classifier needs at least 2 class folders"):
        fit(_tiny_run(str(tmp_path / "one"), 64, 8), results_dir=tmp_path / "results")
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------- 5: grid names

def test_a_grid_name_must_stay_inside_the_results_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "escape.toml"
    path.write_text(TWO_CELLS.replace('name = "probe"', 'name = "../../x"'))
    results = tmp_path / "results"
    assert run_cli(driver("run").main, ["--grid", str(path), *FAST, "--results", str(results)]) == 2
    assert one_line(capsys.readouterr().err) == (f"error: {path}: grid name '../../x' is invalid: expected a single "
                                                 "name (no '/', '\\' or '..') of printable characters, at most 200 "
                                                 "bytes in UTF-8, used as a file name under the results folder")
    assert run_cli(driver("report").main, ["--grid", "../../x", "--results", str(results)]) == 2
    assert one_line(capsys.readouterr().err).startswith("error: grid name '../../x' is invalid")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escape.toml"]


# ------------------------------------------------------------------------ 6: environment errors

@pytest.mark.parametrize("fault", ["read-only", "full disk"])
def test_an_unwritable_or_full_disk_is_one_line_from_the_grid_report(fault, grid, results, capsys, monkeypatch):
    import resnet_core.store as store

    code = errno.EROFS if fault == "read-only" else errno.ENOSPC

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    if fault == "read-only":
        monkeypatch.setattr(store.tempfile, "mkstemp", fail)  # no file can be created
    else:
        monkeypatch.setattr(store.os, "fsync", fail)  # the data cannot be flushed to the disk
    assert run_cli(driver("report").main, ["--grid", str(grid), "--results", str(results)]) == 2
    report_dir = results / "ablation" / "probe"
    assert one_line(capsys.readouterr().err) == f"error: {report_dir / 'summary.csv'}: {os.strerror(code)}"
    assert not [p for p in report_dir.iterdir() if p.suffix == ".tmp"]


def test_a_grid_manifest_without_runs_is_one_line(grid, results, capsys):
    manifest = results / "ablation" / "probe" / "grid.json"
    values = json.loads(manifest.read_text())
    del values["runs"]
    manifest.write_text(json.dumps(values))
    assert run_cli(driver("report").main, ["--grid", str(grid), "--results", str(results)]) == 2
    assert one_line(capsys.readouterr().err) == (f"error: {manifest}: not a grid manifest: 'runs' is missing or not "
                                                 "a list: rerun `python ablation/run.py --grid probe` to write it again")


def test_train_checks_its_results_folder_before_training(tmp_path, capsys, monkeypatch):
    from resnet_core import single_run
    from resnet_core.commands import train

    monkeypatch.setattr(single_run, "fit", lambda *a, **k: pytest.fail("trained before checking the results folder"))
    (tmp_path / "a_file").write_text("")
    results = tmp_path / "a_file" / "results"  # nothing can be created below a regular file, even as root
    argv = ["--set", "depth=8", "--epochs", "1", "--data", "synthetic:200", "--val-size", "40", "--device", "cpu", "--quiet",
            "--results", str(results)]
    assert run_cli(train.main, argv) == 2
    assert one_line(capsys.readouterr().err) == (f"error: results directory '{results}' is not writable: "
                                                 f"Not a directory ({results})")


# -------------------------------------------------------------------------- 7: a huge dry run

def test_a_huge_dry_run_measures_each_model_once_and_prints_progress(tmp_path, capsys, monkeypatch):
    lrs = ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(100))
    path = tmp_path / "huge.toml"
    path.write_text(f"name = 'huge'\nseeds = 1\n[fixed]\nbatch_size = 32\n[axes]\ndepth = [8, 14]\nlr = [{lrs}]\n"
                    f"weight_decay = [{lrs}]\n")
    run = driver("run")
    measured = []
    monkeypatch.setattr(grid_estimate, "measure_step_rate",
                        lambda cfg, steps: measured.append(cfg.model.depth) or 1000.0)
    started = time.monotonic()
    assert run_cli(run.main, ["--grid", str(path), *FAST, "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    assert time.monotonic() - started < 60
    out, err = capsys.readouterr()
    assert measured == [8, 14]  # one step rate per distinct model, not one per cell
    assert "20,000 runs, 0 already done; estimated" in out and "... and 19,950 more runs in further cells" in out
    assert len(out.splitlines()) < 60  # 50 cells listed, not 20,000
    assert "dry run: measuring the step rate of model 2" in err
    assert not (tmp_path / "r").exists()

    path.write_text("[axes]\n" + "".join(f"{f} = [{lrs}]\n" for f in ("lr", "momentum", "weight_decay", "gamma")))
    spec = grid_spec.load_grid(str(path), tmp_path)  # 10^8 cells x 3 seeds: cells are built only when asked for
    assert grid_cells.run_count(spec) == 3 * 10**8
    first = next(grid_cells.iter_cells(spec, {"data.source": "synthetic:400"}))
    assert first.label == "lr=0.001, momentum=0.001, weight_decay=0.001, gamma=0.001" and first.seed == 0


# ------------------------------------------------------------------------------- 8: run claims

def test_a_claim_is_exclusive_released_on_exit_and_free_after_its_holder_died(tmp_path):
    with claim_run(tmp_path, "abc") as mine:
        assert mine and claim_path(tmp_path, "abc").read_text().split()[1] == str(os.getpid())
        with claim_run(tmp_path, "abc") as again:  # another driver asking meanwhile
            assert not again
    assert not claim_path(tmp_path, "abc").exists()
    holder = subprocess.Popen([sys.executable, "-c", "from resnet_core.store import claim_run; import sys, time\n"
                               f"with claim_run({str(tmp_path)!r}, 'abc'):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held"
    with claim_run(tmp_path, "abc") as taken:
        assert not taken
    holder.kill()  # SIGKILL: its lock file stays behind, naming a dead pid
    holder.wait()
    assert claim_path(tmp_path, "abc").exists()
    with claim_run(tmp_path, "abc") as taken:
        assert taken


def test_two_drivers_on_one_results_folder_train_each_run_once(tmp_path):
    grid = tmp_path / "shared.toml"
    grid.write_text(TWO_CELLS.replace("seeds = 1", "seeds = 2"))  # 2 cells x 2 seeds
    results, log = tmp_path / "results", tmp_path / "trained.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRAIN_LOG": str(log)}
    argv = [sys.executable, "-c", COUNT_TRAININGS, str(RUN), "--grid", str(grid), *FAST, "--results", str(results)]
    drivers = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for process in drivers:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        assert "4 completed" in out, out
    trained = log.read_text().split()
    records = {read_record(p).run_id: read_record(p).status for p in (results / "runs").glob("*.json")}
    assert sorted(trained) == sorted(records) and len(records) == 4  # each run trained exactly once
    assert set(records.values()) == {"completed"}
    assert not list((results / "claims").iterdir())


# ------------------------------------------------------------------ 9: SIGTERM of the train CLI

def test_train_under_sigterm_exits_130_and_wall_seconds_add_up(tmp_path):
    from resnet_core.commands import train

    argv = ["--set", "depth=8", "--set", "widths=4,8,16", "--set", "eval_batch_size=100", "--recipe", "quick",
            "--epochs", "40", "--batch-size", "32", "--data", "synthetic:100", "--val-size", "20", "--device", "cpu",
            "--quiet", "--threads", "1", "--results", str(tmp_path)]
    process = subprocess.Popen([sys.executable, "-m", "resnet_core.train", *argv], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while not list((tmp_path / "checkpoints").glob("*.pt")):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: finished work is saved")
    (path,) = (tmp_path / "runs").glob("*.json")
    stopped = read_record(path)
    assert stopped.status == "stopped" and stopped.stop_reason == "KeyboardInterrupt" and stopped.wall_seconds > 0

    assert run_cli(train.main, argv) == 0  # resumes from the checkpoint
    done = read_record(path)
    assert done.status == "completed" and len(done.history) == 40
    assert done.wall_seconds > stopped.wall_seconds  # the time before SIGTERM is kept and added to
    assert not list((tmp_path / "claims").iterdir())
