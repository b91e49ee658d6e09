"""Results written under run-id schema 1 stay usable: records, checkpoints and grid manifests are
renamed once, with one line, so finished runs are not trained again and unfinished ones resume."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import threading
import time

import optuna
import pytest
import torch

from resnet_core import migrate
from resnet_core.cli import run_cli
from resnet_core.commands import grid as grid_command
from resnet_core.grid import estimate as grid_estimate
from resnet_core.grid import plan as grid_plan
from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig, to_dict
from resnet_core.grid.report import build_grid_report
from resnet_core.identity import run_id
from resnet_core.migrate import MARKER, current_run_ids, migrate_run_ids, print_migration, schema1_run_id, with_previous_ids
from resnet_core.runner import run_all, split_done
from resnet_core.store import RunRecord, checkpoint_path, load_runs, read_record, record_path, write_record

DATA = DataConfig(source="synthetic", val_size=200, subset=600)


def tiny(seed: int, depth: int = 8) -> RunConfig:
    return RunConfig(model=ModelConfig(depth=depth), train=TrainConfig(epochs=1, batch_size=64, eval_batch_size=500),
                     data=DATA, seed=seed, device="cpu")


def old_id(run: RunConfig) -> str:
    """Schema 1, written out as it was: every field but device, cache_dir, root, download and
    checkpoint, the data source included, as compact sorted JSON."""
    full = to_dict(run)
    del full["device"], full["data"]["cache_dir"], full["data"]["root"], full["data"]["download"]
    del full["train"]["checkpoint"]
    return hashlib.sha256(json.dumps(full, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def write_old_record(results, run: RunConfig, status: str = "completed", **provenance) -> str:
    """A record as schema-1 code wrote it: named by the old id, no run_id_schema in its provenance."""
    rid = old_id(run)
    write_record(results, RunRecord(run_id=rid, status=status, config=to_dict(run),
                                    history=[{"epoch": 1, "iteration": 10, "train_error": 40.0, "test_error": 42.0}],
                                    final={"test_error": 42.0}, provenance={"torch": "2.x", **provenance}))
    return rid


def write_checkpoint(results, rid: str) -> None:
    path = checkpoint_path(results, rid)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"run_id": rid, "iteration": 10, "history": []}, path)


def write_manifest(results, run_ids) -> None:
    (results / "ablation" / "g").mkdir(parents=True, exist_ok=True)
    (results / "ablation" / "g" / "grid.json").write_text(json.dumps(
        {"grid": "g", "axes": [], "seeds": [0], "runs": [{"run_id": rid, "cell": "base", "seed": 0} for rid in run_ids]}))


def manifest_ids(results) -> list[str]:
    return [entry["run_id"] for entry in json.loads((results / "ablation" / "g" / "grid.json").read_text())["runs"]]


def snapshot(folder) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` with its modification time and bytes (folders by their mtime)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in [folder, *sorted(folder.rglob("*"))]}


def test_schema1_id_is_the_old_formula():
    run = tiny(3)
    assert schema1_run_id(to_dict(run)) == old_id(run) != run_id(run)


def test_old_records_and_checkpoints_are_migrated_once_with_one_line(tmp_path):
    results = tmp_path / "results"
    done, stopped, orphan, fresh = tiny(0), tiny(1), tiny(2), tiny(3)
    done_old = write_old_record(results, done)
    stopped_old = write_old_record(results, stopped, status="stopped")
    write_checkpoint(results, stopped_old)
    write_checkpoint(results, old_id(orphan))  # killed before it wrote any record
    (results / "ablation" / "g").mkdir(parents=True)
    (results / "ablation" / "g" / "grid.json").write_text(json.dumps(
        {"grid": "g", "axes": [], "runs": [{"run_id": done_old, "cell": "base"}]}))

    migration = migrate_run_ids(results, [done, stopped, orphan, fresh])
    assert migration.message() == (f"migrated 2 run records, 2 checkpoints, 1 grid manifest in {results} "
                                   "to run-id schema 2")
    record = read_record(record_path(results, run_id(done)))
    assert record.run_id == run_id(done) and record.provenance["previous_run_id"] == done_old
    assert record.provenance["run_id_schema"] == 2 and record.final == {"test_error": 42.0}
    assert not record_path(results, done_old).exists()
    for run in (stopped, orphan):
        state = torch.load(checkpoint_path(results, run_id(run)), weights_only=True)
        assert state["run_id"] == run_id(run)  # what engine.load_checkpoint checks before resuming
    assert sorted(p.stem for p in checkpoint_path(results, "x").parent.iterdir()) == sorted(
        [run_id(stopped), run_id(orphan)])
    manifest = json.loads((results / "ablation" / "g" / "grid.json").read_text())
    assert manifest["runs"][0]["run_id"] == run_id(done)
    finished, pending = split_done([done, stopped, orphan, fresh], results)
    assert [o.run_id for o in finished] == [run_id(done)] and pending == [stopped, orphan, fresh]
    assert len(load_runs(results)) == 2
    assert migrate_run_ids(results, [done]).message() is None  # once
    # Optuna trials keep naming the old ids: a study report maps them to the records' new ids.
    assert current_run_ids([done_old, "unknown"], load_runs(results)) == [run_id(done), "unknown"]


def test_a_finished_old_run_is_not_trained_again(tmp_path, capsys):
    results = tmp_path / "results"
    write_old_record(results, tiny(0))
    (outcome,) = run_all([tiny(0)], results, workers=1, device="cpu", progress=False)
    assert outcome.status == "completed" and not outcome.trained_now and outcome.test_error == 42.0
    assert "migrated 1 run record" in capsys.readouterr().err


def test_a_directory_keeps_the_fingerprint_it_trained_on_and_its_path_no_longer_matters(tmp_path):
    results = tmp_path / "results"
    gone = RunConfig(data=DataConfig(source=str(tmp_path / "moved-away")), seed=1)
    rid = write_old_record(results, gone, data_fingerprint="0123456789abcdef")
    migrate_run_ids(results)
    (record,) = load_runs(results).itertuples()
    assert record.run_id == run_id(gone, data="content:0123456789abcdef") and record.run_id != rid


def test_records_that_are_not_schema_1_are_left_alone(tmp_path):
    results = tmp_path / "results"
    current = RunRecord(run_id=run_id(tiny(0)), status="completed", config=to_dict(tiny(0)),
                        provenance={"run_id_schema": 2})
    write_record(results, current)
    write_record(results, RunRecord(run_id="feedfacefeedface", status="completed", config=to_dict(tiny(1))))
    migration = migrate_run_ids(results)
    assert migration.records == 0 and migration.unrecognised == (str(record_path(results, "feedfacefeedface")),)
    assert "left 1 record whose id is not a schema-1 id: feedfacefeedface.json" in migration.message()
    assert record_path(results, run_id(tiny(0))).exists() and record_path(results, "feedfacefeedface").exists()


def test_a_record_whose_schema_is_not_a_number_is_left_alone_not_fatal(tmp_path):
    results = tmp_path / "results"
    for seed, schema in ((0, [2]), (1, "two")):
        write_record(results, RunRecord(run_id=run_id(tiny(seed)), status="completed", config=to_dict(tiny(seed)),
                                        provenance={"run_id_schema": schema}))
    with pytest.warns(UserWarning, match="not a run-id schema"):
        migration = migrate_run_ids(results)
        runs = load_runs(results)
    assert migration.records == 0 and runs.empty and len(runs.attrs["skipped"]) == 2  # skipped, never fatal


def test_an_old_record_whose_new_name_is_taken_is_kept_beside_it(tmp_path):
    results = tmp_path / "results"
    old = write_old_record(results, tiny(0))
    write_record(results, RunRecord(run_id=run_id(tiny(0)), status="completed", config=to_dict(tiny(0)),
                                    provenance={"run_id_schema": 2}))
    migration = migrate_run_ids(results)
    assert migration.superseded == 1 and len(load_runs(results)) == 1
    assert "set aside 1 old-schema record whose migrated copy is there" in migration.message()
    assert (results / "runs" / f"{old}.json.schema1").exists()


def test_study_reports_find_a_migrated_record_under_the_id_its_trial_kept():
    import pandas as pd

    from resnet_core.migrate import current_run_ids, with_previous_ids

    runs = pd.DataFrame({"run_id": ["new1", "same"], "provenance.previous_run_id": ["old1", None],
                         "final.test_error": [12.5, 30.0]})
    both = with_previous_ids(runs)
    assert both.set_index("run_id").loc["old1", "final.test_error"] == 12.5 and len(both) == 3
    assert current_run_ids(["old1", "same", "other"], runs) == ["new1", "same", "other"]
    assert with_previous_ids(runs.drop(columns="provenance.previous_run_id")) is not None
    # An old record still counted beside its migrated copy keeps its own row: a run id joins one row.
    old_too = pd.concat([runs, pd.DataFrame({"run_id": ["old1"], "final.test_error": [12.5]})], ignore_index=True)
    assert with_previous_ids(old_too)["run_id"].is_unique


# ----------------------------------------------------------- migration that cannot lose or double

def trial_rows(results, old_ids) -> int:
    """Rows of a study's trials.csv table whose trials name ``old_ids`` (as trials run before a
    migration do)."""
    from resnet_core.study.tables import trials_table

    study = optuna.create_study()
    for rid in old_ids:
        study.add_trial(optuna.trial.create_trial(value=42.0, params={}, distributions={}, user_attrs={"run_id": rid}))
    return len(trials_table(study, with_previous_ids(load_runs(results))))


def test_old_records_restored_beside_their_migrated_copies_are_counted_once_and_set_aside(tmp_path, capsys):
    results, backup = tmp_path / "results", tmp_path / "backup"
    runs = [tiny(0), tiny(1)]
    old_ids = [write_old_record(results, run) for run in runs]
    write_manifest(results, old_ids)
    shutil.copytree(results, backup)
    assert migrate_run_ids(results).records == 2 and (results / MARKER).is_file()
    shutil.copytree(backup, results, dirs_exist_ok=True)  # a restored backup: old records and manifest back
    # Before any command migrates again, nothing downstream counts a run twice.
    assert sorted(load_runs(results)["run_id"]) == sorted(run_id(r) for r in runs)
    assert trial_rows(results, old_ids) == 2
    table = build_grid_report(results, "g").summary
    assert table["test_error_n"].sum() == 2 and table["test_error_mean"].tolist() == [42.0]

    migration = print_migration(results, runs)  # the marker says schema 2: each record is looked at anyway
    err = capsys.readouterr().err
    assert migration.superseded == 2 and migration.manifests == 1 and len(err.splitlines()) == 1
    assert "set aside 2 old-schema records whose migrated copy is there" in err
    assert sorted(p.name for p in (results / "runs").iterdir()) == sorted(
        [f"{run_id(r)}.json" for r in runs] + [f"{rid}.json.schema1" for rid in old_ids])
    assert manifest_ids(results) == [run_id(r) for r in runs] and trial_rows(results, old_ids) == 2
    assert migrate_run_ids(results).message() is None


def test_a_corrupt_old_checkpoint_is_set_aside_with_one_line_and_the_rest_is_migrated(tmp_path, capsys):
    results = tmp_path / "results"
    done, stopped = tiny(0), tiny(1)
    done_old, stopped_old = write_old_record(results, done), write_old_record(results, stopped, status="stopped")
    write_manifest(results, [done_old, stopped_old])
    path = checkpoint_path(results, stopped_old)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    migration = print_migration(results, [done, stopped])
    err = capsys.readouterr().err
    assert migration.unreadable == (str(path),) and len(err.splitlines()) == 1
    assert "set aside 1 unreadable old checkpoint as *.pt.unreadable" in err
    assert not path.exists() and path.with_name(path.name + ".unreadable").read_bytes() == b"not a checkpoint"
    assert manifest_ids(results) == [run_id(done), run_id(stopped)] and (results / MARKER).is_file()
    finished, pending = split_done([done, stopped], results)  # the stopped run trains again, from its start
    assert [o.run_id for o in finished] == [run_id(done)] and pending == [stopped]
    assert print_migration(results, [done, stopped]).message() is None and not capsys.readouterr().err


def test_the_marker_is_written_last_so_a_pass_cut_short_is_finished_by_the_next(tmp_path, monkeypatch):
    results = tmp_path / "results"
    done, stopped = tiny(0), tiny(1)
    done_old, stopped_old = write_old_record(results, done), write_old_record(results, stopped, status="stopped")
    write_checkpoint(results, stopped_old)
    write_manifest(results, [done_old, stopped_old])

    def disk_full(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as patch:
        patch.setattr(migrate, "atomic_write_bytes", disk_full)  # the checkpoint write fails
        try:
            migrate_run_ids(results, [done, stopped])
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        else:
            raise AssertionError("the disk-full write did not stop the migration")
    assert not (results / MARKER).exists()
    migration = migrate_run_ids(results, [done, stopped])
    assert (migration.records, migration.checkpoints, migration.manifests) == (0, 1, 1)
    assert (results / MARKER).read_text().strip() == "2"
    assert manifest_ids(results) == [run_id(done), run_id(stopped)]
    assert torch.load(checkpoint_path(results, run_id(stopped)), weights_only=True)["run_id"] == run_id(stopped)
    summary = build_grid_report(results, "g").summary.iloc[0]
    assert (summary["completed"], summary["stopped"], summary["missing"]) == (1, 1, 0)  # no run reported missing


def test_two_drivers_migrating_at_once_both_succeed_and_every_record_is_kept(tmp_path, monkeypatch):
    results = tmp_path / "results"
    runs = [tiny(seed) for seed in range(6)]
    for run in runs:
        write_check = write_old_record(results, run, status="stopped")
        write_checkpoint(results, write_check)
    read = migrate.read_record

    def slow_read(path):  # widens the window in which the two passes overlap
        time.sleep(0.01)
        return read(path)

    monkeypatch.setattr(migrate, "read_record", slow_read)
    start, answers, errors = threading.Barrier(2), [], []

    def driver() -> None:
        start.wait()
        try:
            answers.append(migrate_run_ids(results, runs))
        except Exception as exc:  # noqa: BLE001 - the test reports any failure of either driver
            errors.append(exc)

    threads = [threading.Thread(target=driver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(a.records for a in answers) == [0, 6] and sorted(a.checkpoints for a in answers) == [0, 6]
    assert sorted(p.name for p in (results / "runs").iterdir()) == sorted(f"{run_id(r)}.json" for r in runs)
    assert sorted(p.name for p in checkpoint_path(results, "x").parent.iterdir()) == sorted(
        f"{run_id(r)}.pt" for r in runs)
    assert not list(results.glob("*.lock"))


def test_a_dry_run_writes_nothing_and_says_a_migration_would_happen(tmp_path):
    results = tmp_path / "results"
    old = write_old_record(results, tiny(0))
    write_checkpoint(results, old)
    write_manifest(results, [old])
    before = snapshot(results)
    migration = migrate_run_ids(results, [tiny(0)], dry_run=True)
    assert migration.message() == (f"a real run would migrate 1 run record, 1 checkpoint, 1 grid manifest in {results} "
                                   "to run-id schema 2 (dry run: nothing written)")
    assert migration.done_ids == {run_id(tiny(0))} and snapshot(results) == before


def test_the_grid_dry_run_on_an_old_folder_writes_nothing_and_counts_its_finished_runs(tmp_path, capsys, monkeypatch):
    """A read-only results folder (root ignores chmod, so: nothing under it may change)."""
    grid, results = tmp_path / "g.toml", tmp_path / "results"
    grid.write_text("name = 'g'\nseeds = 1\n[fixed]\nbatch_size = 32\n[axes]\ndepth = [8, 14]\n")
    argv = ["--grid", str(grid), "--data", "synthetic:200", "--val-size", "40", "--subset", "120", "--epochs", "1",
            "--device", "cpu", "--results", str(results), "--dry-run"]
    monkeypatch.setattr(grid_estimate, "measure_step_rate", lambda run, steps: 1000.0)
    cells = []
    with monkeypatch.context() as patch:  # the grid's own runs, as its command builds them
        patch.setattr(grid_plan, "print_migration", lambda where, runs, **how: cells.extend(runs) or
                      print_migration(where, (), **how))
        assert run_cli(grid_command.main, argv) == 0
    write_old_record(results, cells[0])  # depth 8 finished under schema 1
    capsys.readouterr()
    before = snapshot(results)
    assert run_cli(grid_command.main, argv) == 0
    out, err = capsys.readouterr()
    assert "a real run would migrate 1 run record" in err and "2 runs, 1 already done" in out
    assert snapshot(results) == before


def test_each_command_migrates_once_and_a_report_never(tmp_path, monkeypatch, capsys, one_thread):
    """One migration per command, where it plans (a local grid used to migrate again in its runner, a
    study again in its final stage); reports only read, so they never rename anything."""
    from importlib import import_module

    from test_study import TINY_SPACE, tiny_args

    calls = []
    real = migrate.migrate_run_ids
    monkeypatch.setattr(migrate, "migrate_run_ids", lambda *args, **kw: calls.append(args[0]) or real(*args, **kw))
    results, grid, space = tmp_path / "results", tmp_path / "g.toml", tmp_path / "space.toml"
    grid.write_text("name = 'g'\nreport = 'generic'\nseeds = 1\n[fixed]\ndepth = 8\nbatch_size = 32\n"
                    "[axes]\nresidual = [true]\n")
    space.write_text(TINY_SPACE)
    tiny = ["--data", "synthetic:200", "--val-size", "40", "--subset", "100", "--epochs", "1", "--device", "cpu",
            "--threads", "1", "--results", str(results), "--quiet"]
    commands = {
        "grid": ("grid", ["--grid", str(grid), *tiny]),
        "grid report": ("grid_report", ["--grid", "g", "--results", str(results)]),
        "train": ("train", ["--set", "depth=8", "--batch-size", "32", *tiny]),
        "study": ("study", tiny_args(results, space, "--trials", "1", "--final-seeds", "1", "--final-epochs", "1")),
        "study report": ("study_report", ["--study-name", "tiny", "--results", str(results), "--no-figures"]),
    }
    counted = {}
    for name, (module, argv) in commands.items():
        main = import_module(f"resnet_core.commands.{module}").main
        calls.clear()
        assert run_cli(main, argv) == 0, capsys.readouterr()
        counted[name] = len(calls)
    assert counted == {"grid": 1, "grid report": 0, "train": 1, "study": 1, "study report": 0}
