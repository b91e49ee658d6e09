"""Where a study lives: a journal file (one machine) or an Optuna RDB URL (several hosts, with
heartbeats); opened and checked before any training, every error one line with the password masked."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.exc import IntegrityError, ProgrammingError

from resnet_core.store import check_name, check_writable
from resnet_core.study.common import experimental_ok
from resnet_core.study.journal import InterruptSafeJournal, RepairingJournalFile
from resnet_core.study.recovery import RetryStaleTrial, heartbeat_settings
from resnet_core.study.urls import mask_url, scrub, unencoded_at


def is_rdb_url(storage: str) -> bool:
    return "://" in storage


def default_storage(results: str | os.PathLike, name: str) -> str:
    """The embedded store: one journal file per study (group) under ``<results>/studies/``."""
    return str(Path(results) / "studies" / f"{check_name(name, 'study name')}.log")


def describe_storage(storage: str) -> str:
    return mask_url(storage) + ("" if is_rdb_url(storage) else " (journal file)")


def open_storage(storage: str, stale_after: float = 600.0) -> optuna.storages.BaseStorage:
    """A journal file (safe with several processes on one machine, no "database is locked") or
    any Optuna RDB URL with heartbeats, so a dead worker's trial is failed and retried.

    A storage that cannot be opened (server down, wrong password, no driver, malformed URL) is a
    one-line ValueError naming the URL with its password masked.
    """
    if is_rdb_url(storage) and unencoded_at(storage):
        raise ValueError(f"storage {mask_url(storage)}: the password holds an unencoded '@': "
                         "write it URL-encoded as %40")
    return _open_rdb(storage, stale_after) if is_rdb_url(storage) else _open_journal(storage)


def _open_rdb(url: str, stale_after: float, attempts: int = 4) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage with heartbeats; retried when another host creates the tables at the
    same moment (hosts started together on an empty database race in Optuna's schema set-up:
    "duplicate key value violates unique constraint", "relation already exists")."""
    interval, grace = heartbeat_settings(stale_after)
    for attempt in range(attempts):
        try:
            with experimental_ok():
                return optuna.storages.RDBStorage(
                    driver_url(url), engine_kwargs=_engine_kwargs(url), heartbeat_interval=interval,
                    grace_period=grace, heartbeat_stale_trial_callback=RetryStaleTrial(grace),
                )
        except (IntegrityError, ProgrammingError) as exc:
            if attempt == attempts - 1:
                raise storage_error(url, exc) from None
            time.sleep(0.5 * (attempt + 1))
        except Exception as exc:  # noqa: BLE001 - driver, network and SQL errors alike: one masked line
            raise storage_error(url, exc) from None
    raise AssertionError("unreachable")


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # SQLite is for one machine and few workers (Optuna's FAQ): a long lock timeout avoids
        # "database is locked".
        return {"connect_args": {"timeout": 30}}
    # A server: check pooled connections before use (trials last hours; firewalls drop idle ones).
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith(("postgresql", "postgres")):
        kwargs["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails, not hangs
    return kwargs


def driver_url(url: str) -> str:
    """``url`` with an installed PostgreSQL driver: SQLAlchemy 2.1 maps a bare ``postgresql://``
    to psycopg 3, while psycopg2 is what many machines have; ``postgres://`` is accepted too."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    for module in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{module}://{rest}"
    raise ValueError(f"storage {mask_url(url)}: no PostgreSQL driver is installed "
                     "(pip install psycopg2-binary, or pip install -e '.[scale]')")


def storage_error(url: str, exc: BaseException) -> ValueError:
    """One line naming the storage and the driver's first line, the password masked in both."""
    if isinstance(exc, ValueError) and str(exc).startswith(f"storage {mask_url(url)}"):
        return exc
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's own error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    detail = lines[0] if lines else type(cause).__name__
    return ValueError(scrub(f"storage {mask_url(url)} cannot be opened: {detail}", url))


def _open_journal(path: str) -> optuna.storages.JournalStorage:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(InterruptSafeJournal(RepairingJournalFile(str(path))))
    except OSError as exc:
        raise ValueError(f"storage {path} cannot be opened: {exc.strerror or exc}") from None


def check_storage(storage: str, stale_after: float) -> None:
    """Fail before any data or training when the storage cannot be used: an RDB server is
    connected to (reachable, credentials right); a journal file's folder must take files."""
    if is_rdb_url(storage):
        open_storage(storage, stale_after)
    elif Path(storage).is_dir():
        raise ValueError(f"storage {storage} is a directory: give a journal file path such as {storage}/study.log")
    else:
        check_writable(Path(storage).parent, "the storage's folder")
