"""Carry a results folder's run ids from schema 1 to the current schema, and say so in one line.

Schema 1 (``config.run_id`` before RUN_ID_SCHEMA 2) hashed every config field and the data *path*;
schema 2 hashes the settings that differ from their defaults and the data's content. Finished runs
must not train again and unfinished ones must resume, so the files named by old ids are renamed:

- ``runs/<old>.json``: rewritten as ``runs/<new>.json`` (``run_id`` and the provenance's
  ``run_id_schema`` updated, ``previous_run_id`` kept, which Optuna trials still name);
- ``checkpoints/<old>.pt``: rewritten under the new id (a checkpoint names its run inside);
- ``ablation/<grid>/grid.json``: its run ids mapped, so a report rebuilt before the next run of the
  grid still finds its records.

Every call looks at every record, whatever the marker says: old records can come back after a
migration (a restored backup, a merged folder), and one beside its migrated copy (the same run: its
content hashes to the copy's id) is set aside as ``<old>.json.schema1``, never counted twice, never
lost. Old ids of migrated records come from their ``previous_run_id``, so checkpoints and manifests
a failed pass left behind are mapped by the next one. An old checkpoint that cannot be read is set
aside as ``<old>.pt.unreadable`` (its run trains again). The marker is written last, after every
file; the work is done under a lock, so a second driver starting at the same moment waits and then
finds the folder migrated. A dry run only reads. A record that schema 1 did not name (its file name
is not the schema-1 hash of its config) is left as it is. A directory's data identity comes from
the fingerprint the record stored, so a run keeps the identity of the data it trained on.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd
import torch

from resnet_core.config import RunConfig, run_config_from_dict, to_dict
from resnet_core.identity import RUN_ID_SCHEMA, run_id
from resnet_core.data import content_identity, named_source
from resnet_core.store import (
    FINAL_STATUSES, RunRecord, atomic_write_bytes, atomic_write_text, checkpoint_path, hold_lock, read_record, record_path,
    record_schema, runs_dir, write_record,
)

# What schema 1 left out of its hash (config.NON_IDENTITY_FIELDS as it was then: fixed here, since
# the current set may change).
SCHEMA1_SKIPPED = ("device", "data.cache_dir", "data.root", "data.download", "train.checkpoint")
MARKER = ".run_id_schema"  # beside runs/ (which holds records only): the schema its records were brought to
LOCK = MARKER + ".lock"  # held while a migration writes
SUPERSEDED_SUFFIX = ".schema1"
UNREADABLE_SUFFIX = ".unreadable"


def schema1_run_id(config: Mapping[str, Any]) -> str:
    """The schema-1 id of a config as stored in a record: sha256 of its JSON (sorted keys, no spaces)
    less the fields that schema left out, first 16 hex digits."""
    full = json.loads(json.dumps(dict(config)))
    for dotted in SCHEMA1_SKIPPED:
        section, _, name = dotted.rpartition(".")
        (full.get(section, {}) if section else full).pop(name, None)
    payload = json.dumps(full, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Migration:
    """What one call changed under ``results`` (with ``dry_run``: what it would change)."""

    results: str
    records: int = 0
    checkpoints: int = 0
    manifests: int = 0
    superseded: int = 0  # old records set aside beside the record that already had the new name
    unrecognised: tuple[str, ...] = ()  # old-looking records left as they were
    unreadable: tuple[str, ...] = ()  # old checkpoints that could not be read, set aside
    dry_run: bool = False
    done_ids: frozenset[str] = frozenset()  # a dry run's: new ids of the finished runs it would rename

    def message(self) -> str | None:
        """The one line the command lines print (None when nothing was there to migrate)."""
        counts = ((self.records, "run record"), (self.checkpoints, "checkpoint"), (self.manifests, "grid manifest"))
        parts = [_count(n, what) for n, what in counts if n]
        notes = self._notes()
        if not (parts or notes):
            return None
        verb = "a real run would migrate" if self.dry_run else "migrated"
        head = (f"{verb} {', '.join(parts)} in {self.results} to run-id schema {RUN_ID_SCHEMA}" if parts
                else f"run-id schema {RUN_ID_SCHEMA} in {self.results}")
        return "; ".join([head, *notes]) + (" (dry run: nothing written)" if self.dry_run else "")

    def _notes(self) -> list[str]:
        notes = []
        aside = "would set aside" if self.dry_run else "set aside"
        if self.superseded:
            notes.append(f"{aside} {_count(self.superseded, 'old-schema record')} whose migrated copy is there "
                         f"(the same run, counted once) as *.json{SUPERSEDED_SUFFIX}")
        if self.unreadable:
            notes.append(f"{aside} {_count(len(self.unreadable), 'unreadable old checkpoint')} as "
                         f"*.pt{UNREADABLE_SUFFIX} (its run trains from the start)")
        if self.unrecognised:
            names = ", ".join(Path(p).name for p in self.unrecognised[:3]) + (", ..." if len(self.unrecognised) > 3 else "")
            notes.append(f"left {_count(len(self.unrecognised), 'record')} whose id is not a schema-1 id: {names}")
        return notes


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class Plan:
    """What a migration of one folder would do, found by reading only."""

    records: tuple[tuple[Path, RunRecord], ...] = ()  # old record file, its migrated record
    duplicates: tuple[Path, ...] = ()  # old records whose migrated copy is there already
    checkpoints: tuple[tuple[Path, str], ...] = ()  # old checkpoint, its run's new id
    manifests: tuple[Path, ...] = ()  # grid manifests naming old ids
    mapping: Mapping[str, str] = field(default_factory=dict)  # old id -> new id
    unrecognised: tuple[str, ...] = ()
    mark: bool = False  # the marker is missing or names an older schema

    def empty(self) -> bool:
        return not (self.records or self.duplicates or self.checkpoints or self.manifests or self.mark)

    def outcome(self, results: str) -> Migration:
        """A dry run's answer: what applying this plan would change."""
        done = frozenset(r.run_id for _, r in self.records if r.status in FINAL_STATUSES)
        return Migration(results, len(self.records), len(self.checkpoints), len(self.manifests),
                         len(self.duplicates), self.unrecognised, dry_run=True, done_ids=done)


def migrate_run_ids(results_dir: str | os.PathLike, runs: Iterable[RunConfig] = (), dry_run: bool = False) -> Migration:
    """Bring ``results_dir`` to the current run-id schema (a no-op, writing nothing, when it is there).

    ``runs``: the runs the caller is about to train; they map checkpoints that have no record (a
    run killed before it wrote one) to their new ids. Consumed only when such a checkpoint exists.
    ``dry_run``: write nothing; the answer says what a real run would migrate.
    """
    results = Path(results_dir)
    listed = functools.cache(lambda: list(runs))  # planned twice, but a generator runs once
    plan = plan_migration(results, listed)
    if dry_run:
        return plan.outcome(str(results_dir))
    if plan.empty():
        return Migration(str(results_dir))
    with hold_lock(results / LOCK):
        # Another driver may have migrated the folder while this one waited: plan again, locked.
        return _apply(results, plan_migration(results, listed), str(results_dir))


def print_migration(results_dir: str | os.PathLike, runs: Iterable[RunConfig] = (), dry_run: bool = False) -> Migration:
    """:func:`migrate_run_ids`, with its one line on stderr when it changed (would change) something."""
    migration = migrate_run_ids(results_dir, runs, dry_run)
    if migration.message():
        print(migration.message(), file=sys.stderr, flush=True)
    return migration


def plan_migration(results: Path, runs: Callable[[], Iterable[RunConfig]] = tuple) -> Plan:
    """What :func:`migrate_run_ids` would do to ``results`` now (reads only)."""
    mapping: dict[str, str] = {}
    records, duplicates, unrecognised = _plan_records(results, mapping)
    checkpoints = _plan_checkpoints(results, mapping, runs)
    manifests = tuple(p for p in _manifest_paths(results) if _mapped_manifest(p, mapping) is not None)
    marker = results / MARKER
    mark = runs_dir(results).is_dir() and not (marker.is_file() and marker.read_text().strip() == str(RUN_ID_SCHEMA))
    # Records no schema-1 code named are reported by the pass that marks the folder, not on every run.
    return Plan(records, duplicates, checkpoints, manifests, mapping, unrecognised if mark else (), mark)


def current_run_ids(run_ids: Iterable[str], runs) -> list[str]:
    """``run_ids`` with every schema-1 id replaced by the id of the migrated record that names it as
    its ``previous_run_id`` (``runs``: ``store.load_runs``). Optuna trials keep the ids they were
    given, so a study's report maps them through this before it joins trials with records."""
    column = "provenance.previous_run_id"
    renamed = dict(zip(runs[column], runs["run_id"])) if column in getattr(runs, "columns", ()) else {}
    return [renamed.get(rid, rid) for rid in run_ids]


def with_previous_ids(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` (``store.load_runs``) plus, for every migrated record, a copy of its row under its
    schema-1 id: a study's trials keep the ids they were given, so its reports join on either."""
    column = "provenance.previous_run_id"
    if runs.empty or column not in runs.columns:
        return runs
    old = runs.loc[runs[column].notna() & (runs[column] != runs["run_id"])].copy()
    old["run_id"] = old[column]
    old = old.loc[~old["run_id"].isin(runs["run_id"])]  # an old record still counted: its row, not a second one
    return pd.concat([runs, old], ignore_index=True) if not old.empty else runs


def _plan_records(results: Path, mapping: dict[str, str]) -> tuple[tuple, tuple, tuple]:
    """Old records to rewrite, old records beside their migrated copy, and old-looking records left
    alone; ``mapping`` gains old -> new for every old record and every migrated one."""
    moves: list[tuple[Path, RunRecord]] = []
    duplicates: list[Path] = []
    unrecognised: list[str] = []
    targets: set[str] = set()
    for path in sorted(runs_dir(results).glob("*.json")):
        try:
            record = read_record(path)
        except (ValueError, OSError):
            continue  # unreadable: the scans of the store warn about it
        if path.stem != record.run_id:
            continue  # a copy under another name: never counted, nothing to migrate
        if record_schema(record) >= RUN_ID_SCHEMA:
            _map_previous(record, mapping)
            continue
        new = _new_id(record)
        if new is None:
            unrecognised.append(str(path))
            continue
        mapping[record.run_id] = new
        if new == record.run_id:
            continue
        if record_path(results, new).exists() or new in targets:
            duplicates.append(path)  # the same run (its content hashes to that id), migrated already
        else:
            moves.append((path, _migrated(record, new)))
            targets.add(new)
    return tuple(moves), tuple(duplicates), tuple(unrecognised)


def _map_previous(record: RunRecord, mapping: dict[str, str]) -> None:
    """A migrated record's old id maps to it: files an interrupted pass left under that id follow."""
    previous = record.provenance.get("previous_run_id")
    if isinstance(previous, str) and previous != record.run_id:
        mapping.setdefault(previous, record.run_id)


def _new_id(record: RunRecord) -> str | None:
    """The current id of a record schema 1 named, or None when schema 1 did not name it."""
    if schema1_run_id(record.config) != record.run_id:
        return None
    try:
        return record_run_id(record)
    except (ValueError, OSError, KeyError, TypeError):
        return None  # a config this code cannot read, or data no longer there to fingerprint


def _migrated(record: RunRecord, new: str) -> RunRecord:
    return RunRecord(**{**record.__dict__, "run_id": new, "provenance": {
        **record.provenance, "run_id_schema": RUN_ID_SCHEMA, "previous_run_id": record.run_id}})


def record_run_id(record: RunRecord) -> str:
    """The current id of a stored run: its config, and for a directory the data fingerprint it stored."""
    run = run_config_from_dict(record.config)
    fingerprint = record.provenance.get("data_fingerprint")
    known = not named_source(run.data.source) and isinstance(fingerprint, str) and fingerprint
    return run_id(run, content_identity(fingerprint) if known else None)


def _plan_checkpoints(results: Path, mapping: dict[str, str], runs: Callable[[], Iterable[RunConfig]]) -> tuple:
    """Old checkpoints and their new ids; ``mapping`` gains the caller's runs whose old id names a
    checkpoint that has no record (a run killed before it wrote one)."""
    folder = checkpoint_path(results, "x").parent
    found = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    orphans = {p.stem for p in found} - set(mapping) - set(mapping.values())
    if orphans:
        for run in runs():
            old = schema1_run_id(to_dict(run))
            if old in orphans and old not in mapping:
                mapping[old] = run_id(run)
    return tuple((p, mapping[p.stem]) for p in found if mapping.get(p.stem, p.stem) != p.stem)


def _apply(results: Path, plan: Plan, shown: str) -> Migration:
    """Do what ``plan`` says; the marker goes last, so a pass cut short is taken up by the next one."""
    for path, record in plan.records:
        write_record(results, record)
        path.unlink()
    for path in plan.duplicates:
        os.replace(path, path.with_name(path.name + SUPERSEDED_SUFFIX))
    moved, unreadable = _move_checkpoints(results, plan.checkpoints)
    for path in plan.manifests:
        atomic_write_text(path, json.dumps(_mapped_manifest(path, plan.mapping), indent=1))
    if plan.mark:
        atomic_write_text(results / MARKER, f"{RUN_ID_SCHEMA}\n")
    return Migration(shown, len(plan.records), moved, len(plan.manifests), len(plan.duplicates),
                     plan.unrecognised, unreadable)


def _move_checkpoints(results: Path, checkpoints: Iterable[tuple[Path, str]]) -> tuple[int, tuple[str, ...]]:
    """Rewrite each old checkpoint under its new id; returns how many, and the unreadable ones set aside."""
    moved, unreadable = 0, []
    for path, new in checkpoints:
        target = checkpoint_path(results, new)
        if target.exists():
            os.replace(path, path.with_name(path.name + SUPERSEDED_SUFFIX))
            continue
        state = _read_checkpoint(path)
        if state is None:
            os.replace(path, path.with_name(path.name + UNREADABLE_SUFFIX))
            unreadable.append(str(path))
            continue
        state["run_id"] = new  # engine.load_checkpoint refuses a checkpoint that names another run
        atomic_write_bytes(target, _saved(state))
        path.unlink()
        moved += 1
    return moved, tuple(unreadable)


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    """A checkpoint's state, or None when the file is not one (truncated, corrupt, another format)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # the disk, not the file: one line from the command line
    except Exception:  # noqa: BLE001 - unpickling fails in many ways; each means "not a checkpoint"
        return None
    return state if isinstance(state, dict) else None


def _saved(state: dict[str, Any]) -> memoryview:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer()


def _manifest_paths(results: Path) -> list[Path]:
    return sorted((results / "ablation").glob("*/grid.json"))


def _mapped_manifest(path: Path, mapping: Mapping[str, str]) -> dict[str, Any] | None:
    """A grid manifest with its old run ids mapped, or None if it names none (or is no manifest)."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        entries = values["runs"]
        hits = [e for e in entries if isinstance(e, dict) and e.get("run_id") in mapping]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not a manifest this code wrote: the grid report says so when it reads it
    for entry in hits:
        entry["run_id"] = mapping[entry["run_id"]]
    return values if hits else None
