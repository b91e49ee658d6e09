"""Carry a results folder's run ids from schema 1 to the current schema, once, and say so in one line.

Schema 1 (``config.run_id`` before RUN_ID_SCHEMA 2) hashed every config field and the data *path*;
schema 2 hashes the settings that differ from their defaults and the data's content. Finished runs
must not train again and unfinished ones must resume, so the files named by old ids are renamed:

- ``runs/<old>.json``: rewritten as ``runs/<new>.json`` (``run_id`` and the provenance's
  ``run_id_schema`` updated, ``previous_run_id`` kept, which Optuna trials still name);
- ``checkpoints/<old>.pt``: rewritten under the new id (a checkpoint names its run inside);
- ``ablation/<grid>/grid.json``: its run ids mapped, so a report rebuilt before the next run of the
  grid still finds its records.

A record that schema 1 did not name (its file name is not the schema-1 hash of its config) is left
as it is. When the new name is taken already, the old file is kept beside it as ``<old>.json.schema1``
(never counted, never lost). A directory's data identity comes from the fingerprint the record
stored, so a run keeps the identity of the data it trained on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import torch

from resnet_core.config import RunConfig, run_config_from_dict, to_dict
from resnet_core.identity import RUN_ID_SCHEMA, run_id
from resnet_core.data import content_identity, named_source
from resnet_core.store import (
    RunRecord, atomic_write_bytes, atomic_write_text, checkpoint_path, read_record, runs_dir, write_record,
)

# What schema 1 left out of its hash (config.NON_IDENTITY_FIELDS as it was then: fixed here, since
# the current set may change).
SCHEMA1_SKIPPED = ("device", "data.cache_dir", "data.root", "data.download", "train.checkpoint")
MARKER = ".run_id_schema"  # beside runs/ (which holds records only): the schema its records were brought to
SUPERSEDED_SUFFIX = ".schema1"


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
    """What one call changed under ``results``."""

    results: str
    records: int = 0
    checkpoints: int = 0
    manifests: int = 0
    superseded: int = 0  # old files kept beside a record that already had the new name
    unrecognised: tuple[str, ...] = ()  # old-looking records left as they were

    def message(self) -> str | None:
        """The one line the command lines print (None when nothing was there to migrate)."""
        if not (self.records or self.checkpoints or self.manifests or self.superseded or self.unrecognised):
            return None
        parts = [f"migrated {_count(self.records, 'run record')}",
                 f"{_count(self.checkpoints, 'checkpoint')}", f"{_count(self.manifests, 'grid manifest')}"]
        line = f"{', '.join(parts)} in {self.results} to run-id schema {RUN_ID_SCHEMA}"
        if self.superseded:
            line += f"; {self.superseded} older duplicate(s) kept as *.json{SUPERSEDED_SUFFIX}"
        if self.unrecognised:
            names = ", ".join(Path(p).name for p in self.unrecognised[:3]) + (", ..." if len(self.unrecognised) > 3 else "")
            line += f"; left {_count(len(self.unrecognised), 'record')} whose id is not a schema-1 id: {names}"
        return line


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def migrate_run_ids(results_dir: str | os.PathLike, runs: Iterable[RunConfig] = ()) -> Migration:
    """Bring ``results_dir`` to the current run-id schema (a no-op when it is there already).

    ``runs``: the runs the caller is about to train; they map checkpoints that have no record (a
    run killed before it wrote one) to their new ids. Consumed only when such a checkpoint exists.
    """
    results = Path(results_dir)
    marker = results / MARKER
    done = marker.is_file() and marker.read_text().strip() == str(RUN_ID_SCHEMA)
    mapping: dict[str, str] = {}
    records = superseded = 0
    unrecognised: list[str] = []
    if not done and runs_dir(results).is_dir():
        for path in sorted(runs_dir(results).glob("*.json")):
            outcome = _migrate_record(path, results, mapping)
            records += outcome == "migrated"
            superseded += outcome == "superseded"
            if outcome == "unrecognised":
                unrecognised.append(str(path))
        atomic_write_text(marker, f"{RUN_ID_SCHEMA}\n")
    checkpoints = _migrate_checkpoints(results, mapping, runs)
    manifests = _migrate_manifests(results, mapping) if mapping else 0
    return Migration(str(results_dir), records, checkpoints, manifests, superseded, tuple(unrecognised))


def print_migration(results_dir: str | os.PathLike, runs: Iterable[RunConfig] = ()) -> Migration:
    """:func:`migrate_run_ids`, with its one line on stderr when it changed something."""
    migration = migrate_run_ids(results_dir, runs)
    if migration.message():
        print(migration.message(), file=sys.stderr, flush=True)
    return migration


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
    return pd.concat([runs, old], ignore_index=True) if not old.empty else runs


def _migrate_record(path: Path, results: Path, mapping: dict[str, str]) -> str:
    """Rewrite one schema-1 record under its new id; returns what happened to it."""
    try:
        record = read_record(path)
    except (ValueError, OSError):
        return "skipped"  # unreadable: the scans of the store warn about it
    if int(record.provenance.get("run_id_schema") or 1) >= RUN_ID_SCHEMA or path.stem != record.run_id:
        return "current"
    if schema1_run_id(record.config) != record.run_id:
        return "unrecognised"
    try:
        new = record_run_id(record)
    except (ValueError, OSError, KeyError, TypeError):
        return "unrecognised"  # a config this code cannot read, or data no longer there to fingerprint
    mapping[record.run_id] = new
    if new == record.run_id:
        return "current"
    migrated = RunRecord(**{**record.__dict__, "run_id": new, "provenance": {
        **record.provenance, "run_id_schema": RUN_ID_SCHEMA, "previous_run_id": record.run_id}})
    target = runs_dir(results) / f"{new}.json"
    if target.exists():
        os.replace(path, path.with_name(path.name + SUPERSEDED_SUFFIX))
        return "superseded"
    write_record(results, migrated)
    path.unlink()
    return "migrated"


def record_run_id(record: RunRecord) -> str:
    """The current id of a stored run: its config, and for a directory the data fingerprint it stored."""
    run = run_config_from_dict(record.config)
    fingerprint = record.provenance.get("data_fingerprint")
    known = not named_source(run.data.source) and isinstance(fingerprint, str) and fingerprint
    return run_id(run, content_identity(fingerprint) if known else None)


def _migrate_checkpoints(results: Path, mapping: dict[str, str], runs: Iterable[RunConfig]) -> int:
    folder = checkpoint_path(results, "x").parent
    found = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    orphans = [p for p in found if p.stem not in mapping and p.stem not in mapping.values()]
    if orphans:  # checkpoints without a record: map them through the caller's runs
        for run in runs:
            old = schema1_run_id(to_dict(run))
            if old not in mapping and any(p.stem == old for p in orphans):
                mapping[old] = run_id(run)
    moved = 0
    for path in found:
        new = mapping.get(path.stem)
        if new is None or new == path.stem:
            continue
        target = checkpoint_path(results, new)
        if target.exists():
            os.replace(path, path.with_name(path.name + SUPERSEDED_SUFFIX))
            continue
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["run_id"] = new  # engine.load_checkpoint refuses a checkpoint that names another run
        atomic_write_bytes(target, _saved(state))
        path.unlink()
        moved += 1
    return moved


def _saved(state: dict[str, Any]) -> memoryview:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer()


def _migrate_manifests(results: Path, mapping: Mapping[str, str]) -> int:
    changed = 0
    for path in sorted((results / "ablation").glob("*/grid.json")):
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
            entries = values["runs"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a manifest this code wrote: the grid report says so when it reads it
        hits = [e for e in entries if isinstance(e, dict) and e.get("run_id") in mapping]
        if not hits:
            continue
        for entry in hits:
            entry["run_id"] = mapping[entry["run_id"]]
        atomic_write_text(path, json.dumps(values, indent=1))
        changed += 1
    return changed
