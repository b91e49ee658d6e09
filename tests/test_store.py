"""The result store: atomic writes, corrupt files skipped and counted, flat tables."""

from __future__ import annotations

import json

import pytest

from resnet_core.store import RunRecord, atomic_write_text, load_runs, read_record, record_path, write_record


def make_record(run_id: str = "abc", status: str = "completed") -> RunRecord:
    return RunRecord(
        run_id=run_id,
        status=status,
        config={"model": {"depth": 20, "widths": [16, 32, 64]}, "train": {"lr": 0.1}, "data": {"source": "x"},
                "seed": 0, "device": "cpu"},
        history=[{"epoch": 1, "iteration": 10, "test_error": 50.0, "grad_norm": {"stage1": 1.0}}],
        final={"test_error": 50.0, "val_error": float("nan")},
        provenance={"torch": "2.x"},
    )


def test_round_trip_and_nan_as_null(tmp_path):
    path = write_record(tmp_path, make_record())
    assert path == record_path(tmp_path, "abc")
    assert json.loads(path.read_text())["final"]["val_error"] is None
    back = read_record(path)
    assert back.status == "completed" and back.history[0]["grad_norm"]["stage1"] == 1.0


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}")
    atomic_write_text(tmp_path / "a.json", '{"b": 1}')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"b": 1}


def test_corrupt_and_foreign_files_are_skipped_and_counted(tmp_path):
    write_record(tmp_path, make_record("good"))
    (tmp_path / "runs" / "half.json").write_text('{"run_id": "x", "sta')
    (tmp_path / "runs" / "foreign.json").write_text('{"hello": "world"}')
    with pytest.warns(UserWarning):
        runs = load_runs(tmp_path)
    assert list(runs["run_id"]) == ["good"]
    assert sorted(p.split("/")[-1] for p in runs.attrs["skipped"]) == ["foreign.json", "half.json"]


def test_flat_columns(tmp_path):
    write_record(tmp_path, make_record())
    row = load_runs(tmp_path).iloc[0]
    assert row["model.depth"] == 20 and row["model.widths"] == (16, 32, 64)
    assert row["final.test_error"] == 50.0 and row["provenance.torch"] == "2.x"
    assert row["epochs_done"] == 1


def test_a_record_with_the_wrong_shape_is_skipped(tmp_path):
    write_record(tmp_path, make_record("good"))
    bad = make_record("bad").to_dict()
    bad["config"] = 5
    (tmp_path / "runs" / "bad.json").write_text(json.dumps(bad))
    with pytest.warns(UserWarning, match="config"):
        runs = load_runs(tmp_path)
    assert list(runs["run_id"]) == ["good"] and len(runs.attrs["skipped"]) == 1


def test_a_write_leaves_the_process_umask_alone_and_gives_the_usual_mode(tmp_path, monkeypatch):
    import os

    from resnet_core import store

    current = os.umask(0o022)
    os.umask(current)
    assert store.UMASK == current  # read at import, without changing it

    def forbidden(mask):
        raise AssertionError("a record write changed the process umask")

    monkeypatch.setattr(store.os, "umask", forbidden)
    path = write_record(tmp_path, make_record())
    assert path.stat().st_mode & 0o777 == 0o666 & ~current


def test_the_writability_check_lives_in_the_store_and_names_the_folder(tmp_path):
    from resnet_core import runner, store

    assert store.check_writable(tmp_path / "new" / "results") == (tmp_path / "new" / "results").resolve()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"results directory '.*file' is not writable: Not a directory"):
        store.check_writable(tmp_path / "file")
    assert not hasattr(runner, "check_writable")  # one home: every caller imports it from the store
