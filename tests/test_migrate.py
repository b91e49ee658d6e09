"""Results written under run-id schema 1 stay usable: records, checkpoints and grid manifests are
renamed once, with one line, so finished runs are not trained again and unfinished ones resume."""

from __future__ import annotations

import hashlib
import json

import torch

from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig, to_dict
from resnet_core.identity import run_id
from resnet_core.migrate import current_run_ids, migrate_run_ids, schema1_run_id
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
                                    history=[{"epoch": 1, "iteration": 10, "test_error": 42.0}],
                                    final={"test_error": 42.0}, provenance={"torch": "2.x", **provenance}))
    return rid


def write_checkpoint(results, rid: str) -> None:
    path = checkpoint_path(results, rid)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"run_id": rid, "iteration": 10, "history": []}, path)


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


def test_an_old_record_whose_new_name_is_taken_is_kept_beside_it(tmp_path):
    results = tmp_path / "results"
    old = write_old_record(results, tiny(0))
    write_record(results, RunRecord(run_id=run_id(tiny(0)), status="completed", config=to_dict(tiny(0)),
                                    provenance={"run_id_schema": 2}))
    migration = migrate_run_ids(results)
    assert migration.superseded == 1 and len(load_runs(results)) == 1
    assert "1 older duplicate(s) kept as *.json.schema1" in migration.message()
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
