"""The result store: one JSON record per run, written atomically, read back as pandas tables.

Reports read only these records (docs/DESIGN.md), so any table or figure can be rebuilt without
training. Layout under a results directory::

    runs/<run_id>.json          one record per run (completed, diverged, failed or stopped)
    checkpoints/<run_id>.pt     the last epoch's training state while a run is unfinished
    claims/<run_id>.lock        held (flock) by the process training the run, removed when it ends

A record counts only under its own name: a file whose content names another run (a copy such as
``ID (copy).json``, a renamed file) is never counted, so no run is counted twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import socket
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

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
        schema = values.get("provenance", {}).get("run_id_schema")  # migrate.py compares it: None is schema 1
        if schema is not None and (isinstance(schema, bool) or not isinstance(schema, int) or schema < 1):
            raise ValueError(f"field 'provenance.run_id_schema' is {schema!r}, not a run-id schema (an integer >= 1)")
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


def _process_umask() -> int:
    """The process umask at import, read without changing it where Linux shows it
    (/proc/self/status, kernel 4.7+); elsewhere set and restored once, here at import, because
    POSIX has no call that only reads it (a flip per write would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


# New files get the mode a plain open() would give them (0o666 less the umask), read once.
UMASK = _process_umask()


def atomic_write_bytes(path: Path, payload: bytes | memoryview) -> None:
    """Write via a temp file in the same folder, fsync, then rename: a kill never leaves half a file.

    An OSError (read-only folder, full disk) names ``path``, not the temp file the user never sees.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(folder: str | Path, what: str = "results directory") -> Path:
    """Create ``folder`` and write a probe file there: an unwritable place is one line now, not a
    crash after the first run has trained. Returns the absolute folder."""
    target = Path(folder)
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".probe.", suffix=".tmp"):
            pass
    except FileExistsError:  # a regular file holds the folder's name
        reason, where = "Not a directory", target
    except OSError as exc:
        reason, where = exc.strerror or type(exc).__name__, exc.filename or target
    else:
        return target.resolve()
    raise ValueError(f"{what} {str(folder)!r} is not writable: {reason} ({where})")


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
    """The stored record of ``run_id``, or None if absent or unreadable (a warning says which).

    A file holding another run's record (a copy renamed over it) is not this run's record: None,
    so the run is trained (and the file replaced) instead of being answered with the other run.
    """
    path = record_path(results_dir, run_id)
    if not path.exists():
        return None
    try:
        record = read_record(path)
    except ValueError as exc:
        warnings.warn(f"ignoring unreadable run record: {exc}", stacklevel=2)
        return None
    return record if record.run_id == run_id else None


@dataclass(frozen=True)
class RecordScan:
    """What ``runs/`` holds: the records that count, unreadable files, and misnamed records."""

    records: tuple[RunRecord, ...]
    skipped: tuple[str, ...]  # not JSON or not a run record
    misnamed: tuple[str, ...]  # a readable record under a name other than <its run_id>.json: never counted
    # A record of an older run-id schema beside the copy a migration made of it (a restored backup,
    # a merged folder): the same run, counted once, under its current id. resnet_core/migrate.py
    # moves these aside when a command line starts.
    superseded: tuple[str, ...] = ()


def _migrated_copy_of(old: RunRecord, new: RunRecord) -> bool:
    """Whether ``new`` is the migrated copy of ``old``: it names ``old`` as its previous id and holds
    the same settings (every config field ``old`` has, the same; later code may add fields)."""
    return (new.run_id != old.run_id and new.provenance.get("previous_run_id") == old.run_id
            and record_schema(old) < record_schema(new) and _covers(new.config, old.config))


def record_schema(record: RunRecord) -> int:
    """The run-id schema a record was named by: 1 when it does not say (schema 1 did not store it)
    or says it in a form no schema used (the record is then left to the migration to report)."""
    value = record.provenance.get("run_id_schema")
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _covers(new: Any, old: Any) -> bool:
    if isinstance(old, dict) and isinstance(new, dict):
        return all(key in new and _covers(new[key], value) for key, value in old.items())
    return new == old


def _without_migrated_originals(records: list[RunRecord]) -> tuple[list[RunRecord], list[RunRecord]]:
    """``records`` split into those that count and old-schema originals whose migrated copy is there."""
    copies = {r.provenance.get("previous_run_id"): r for r in records if r.provenance.get("previous_run_id")}
    originals = [r for r in records if r.run_id in copies and _migrated_copy_of(r, copies[r.run_id])]
    dropped = {r.run_id for r in originals}
    return [r for r in records if r.run_id not in dropped], originals


def scan_records(results_dir: str | os.PathLike) -> RecordScan:
    """Every file in ``results_dir/runs``, keyed by the run_id its content names."""
    records, skipped, misnamed = [], [], []
    for path in sorted(runs_dir(results_dir).glob("*.json")):
        try:
            record = read_record(path)
        except (ValueError, OSError) as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
            skipped.append(str(path))
            continue
        # Only <run_id>.json is the run's record (what fit reads and replaces): a copy or a renamed
        # file would count a run twice or stand in for a run that never trained.
        if path.stem == record.run_id:
            records.append(record)
        else:
            misnamed.append(str(path))
    counted, originals = _without_migrated_originals(records)
    superseded = tuple(str(record_path(results_dir, r.run_id)) for r in originals)
    return RecordScan(tuple(counted), tuple(skipped), tuple(misnamed), superseded)


def iter_records(results_dir: str | os.PathLike) -> tuple[list[RunRecord], list[str]]:
    """All records that count under ``results_dir/runs`` and the unreadable paths that were skipped."""
    scan = scan_records(results_dir)
    return list(scan.records), list(scan.skipped)


def misnamed_warning(misnamed: Sequence[str], results_dir: str | os.PathLike) -> str | None:
    """The one line the command lines print about misnamed record files (None when there are none)."""
    if not misnamed:
        return None
    names = ", ".join(Path(p).name for p in misnamed[:5]) + (", ..." if len(misnamed) > 5 else "")
    count = f"{len(misnamed)} record file" + ("" if len(misnamed) == 1 else "s")
    return (f"warning: ignored {count} in {runs_dir(results_dir)} not named <run_id>.json "
            f"(a copy or a renamed record; never counted): {names}")


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
    """One row per run record; unreadable files are skipped, listed in ``df.attrs["skipped"]``;
    misnamed records (copies) are left out, listed in ``df.attrs["misnamed"]``, and so are records
    of an older run-id schema beside their migrated copies (``df.attrs["superseded"]``)."""
    scan = scan_records(results_dir)
    frame = pd.DataFrame([record_row(r) for r in scan.records])
    frame.attrs["skipped"] = list(scan.skipped)
    frame.attrs["misnamed"] = list(scan.misnamed)
    frame.attrs["superseded"] = list(scan.superseded)
    return frame


def load_histories(results_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per epoch of every run: ``run_id, epoch, iteration, lr, train_loss, train_error, val_error,
    test_error, ...`` (what the run measured that epoch); join it to :func:`load_runs` on ``run_id``
    (docs/notebook.md). Unreadable files are skipped, listed in ``df.attrs["skipped"]``."""
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


# ------------------------------------------------------------------------------------ names

# A file name holds 255 bytes, and Optuna's journal lock adds 52 to a study's name while it renames
# its lock (<name>.log.lock<uuid4>.rename): a longer name fails after the journal was created.
MAX_NAME_BYTES = 200


def check_name(name: str, what: str) -> str:
    """``name`` if it is one safe path component: study and grid names become files and folders
    under the results directory, and must not reach outside it (``..``, ``/``, an absolute path),
    hold a character that breaks a line or a listing (a newline, a tab), or outgrow a file name."""
    if not _safe_name(name):
        raise ValueError(f"{what} {name!r} is invalid: expected a single name (no '/', '\\' or '..') of printable "
                         f"characters, at most {MAX_NAME_BYTES} bytes in UTF-8, used as a file name under the "
                         "results folder")
    return name


def _safe_name(name: str) -> bool:
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or os.path.isabs(name):
        return False
    return all(c.isprintable() and c not in "/\\" for c in name) and len(os.fsencode(name)) <= MAX_NAME_BYTES


# ----------------------------------------------------------------------------------- claims

def claim_path(results_dir: str | os.PathLike, run_id: str) -> Path:
    return Path(results_dir) / "claims" / f"{run_id}.lock"


def _lock_claim(path: Path, wait: bool = False) -> int | None:
    """An open descriptor holding ``path``'s exclusive flock, or None if a live process holds it
    (with ``wait``: blocks until the holder lets go instead).

    flock, not a pid test: the kernel releases it when its holder exits or dies (SIGKILL too), so a
    dead driver's claim is free at once, and two processes can never both take it over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)  # its holder released it (unlinked the file) between our open and lock: again


def claim_holder(results_dir: str | os.PathLike, run_id: str) -> str:
    """``host pid`` of the process that claimed ``run_id`` (for messages; '?' if unknown)."""
    try:
        return claim_path(results_dir, run_id).read_text().strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def claim_run(results_dir: str | os.PathLike, run_id: str) -> Iterator[bool]:
    """Hold ``run_id``'s claim while the block runs: True if this process got it, False if another
    live process (a second driver on the same results folder) is training the run now.

    Claim before training, so concurrent drivers share a grid's runs and each run trains once.
    """
    path = claim_path(results_dir, run_id)
    fd = _lock_claim(path)
    if fd is None:
        yield False
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        yield True
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiter then finds a new file, never ours
        os.close(fd)


@contextlib.contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """Hold ``path``'s exclusive flock while the block runs, waiting while another process holds it:
    for work on a results folder that two drivers must not do at once (a run-id migration)."""
    fd = _lock_claim(path, wait=True)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked, as claim_run does
        os.close(fd)
