"""The result store: one JSON record per run, written atomically, read back as pandas tables.

Reports read only these records (DESIGN.md), so any table or figure can be rebuilt without
training. Layout under a results directory::

    runs/<run_id>.json          one record per run (completed, diverged, failed or stopped)
    checkpoints/<run_id>.pt     the last epoch's training state while a run is unfinished
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

STATUSES = ("completed", "diverged", "failed", "stopped")
FINAL_STATUSES = ("completed", "diverged")  # re-asking for these returns the record, no training
RECORD_FORMAT = "resnet_core.run/1"


@dataclass
class RunRecord:
    """Everything known about one run. Errors are in percent; losses are mean cross-entropy."""

    run_id: str
    status: str
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0
    params: int = 0
    macs: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    stop_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunRecord":
        if values.get("format") != RECORD_FORMAT:
            raise ValueError(f"not a run record (format={values.get('format')!r}, expected {RECORD_FORMAT!r})")
        shapes = {"run_id": str, "status": str, "config": dict, "history": list, "final": dict, "provenance": dict}
        for name, kind in shapes.items():
            if not isinstance(values.get(name, kind()), kind):
                raise ValueError(f"field {name!r} is not a {kind.__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def _json_safe(value: Any) -> Any:
    """NaN and inf are not JSON: store them as null (reports read null back as NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write via a temp file in the same folder, fsync, then rename: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def runs_dir(results_dir: str | os.PathLike) -> Path:
    return Path(results_dir) / "runs"


def record_path(results_dir: str | os.PathLike, run_id: str) -> Path:
    return runs_dir(results_dir) / f"{run_id}.json"


def checkpoint_path(results_dir: str | os.PathLike, run_id: str) -> Path:
    return Path(results_dir) / "checkpoints" / f"{run_id}.pt"


def write_record(results_dir: str | os.PathLike, record: RunRecord) -> Path:
    path = record_path(results_dir, record.run_id)
    atomic_write_text(path, json.dumps(_json_safe(record.to_dict()), indent=1, sort_keys=True, allow_nan=False))
    return path


def read_record(path: str | os.PathLike) -> RunRecord:
    """One record; ValueError if the file is not valid JSON or not a run record."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: not a run record")
    try:
        return RunRecord.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def find_record(results_dir: str | os.PathLike, run_id: str) -> RunRecord | None:
    """The stored record of ``run_id``, or None if absent or unreadable (a warning says which)."""
    path = record_path(results_dir, run_id)
    if not path.exists():
        return None
    try:
        return read_record(path)
    except ValueError as exc:
        warnings.warn(f"ignoring unreadable run record: {exc}", stacklevel=2)
        return None


def iter_records(results_dir: str | os.PathLike) -> tuple[list[RunRecord], list[str]]:
    """All readable records under ``results_dir/runs`` and the paths that were skipped."""
    records, skipped = [], []
    for path in sorted(runs_dir(results_dir).glob("*.json")):
        try:
            records.append(read_record(path))
        except (ValueError, OSError) as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
            skipped.append(str(path))
    return records, skipped


def _flatten(prefix: str, values: dict[str, Any], out: dict[str, Any]) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(f"{name}.", value, out)
        elif isinstance(value, list):
            out[name] = tuple(value)  # hashable, so tables can group by widths/milestones
        else:
            out[name] = value


def record_row(record: RunRecord) -> dict[str, Any]:
    """One flat row: config fields as ``model.depth``, finals as ``final.test_error``, ..."""
    row: dict[str, Any] = {"run_id": record.run_id, "status": record.status}
    _flatten("", record.config, row)
    _flatten("final.", record.final, row)
    _flatten("provenance.", record.provenance, row)
    row.update(
        params=record.params,
        macs=record.macs,
        wall_seconds=record.wall_seconds,
        epochs_done=len(record.history),
        error=record.error,
        stop_reason=record.stop_reason,
    )
    return row


def load_runs(results_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per run record; unreadable files are skipped, listed in ``df.attrs["skipped"]``."""
    records, skipped = iter_records(results_dir)
    frame = pd.DataFrame([record_row(r) for r in records])
    frame.attrs["skipped"] = skipped
    return frame


def load_histories(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Tidy per-epoch table of every run: ``run_id, epoch, iteration, train_error, ...``."""
    records, skipped = iter_records(results_dir)
    rows = []
    for record in records:
        for epoch in record.history:
            row: dict[str, Any] = {"run_id": record.run_id}
            _flatten("", epoch, row)
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["skipped"] = skipped
    return frame
