"""Issue 10's study probes: a damaged journal tail (cut short, garbage, a full disk) is repaired
before the next append; record copies are never counted; names, spaces, storage URLs and seeds are
checked before any work; a study that misses its target exits 1; sampler and pruner are remembered.

Each test reproduces one probe on a tiny synthetic study and checks what the user gets: the exit
code, the single error line, the repaired journal, the table's rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from resnet_core.cli import run_cli
from resnet_core.study.common import FINISHED
from resnet_core.study.journal import damaged_tail
from resnet_core.study.space import read_space, validate_space
from resnet_core.study.spec import base_run, budget
from resnet_core.study.storage import open_storage

REPO = Path(__file__).resolve().parents[1]
from resnet_core.commands import study as run_driver  # resnet-study (studies/run.py in a checkout)
from resnet_core.commands import study_report as report_driver  # resnet-study-report

SPACE = '[params.lr]\ntype = "float"\nlow = 0.01\nhigh = 0.2\nlog = true\n'

# studies/run.py in a process whose writes to the journal (*.log) fail with ENOSPC after
# JOURNAL_WRITES_OK of them, each failing one having written half its bytes: a disk that fills up.
FULL_DISK = """
import errno, os, runpy, sys
real_write, left = os.write, [int(os.environ["JOURNAL_WRITES_OK"])]
def write(fd, data):
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".log"):
        if left[0] <= 0:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        left[0] -= 1
    return real_write(fd, data)
os.write = write
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(autouse=True)
def _quiet():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def study_args(tmp_path: Path, *extra: str, results: Path | None = None) -> list[str]:
    """A 1-epoch depth-8 study on 200 synthetic images, one CPU thread, journal under <results>."""
    space = tmp_path / "tiny.toml"
    space.write_text(SPACE)
    return ["--space", str(space), "--data", "synthetic:300", "--subset", "200", "--val-size", "100",
            "--epochs", "1", "--set", "depth=8", "--set", "widths=4,8,16", "--set", "batch_size=50",
            "--set", "eval_batch_size=500", "--device", "cpu", "--results", str(results or tmp_path / "res"),
            "--study-name", "tiny", "--quiet", "--no-figures", "--sampler", "random", "--threads", "1",
            "--pruner", "median", "--final-seeds", "0", *extra]


def run_study(args: list[str], wrapper: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """studies/run.py in a process of its own (optionally under ``wrapper`` code): its trials name
    a pid that is dead afterwards, as after a real kill, so a rerun can tell them from live ones."""
    script = str(REPO / "studies" / "run.py")
    command = [sys.executable, "-c", wrapper, script] if wrapper else [sys.executable, script]
    return subprocess.run([*command, *args], env={**os.environ, "PYTHONPATH": str(REPO), **env},
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    """A 2-trial study, run once; tests work on copies of its results folder."""
    home = tmp_path_factory.mktemp("study")
    done = run_study(study_args(home, "--trials", "2"))
    assert done.returncode == 0, done.stderr[-2000:]
    return home / "res"


@pytest.fixture
def results(finished_study, tmp_path) -> Path:
    copy = tmp_path / "res"
    shutil.copytree(finished_study, copy)
    return copy


def journal(results: Path) -> Path:
    return results / "studies" / "tiny.log"


def load(results: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=open_storage(str(journal(results))))


def assert_whole_journal(path: Path) -> list[dict]:
    """Every line is one JSON operation ending in a newline; returns the operations."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------- 3: journal tail

TAILS = {
    "truncated": lambda data: data[:-37],  # truncate -s -37: the last operation loses its end
    "garbage": lambda data: data + b'{"op_code":6,"trial_id\x00\xff',  # bytes without a newline
    "garbage line": lambda data: data + b"not json at all\n",  # a whole line that is no operation
}


@pytest.mark.parametrize("case", sorted(TAILS))
def test_damaged_journal_tail_is_cut_with_a_copy_and_the_study_goes_on(case, results, tmp_path, capsys):
    path = journal(results)
    before = path.read_bytes()
    path.write_bytes(TAILS[case](before))
    damaged = path.read_bytes()
    offset, tail = damaged_tail(path)

    assert run_cli(report_driver.main, ["--study-name", "tiny", "--results", str(results), "--no-figures"]) == 0
    warning = one_line(capsys.readouterr().err)
    assert warning.startswith(f"warning: journal {path} ends in a damaged line")

    assert run_cli(run_driver.main, study_args(tmp_path, "--trials", "3", results=results)) == 0
    err = capsys.readouterr().err
    cut_lines = [line for line in err.splitlines() if "cut a damaged last line" in line]
    assert cut_lines == [f"journal {path}: cut a damaged last line ({len(tail)} bytes, an operation written only "
                         f"in part by a killed process or a full disk) before appending; a copy is in {path}.cut"]
    assert Path(f"{path}.cut").read_bytes() == tail + (b"" if tail.endswith(b"\n") else b"\n")
    repaired = path.read_bytes()
    assert repaired[:offset] == damaged[:offset]  # everything before the damaged line is kept as it was
    assert_whole_journal(path)
    assert len(load(results).get_trials(states=FINISHED)) == 3
    assert damaged_tail(path) is None


def test_full_disk_while_appending_is_one_line_and_leaves_a_whole_journal(results, tmp_path):
    path = journal(results)
    args = study_args(tmp_path, "--trials", "3", results=results)
    done = run_study(args, FULL_DISK, JOURNAL_WRITES_OK="6")
    assert done.returncode == 2, done.stderr[-2000:]
    assert one_line(done.stderr) == (f"error: {path}: No space left on device (appending to the study journal; "
                                     "the partial write was undone)")
    assert_whole_journal(path)
    assert damaged_tail(path) is None
    load(results).trials  # the study still reads

    assert run_cli(run_driver.main, args) == 0  # the rerun: the dead worker's trial is retried
    assert_whole_journal(path)
    assert len(load(results).get_trials(states=FINISHED)) == 3


# ------------------------------------------------------------------------- 1: record copies

def test_a_copied_record_is_reported_once_and_never_duplicates_a_trial(results, capsys):
    study = load(results)
    run_ids = [t.user_attrs["run_id"] for t in study.trials]
    source = results / "runs" / f"{run_ids[0]}.json"
    shutil.copy(source, results / "runs" / f"{run_ids[0]} (copy).json")

    assert run_cli(report_driver.main, ["--study-name", "tiny", "--results", str(results), "--no-figures"]) == 0
    warning = one_line(capsys.readouterr().err)
    assert warning.startswith("warning: ignored 1 record file in") and f"{run_ids[0]} (copy).json" in warning
    trials = pd.read_csv(results / "studies" / "tiny" / "trials.csv")
    assert sorted(trials["number"]) == [t.number for t in study.trials]  # one row per trial
    assert list(trials["run_status"]) == ["completed"] * len(study.trials)


# ---------------------------------------------------------------------------- 5: study names

@pytest.mark.parametrize("name", ["../../../../x", "/abs/x", ".."])
def test_a_study_name_must_stay_inside_the_results_folder(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = study_args(tmp_path, "--trials", "1")
    args[args.index("--study-name") + 1] = name
    assert run_cli(run_driver.main, args) == 2
    captured = capsys.readouterr()
    assert one_line(captured.err) == (f"error: --study-name {name!r} is invalid: expected a single name "
                                      "(no '/', '\\' or '..') of printable characters, at most 200 bytes in UTF-8, "
                                      "used as a file name under the results folder")
    assert captured.out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]
    assert run_cli(report_driver.main, ["--study-name", name, "--results", str(tmp_path / "res")]) == 2
    assert one_line(capsys.readouterr().err).startswith("error: study name")


# ------------------------------------------------------------- 6: environment and bad spaces

def test_read_only_results_folder_is_one_line_from_the_study_report(results, capsys, monkeypatch):
    import errno

    import resnet_core.store as store

    def read_only(dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)

    monkeypatch.setattr(store.tempfile, "mkstemp", read_only)
    assert run_cli(report_driver.main, ["--study-name", "tiny", "--results", str(results), "--no-figures"]) == 2
    assert one_line(capsys.readouterr().err) == (f"error: {results / 'studies' / 'tiny' / 'trials.csv'}: "
                                                 "Read-only file system")


@pytest.mark.parametrize("bound", ["high = inf", "high = nan", "low = -inf"])
def test_an_infinite_or_nan_bound_is_refused_at_validation(bound, tmp_path, capsys):
    space = tmp_path / "inf.toml"
    low, high = ("-inf", "0.2") if bound.startswith("low") else ("0.01", bound.split(" = ")[1])
    space.write_text(f'[params.lr]\ntype = "float"\nlow = {low}\nhigh = {high}\n')
    args = study_args(tmp_path, "--trials", "1", "--dry-run")
    args[args.index("--space") + 1] = str(space)
    assert run_cli(run_driver.main, args) == 2
    assert one_line(capsys.readouterr().err) == (f"error: space {space}: params.lr: low={float(low)} and "
                                                 f"high={float(high)} must be finite numbers")
    assert not (tmp_path / "res").exists()


# -------------------------------------------------------------------------------- 9: smaller

def test_a_study_whose_trials_all_fail_exits_1(tmp_path, capsys):
    space = tmp_path / "fail.toml"  # every trial fails: fewer classes than the data's 10 (fit refuses it)
    space.write_text('[params.num_classes]\ntype = "int"\nlow = 2\nhigh = 3\n')
    args = study_args(tmp_path, "--trials", "2")
    args[args.index("--space") + 1] = str(space)
    assert run_cli(run_driver.main, args) == 1
    out = capsys.readouterr().out
    assert "tiny: 0 finished (0 complete, 0 pruned), 10 failed; target 2 NOT reached" in out


def test_a_study_whose_trials_all_diverge_reaches_its_target(tmp_path, capsys):
    space = tmp_path / "diverge.toml"  # every trial diverges: lr 1e20..1e30 without normalisation
    space.write_text('[params.lr]\ntype = "float"\nlow = 1e20\nhigh = 1e30\nlog = true\n'
                     '[fixed]\nnorm = "none"\nschedule = "constant"\n')
    args = study_args(tmp_path, "--trials", "2")
    args[args.index("--space") + 1] = str(space)
    assert run_cli(run_driver.main, args) == 0  # a diverged trial is a result (PRUNED), not a failure
    assert "tiny: 2 finished (0 complete, 2 pruned), 0 failed" in capsys.readouterr().out


def test_a_study_remembers_its_sampler_and_pruner(results, tmp_path, capsys):
    other = study_args(tmp_path, "--trials", "3", "--pruner", "none", results=results)
    assert run_cli(run_driver.main, other) == 2
    assert one_line(capsys.readouterr().err) == (
        "error: study 'tiny' was run another way (--pruner median in the study, none now): pass --allow-change "
        "to go on this way (the report then says from which trial), or --study-name NEW")
    assert len(load(results).trials) == 2  # refused before any trial

    assert run_cli(run_driver.main, [*other, "--allow-change"]) == 0
    study = load(results)
    assert len(study.trials) == 3 and study.user_attrs["pruner"] == "none"
    assert study.user_attrs["search_history"] == [[0, "random", "median"], [2, "random", "none"]]
    report = (results / "studies" / "tiny" / "report.md").read_text()
    assert ("| search changes | sampler random, pruner median for trials 0-1; sampler random, pruner none "
            "from trial 2 |") in report


def test_dotted_keys_in_a_space_fixed_table_are_accepted_and_a_clash_is_refused(tmp_path):
    space = tmp_path / "fixed.toml"
    space.write_text(SPACE + "[fixed]\ntrain.weight_decay = 0.5\n\"model.depth\" = 8\n")
    read = read_space(str(space))
    assert dict(read.fixed) == {"weight_decay": 0.5, "depth": 8}
    base = validate_space(read, base_run("resnet20", budget("quick")))
    assert base.train.weight_decay == 0.5 and base.model.depth == 8
    space.write_text(SPACE + "[fixed]\ntrain.weight_decay = 0.5\nweight_decay = 0.6\n")
    with pytest.raises(ValueError, match=r"'train.weight_decay' and 'weight_decay' name the same field \(train.weight_decay\)"):
        read_space(str(space))


def test_an_unencoded_at_in_a_password_never_shows_in_the_error(tmp_path, capsys):
    args = study_args(tmp_path, "--trials", "1", "--storage", "postgresql://user:pa@ss@w0rd@127.0.0.1:1/x")
    assert run_cli(run_driver.main, args) == 2
    line = one_line(capsys.readouterr().err)
    assert line == ("error: storage postgresql://user:***@127.0.0.1:1/x: the password holds an unencoded '@': "
                    "write it URL-encoded as %40")
    assert "ss@" not in line and "w0rd" not in line


def test_a_negative_seed_names_the_flag(tmp_path, capsys):
    assert run_cli(run_driver.main, study_args(tmp_path, "--trials", "1", "--seed", "-1")) == 2
    assert one_line(capsys.readouterr().err).startswith("error: --seed -1: ")

