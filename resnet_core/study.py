"""Optuna studies over the harness: search spaces from TOML, the objective, storage, parallel
workers, recovery of trials whose worker died, and fair comparisons of one architectural choice.

The objective is the VALIDATION error (%) of the final epoch (DESIGN.md: the test set never
chooses). Each trial is one :func:`resnet_core.engine.fit` call whose run record is linked from the
trial (user attr ``run_id``); pruning lives in fit's per-epoch callback. Workers are processes
sharing one storage (not ``n_jobs`` threads: samplers re-seed threads and GPUs want a process each).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import json
import math
import multiprocessing
import os
import signal
import socket
import tempfile
import time
import tomllib
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from resnet_core.budgets import STUDY_BUDGETS, Budget, lookup
from resnet_core.config import (
    SECTIONS, DataConfig, RunConfig, apply_overrides, canonical_settings, identity_dict, recipe, resolve_field, run_id,
)
from resnet_core.devices import resolve_device
from resnet_core.store import check_name, checkpoint_path
from resnet_core.study_reports import FINISHED, mask_url, scrub, unencoded_at

SPACES_DIR = Path(__file__).resolve().parent / "spaces"  # built-in spaces ship inside the package
FINAL_SEED_BASE = 1000  # re-training seeds of a --compare study: 1000, 1001, ... (never a trial's seed)
MAX_RETRIES = 3  # a trial whose worker died is re-queued at most this often (a config that kills workers)
MAX_CONSECUTIVE_FAILURES = 10  # a worker stops when every trial fails (a broken setup, not a bad config)


class TrialFailed(RuntimeError):
    """A trial whose run failed or diverged: recorded as FAIL with ``fail_reason``; the study goes on."""


# ===================================================================================== spaces

@dataclass(frozen=True)
class Param:
    """One Optuna distribution over one config field (``name`` as written: bare or dotted)."""

    name: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    @property
    def dotted(self) -> str:
        return resolve_field(self.name)

    def suggest(self, trial: optuna.Trial) -> Any:
        return SUGGESTERS[self.kind](trial, self)

    def probe_values(self) -> tuple:
        """Values that must each be acceptable to the config: the ends of a range, or every choice."""
        return self.choices if self.kind == "categorical" else (self.low, self.high)

    def values(self) -> tuple:
        """Every value of a categorical or stepped int parameter (for ``--compare``)."""
        if self.kind == "categorical":
            return self.choices
        if self.kind == "int" and not self.log:
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise ValueError(f"--compare {self.name}: a {self.kind} range has no list of values; give --compare-values")

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name} in {list(self.choices)}"
        extra = " log" if self.log else (f" step {self.step}" if self.step is not None else "")
        return f"{self.name} {self.kind} [{self.low}, {self.high}]{extra}"

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices)}
        out = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        return out | ({"step": self.step} if self.step is not None else {})


def _suggest_float(trial: optuna.Trial, p: Param) -> float:
    return trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)


def _suggest_int(trial: optuna.Trial, p: Param) -> int:
    return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))


def _suggest_categorical(trial: optuna.Trial, p: Param) -> Any:
    return trial.suggest_categorical(p.name, list(p.choices))


SUGGESTERS: dict[str, Callable[[optuna.Trial, Param], Any]] = {
    "float": _suggest_float, "int": _suggest_int, "categorical": _suggest_categorical,
}
RANGE_KEYS = {"low", "high", "log", "step"}
PARAM_KEYS = {"float": RANGE_KEYS, "int": RANGE_KEYS, "categorical": {"choices"}}
# Fields a study must not tune: they would change the question, not the answer.
NOT_TUNABLE = {
    "seed": "every trial uses the study's --seed, so trials differ only in hyperparameters",
    "device": "the device is chosen per worker",
    "train.epochs": "the budget is set by --budget/--epochs",
    "train.iterations": "the budget is set by --budget/--epochs",
}


@dataclass(frozen=True)
class SearchSpace:
    """A named set of :class:`Param` plus fixed config overrides applied to every trial."""

    name: str
    source: str
    description: str = ""
    params: tuple[Param, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def param(self, name: str) -> Param | None:
        """The parameter over config field ``name`` (bare or dotted), or None."""
        dotted = resolve_field(name)
        return next((p for p in self.params if p.dotted == dotted), None)

    def without(self, name: str) -> "SearchSpace":
        dotted = resolve_field(name)
        return dataclasses.replace(self, params=tuple(p for p in self.params if p.dotted != dotted))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": {p.name: p.to_dict() for p in self.params},
                "fixed": {k: list(v) if isinstance(v, tuple) else v for k, v in self.fixed}}

    def describe(self) -> str:
        fixed = f"; fixed {dict(self.fixed)}" if self.fixed else ""
        return f"{self.name} ({len(self.params)} params: " + "; ".join(p.describe() for p in self.params) + ")" + fixed


def _space_error(where: str, message: str) -> ValueError:
    return ValueError(f"space {where}: {message}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_range(name: str, spec: Mapping[str, Any], where: str, kind: str) -> Param:
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    if not (_is_number(low) and _is_number(high)):
        raise _space_error(where, f"params.{name}: {kind} needs numeric low and high (got low={low!r}, high={high!r})")
    if not (math.isfinite(low) and math.isfinite(high)):  # TOML has inf and nan; Optuna fails on them mid-study
        raise _space_error(where, f"params.{name}: low={low} and high={high} must be finite numbers")
    if kind == "int" and not all(isinstance(v, int) for v in (low, high) + ((step,) if step is not None else ())):
        raise _space_error(where, f"params.{name}: int needs integer low, high and step")
    if low >= high:
        raise _space_error(where, f"params.{name}: low={low} must be < high={high}")
    if not isinstance(log, bool):
        raise _space_error(where, f"params.{name}: log={log!r} must be true or false")
    if log and low <= 0:
        raise _space_error(where, f"params.{name}: log=true needs low > 0 (got low={low})")
    if step is not None and (not _is_number(step) or not math.isfinite(step) or step <= 0 or (log and step != 1)):
        raise _space_error(where, f"params.{name}: step={step!r} must be a number > 0 (and not combined with log)")
    cast = float if kind == "float" else int
    return Param(name, kind, cast(low), cast(high), log, cast(step) if step is not None else None)


def _parse_choices(name: str, spec: Mapping[str, Any], where: str, kind: str) -> Param:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _space_error(where, f"params.{name}: categorical needs a non-empty list of choices (got {choices!r})")
    if any(not isinstance(c, (bool, int, float, str)) for c in choices) or len(set(map(repr, choices))) != len(choices):
        raise _space_error(where, f"params.{name}: choices must be distinct numbers, strings or booleans ({choices!r})")
    return Param(name, kind, choices=tuple(choices))


PARSERS = {"float": _parse_range, "int": _parse_range, "categorical": _parse_choices}


def parse_param(name: str, spec: Any, where: str) -> Param:
    """One ``[params.NAME]`` table; unknown types and keys are one-line errors."""
    if not isinstance(spec, Mapping):
        raise _space_error(where, f'params.{name} must be a table such as {{ type = "float", low = 0.01, high = 0.5 }}')
    kind = spec.get("type")
    if kind not in PARSERS:
        raise _space_error(where, f"params.{name}: unknown distribution type {kind!r}: "
                                  "expected float, int or categorical")
    unknown = sorted(set(spec) - PARAM_KEYS[kind] - {"type"})
    if unknown:
        raise _space_error(where, f"params.{name}: unknown key(s) {unknown} for type {kind}: "
                                  f"expected {sorted(PARAM_KEYS[kind])}")
    return PARSERS[kind](name, spec, where, kind)


def space_path(spec: str, spaces_dir: Path = SPACES_DIR) -> Path:
    """A path to a TOML file, or the name of a file in ``resnet_core/spaces`` (listed when unknown)."""
    path = Path(spec)
    if path.suffix == ".toml" or path.exists() or os.sep in spec:
        if not path.is_file():
            raise FileNotFoundError(f"space file {spec} does not exist")
        return path
    named = spaces_dir / f"{spec}.toml"
    if not named.is_file():
        known = sorted(p.stem for p in spaces_dir.glob("*.toml"))
        raise ValueError(f"unknown space {spec!r}: expected one of {', '.join(known) or '(none)'} "
                         "or a path to a .toml file")
    return named


def read_space(spec: str, spaces_dir: Path = SPACES_DIR) -> SearchSpace:
    """Parse a space file (no check against a config yet: see :func:`validate_space`)."""
    path = space_path(spec, spaces_dir)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise _space_error(str(path), f"invalid TOML ({exc})") from None
    unknown = sorted(set(document) - {"description", "params", "fixed"})
    if unknown:
        raise _space_error(str(path), f"unknown top-level key(s) {unknown}: expected description, params, fixed")
    params = document.get("params", {})
    if not isinstance(params, Mapping) or not params:
        raise _space_error(str(path), "no [params.NAME] tables: nothing to search")
    fixed = document.get("fixed", {})
    if not isinstance(fixed, Mapping):
        raise _space_error(str(path), "[fixed] must be a table of field = value")
    fixed = canonical_settings(fixed, f"space {path}: [fixed]")  # train.lr = 0.05 is a nested table in TOML
    return SearchSpace(
        name=path.stem, source=str(path), description=str(document.get("description", "")),
        params=tuple(parse_param(name, spec, str(path)) for name, spec in params.items()),
        fixed=tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in fixed.items()),
    )


def _field_type(dotted: str) -> Any:
    section, name = dotted.split(".", 1) if "." in dotted else (None, dotted)
    cls = SECTIONS[section] if section else RunConfig
    return typing.get_type_hints(cls)[name]


def _check_param(param: Param, base: RunConfig, where: str) -> None:
    """Known, tunable field; a distribution that fits its type; every probe value accepted."""
    try:
        dotted = param.dotted
    except ValueError as exc:
        raise _space_error(where, f"params.{param.name}: {exc}") from None
    reason = NOT_TUNABLE.get(dotted) or ("the data and the validation split are fixed for a study"
                                          if dotted.startswith("data.") else None)
    if reason:
        raise _space_error(where, f"params.{param.name} cannot be searched: {reason}")
    types = set(typing.get_args(_field_type(dotted))) or {_field_type(dotted)}
    if param.kind == "float" and int in types and float not in types:
        raise _space_error(where, f'params.{param.name} is an integer field: use type = "int" or "categorical"')
    for value in param.probe_values():
        try:
            apply_overrides(base, {param.name: value})
        except ValueError as exc:
            raise _space_error(where, f"params.{param.name}: {exc}") from None


def validate_space(space: SearchSpace, base: RunConfig) -> RunConfig:
    """Check ``space`` against ``base`` before any trial; returns ``base`` with the fixed fields set."""
    try:
        fixed_base = apply_overrides(base, dict(space.fixed))
    except ValueError as exc:
        raise _space_error(space.source, f"[fixed]: {exc}") from None
    seen: dict[str, str] = {}
    for param in space.params:
        _check_param(param, fixed_base, space.source)
        if param.dotted in seen:
            raise _space_error(space.source, f"params.{param.name} and params.{seen[param.dotted]} "
                                             f"set the same field {param.dotted}")
        seen[param.dotted] = param.name
    return fixed_base


# ==================================================================================== budgets

def budget(name: str) -> Budget:
    """A study budget by name (resnet_core/budgets.py: one Budget class for grids and studies)."""
    return lookup(name, STUDY_BUDGETS)


def base_run(model: str, plan: Budget, *, epochs: int | None = None, data: str | None = None,
             subset: int | None = None, val_size: int | None = None, seed: int = 0,
             overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The config every trial starts from: preset, budget's recipe and length, data, study seed."""
    from resnet_core.models import resolve_model

    run = RunConfig(model=resolve_model(model), train=recipe(plan.recipe), data=DataConfig(), seed=seed)
    changes: dict[str, Any] = {"epochs": epochs} if epochs is not None else (
        {"epochs": plan.epochs} if plan.epochs else {"iterations": plan.iterations})
    if data:
        changes["source"] = data
    if subset is not None or plan.subset is not None:
        changes["subset"] = subset if subset is not None else plan.subset
    if val_size is not None:
        changes["val_size"] = val_size
    run = apply_overrides(apply_overrides(run, changes), dict(overrides or {}))
    if run.data.val_size == 0:
        raise ValueError("val_size=0 is invalid for a study: the objective is the validation error "
                         "(use --val-size > 0)")
    return run


# ================================================================================ study spec

@dataclass(frozen=True)
class StudySpec:
    """Everything a worker process needs to run trials of one study (picklable)."""

    name: str
    storage: str  # an Optuna RDB URL, or the path of a journal file
    space: SearchSpace
    base: RunConfig
    model: str  # preset name, for the reproduce command
    recipe: str
    budget: str  # label: quick | standard | paper | <N> epochs
    budget_epochs: int  # epochs of one full trial (pruning steps are epochs 1..budget_epochs)
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    results: str = "results"
    stale_after: float = 600.0
    compare: tuple[tuple[str, Any], ...] = ()  # (("group", name), ("field", f), ("value", v)) of a --compare sub-study

    def attrs(self) -> dict[str, Any]:
        """What a study records about itself (user attrs), so reports and re-runs need no flags."""
        return {
            "base_config": identity_dict(self.base), "space": self.space.to_dict(), "model_preset": self.model,
            "recipe": self.recipe, "budget": self.budget, "budget_epochs": self.budget_epochs,
            "sampler": self.sampler, "pruner": self.pruner, "seed": self.seed,
            **{f"compare_{k}": v for k, v in self.compare},
        }


def default_study_name(space: str, model: str, data_source: str, budget_label: str) -> str:
    tag = Path(data_source.rstrip("/")).name if "/" in data_source else data_source.replace(":", "")
    return f"{Path(space).stem}-{model}-{tag}-{budget_label}"


def default_storage(results: str | os.PathLike, name: str) -> str:
    """The embedded store: one journal file per study (group) under ``<results>/studies/``."""
    return str(Path(results) / "studies" / f"{check_name(name, 'study name')}.log")


def is_rdb_url(storage: str) -> bool:
    return "://" in storage


# ============================================================================ storage, samplers

def heartbeat_settings(stale_after: float) -> tuple[int, int]:
    """(heartbeat interval, grace period) in whole seconds for RDB storages: a trial whose worker
    sent no heartbeat for ``stale_after`` seconds is failed and retried (three beats per grace)."""
    return max(1, int(min(60, stale_after / 3))), max(2, int(stale_after))


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
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    interval, grace = heartbeat_settings(stale_after)
    for attempt in range(attempts):
        try:
            with _experimental_ok():
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


def damaged_tail(path: str | os.PathLike) -> tuple[int, bytes] | None:
    """(offset, bytes) of a journal's last line if it is not a whole operation, else None.

    A whole operation is one JSON object ending in a newline. A kill or a full disk mid-write
    leaves a fragment without its newline; a fragment followed by the next operation (Optuna 5
    appends after a fragment) is a newline-terminated line that is not JSON.
    """
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None
        start = _line_start(handle, size - 1)  # the last line, its own newline (if any) excluded
        handle.seek(start)
        line = handle.read()
    if not line.endswith(b"\n"):
        return start, line
    try:
        json.loads(line)
    except ValueError:
        return start, line
    return None


def _line_start(handle, end: int, block: int = 1 << 16) -> int:
    """Offset just after the last newline before ``end`` (0 if none), read backwards in blocks:
    a journal grows with every trial, and its tail is checked before every append."""
    position = end
    while position > 0:
        low = max(0, position - block)
        handle.seek(low)
        found = handle.read(position - low).rfind(b"\n")
        if found >= 0:
            return low + found + 1
        position = low
    return 0


class RepairingJournalFile(optuna.storages.journal.BaseJournalBackend):
    """Optuna's journal file whose tail is checked and repaired before every append.

    Optuna 5's JournalFileBackend skips an unterminated last line when reading but appends after
    it: the next operation is glued onto the fragment and from then on every read of the study
    fails. Here an append takes the journal's lock (the same lock file Optuna's backend uses, so
    both agree), cuts a damaged last line (:func:`damaged_tail`) after keeping a copy in
    ``<journal>.cut``, says so in one line, and then writes; a write that fails (a full disk) is
    undone, so it never leaves a fragment itself. Reading is Optuna's, with errors that name the file.
    """

    def __init__(self, path: str):
        from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

        self.path = path
        self.lock = JournalFileSymlinkLock(path)
        self.reader = JournalFileBackend(path, lock_obj=self.lock)

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        line = log_number_from
        try:
            for log in self.reader.read_logs(log_number_from):
                line += 1
                yield log
        except ValueError as exc:  # json.JSONDecodeError, "Invalid log format."
            raise ValueError(f"journal {self.path} is corrupt at line {line + 1} ({exc}): an operation was "
                             "overwritten; restore the file from a copy or start a new --study-name") from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        payload = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        self.lock.acquire()
        try:
            self._repair()
            self._write(payload)
        finally:
            self.lock.release()

    def _repair(self) -> None:
        damaged = damaged_tail(self.path)
        if damaged is None:
            return
        offset, tail = damaged
        copy_path = f"{self.path}.cut"
        try:
            with open(copy_path, "ab") as handle:  # every cut is kept, one after another
                handle.write(tail if tail.endswith(b"\n") else tail + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:  # no copy, no cut: the fragment is the user's data
            raise OSError(exc.errno, f"{exc.strerror} (keeping a copy of the journal's damaged last line)",
                          copy_path) from None
        os.truncate(self.path, offset)
        _say(f"journal {self.path}: cut a damaged last line ({len(tail)} bytes, an operation written only in "
             f"part by a killed process or a full disk) before appending; a copy is in {copy_path}")

    def _write(self, payload: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as exc:  # e.g. ENOSPC after part of the line: take the part back
                os.ftruncate(fd, size)
                raise OSError(exc.errno, f"{exc.strerror} (appending to the study journal; the partial write "
                                         "was undone)", self.path) from None
        finally:
            os.close(fd)


class InterruptSafeJournal(optuna.storages.journal.BaseJournalBackend):
    """A journal backend whose appends finish before a Ctrl-C or SIGTERM takes effect.

    Optuna's file lock is not interrupt-safe: a KeyboardInterrupt inside its release turns into
    a FileNotFoundError (the trial is recorded as failed, the study goes on, Ctrl-C is lost) or
    leaves the lock behind (30 s stall). The append itself takes milliseconds.
    """

    def __init__(self, backend: optuna.storages.journal.BaseJournalBackend):
        self.backend = backend

    def read_logs(self, log_number_from: int):
        return self.backend.read_logs(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with deferred_interrupts():
            self.backend.append_logs(logs)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda s, frame: held.append(s)) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)  # the handler in place now decides: KeyboardInterrupt, or exit


def writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create ``path`` if needed and prove it takes files (before any training writes there)."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"{what} {folder} is not writable: {exc.strerror or exc}") from None
    return folder


def check_storage(storage: str, stale_after: float) -> None:
    """Fail before any data or training when the storage cannot be used: an RDB server is
    connected to (reachable, credentials right); a journal file's folder must take files."""
    if is_rdb_url(storage):
        open_storage(storage, stale_after)
    elif Path(storage).is_dir():
        raise ValueError(f"storage {storage} is a directory: give a journal file path such as {storage}/study.log")
    else:
        writable_dir(Path(storage).parent, "the storage's folder")


@dataclass(frozen=True)
class RetryStaleTrial:
    """Optuna's RetryHeartbeatStaleTrialCallback (a trial whose worker stopped sending heartbeats
    is re-queued WAITING with its params, so its run resumes from its checkpoint), plus the user
    attrs :func:`requeue` writes on the journal store: which trial it retries, how often, and why.
    """

    grace_s: int
    max_retry: int = MAX_RETRIES

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retries = int(trial.user_attrs.get("retries", 0))
        if retries >= self.max_retry or not trial.params:
            return
        worker = f"{trial.user_attrs.get('host', '?')}:{trial.user_attrs.get('pid', '?')}"
        clone = copy.copy(trial)
        clone.user_attrs = {"retry_of": trial.user_attrs.get("retry_of", trial.number), "retries": retries + 1,
                            "retried_from": trial.number,
                            "retry_reason": f"no heartbeat from worker {worker} for {self.grace_s} s (died?)"}
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)(study, clone)


@contextlib.contextmanager
def _experimental_ok() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning for features chosen on purpose (heartbeats, QMC)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


# Sampler arguments are explicit: Optuna 5 changed TPE's defaults (multivariate, constant liar).
# Worker i seeds its sampler with seed + i, else parallel workers would propose identical trials;
# QMC is the exception: its points are indexed by trial number, so every worker shares one seed.
def _tpe(seed: int, worker: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed + worker, n_startup_trials=10, n_ei_candidates=24, multivariate=True,
                                      group=False, constant_liar=True)


def _random(seed: int, worker: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed + worker)


def _qmc(seed: int, worker: int) -> optuna.samplers.BaseSampler:
    with _experimental_ok():
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed, warn_asynchronous_seeding=False,
                                          warn_independent_sampling=False)


def _cmaes(seed: int, worker: int) -> optuna.samplers.BaseSampler:
    try:
        import cmaes  # noqa: F401  (optional dependency of Optuna's CMA-ES sampler)
    except ImportError:
        raise ValueError("sampler 'cmaes' needs the cmaes package (pip install cmaes); "
                         "or use tpe, random, qmc, gp") from None
    return optuna.samplers.CmaEsSampler(seed=seed + worker, n_startup_trials=5, warn_independent_sampling=False,
                                        independent_sampler=optuna.samplers.RandomSampler(seed=seed + worker))


def _gp(seed: int, worker: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed + worker, n_startup_trials=10, deterministic_objective=False,
                                     warn_independent_sampling=False)


SAMPLERS = {"tpe": _tpe, "random": _random, "qmc": _qmc, "cmaes": _cmaes, "gp": _gp}
INDEXED_SAMPLERS = frozenset({"qmc"})  # points indexed by trial number: one seed for the whole study


def make_sampler(name: str, seed: int, worker: int = 0) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed, worker)


def _warmup(epochs: int) -> int:
    """Epochs no trial is judged on: slow starters (deep plain nets, warm-up) are not cut unfairly."""
    return max(1, epochs // 4)


def _median(epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=_warmup(epochs), interval_steps=1,
                                       n_min_trials=3)


def _hyperband(epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.HyperbandPruner(min_resource=_warmup(epochs), max_resource=max(epochs, _warmup(epochs) + 1),
                                          reduction_factor=3)


def _sha(epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=_warmup(epochs), reduction_factor=3,
                                                  min_early_stopping_rate=0)


def _no_pruner(epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


PRUNERS = {"median": _median, "hyperband": _hyperband, "sha": _sha, "none": _no_pruner}


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}: expected one of {', '.join(PRUNERS)}")
    return PRUNERS[name](epochs)


def describe_sampler(name: str, seed: int) -> str:
    details = {"tpe": "multivariate, constant liar, 10 random startup trials", "qmc": "scrambled Sobol",
               "gp": "10 random startup trials", "cmaes": "5 random startup trials", "random": ""}
    return f"{name} (seed {seed}{', ' + details[name] if details.get(name) else ''})"


def describe_pruner(name: str, epochs: int) -> str:
    warm = _warmup(epochs)
    details = {"median": f"5 startup trials, {warm} warm-up epoch(s), >= 3 trials per step",
               "hyperband": f"min {warm} epoch(s), max {epochs}, factor 3", "sha": f"min {warm} epoch(s), factor 3"}
    if name == "none":
        return "none (every trial trains its full budget)"
    return f"{name} ({details.get(name, 'custom')}; the final epoch is never pruned)"


# ===================================================================================== studies

def create_study(spec: StudySpec, allow_change: bool = False) -> tuple[optuna.Study, bool]:
    """Create the study, or open it and check it asks the same question (base config and space)
    the same way (sampler and pruner; another one only with ``allow_change``, and it is recorded).

    Returns the study and whether this call created it. Of several hosts starting at once exactly
    one creates it (the storage's unique study name decides); the others join it.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(spec.storage, spec.stale_after)
    kwargs = {"study_name": spec.name, "storage": storage, "sampler": make_sampler(spec.sampler, spec.seed),
              "pruner": make_pruner(spec.pruner, spec.budget_epochs)}
    try:
        study, created = optuna.create_study(direction="minimize", **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(**kwargs), False
    existing = study.user_attrs
    for key in ("base_config", "space"):
        if key in existing and existing[key] != spec.attrs()[key]:
            changed = _first_difference(existing[key], spec.attrs()[key])
            raise ValueError(f"study {spec.name!r} exists with a different {key} ({changed}): "
                             "pass --study-name NEW to start another study")
    _check_search_change(study, spec, allow_change)
    for key, value in spec.attrs().items():
        if existing.get(key) != value:
            study.set_user_attr(key, value)
    return study, created


SEARCH_KEYS = ("sampler", "pruner")  # how a study searches: its report names them for every trial


def _check_search_change(study: optuna.Study, spec: StudySpec, allow_change: bool) -> None:
    """A rerun with another sampler or pruner is refused (the report would claim it for every
    trial) unless ``allow_change``: then ``search_history`` records from which trial each applies."""
    existing = study.user_attrs
    now = [spec.sampler, spec.pruner]
    before = [existing.get(key, value) for key, value in zip(SEARCH_KEYS, now)]
    if before == now:
        return
    changed = "; ".join(f"--{key} {old} in the study, {new} now" for key, old, new in zip(SEARCH_KEYS, before, now)
                        if old != new)
    if not allow_change:
        raise ValueError(f"study {spec.name!r} was run another way ({changed}): pass --allow-change to go on "
                         "this way (the report then says from which trial), or --study-name NEW")
    history = existing.get("search_history") or [[0, *before]]
    study.set_user_attr("search_history", [*history, [len(study.trials), *now]])


def search_history_text(study: optuna.Study) -> str:
    """``tpe/median for trials 0-3; random/none from trial 4`` ("" if the study never changed)."""
    history = study.user_attrs.get("search_history") or []
    parts = []
    for index, (first, sampler, pruner) in enumerate(history):
        until = history[index + 1][0] - 1 if index + 1 < len(history) else None
        span = f"from trial {first}" if until is None else f"for trials {first}-{until}"
        parts.append(f"sampler {sampler}, pruner {pruner} {span}")
    return "; ".join(parts)


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
    return f"{path}: {old!r} in the study, {new!r} now"


def counts(study: optuna.Study) -> dict[str, int]:
    """finished (COMPLETE + PRUNED: what --trials counts), running, waiting, failed."""
    trials = study.get_trials(deepcopy=False)
    by = lambda *states: sum(t.state in states for t in trials)  # noqa: E731
    return {"finished": by(*FINISHED), "running": by(TrialState.RUNNING), "waiting": by(TrialState.WAITING),
            "failed": by(TrialState.FAIL), "complete": by(TrialState.COMPLETE), "pruned": by(TrialState.PRUNED)}


def trial_config(spec: StudySpec, params: Mapping[str, Any], device: str = "auto") -> RunConfig:
    """The run of a trial: the study's base config, the space's fixed fields, then the params."""
    run = dataclasses.replace(spec.base, device=device)
    return apply_overrides(apply_overrides(run, dict(spec.space.fixed)), dict(params))


# ========================================================================== stale trials

def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs on this machine and is not a zombie (a killed, unreaped worker)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stale_reason(trial: optuna.trial.FrozenTrial, grace_s: float | None, now: float | None = None,
                 host: str | None = None) -> str | None:
    """Why a RUNNING trial's worker is gone, or None if it may be alive.

    Same host: the worker's pid is dead. Other hosts: no heartbeat (set per epoch) for ``grace_s``
    (None: leave other hosts to the storage's own heartbeat, as RDB storages have one).
    """
    now = time.time() if now is None else now
    host = socket.gethostname() if host is None else host
    attrs = trial.user_attrs
    if attrs.get("host") == host and isinstance(attrs.get("pid"), int):
        if attrs["pid"] == os.getpid() or _pid_alive(attrs["pid"]):
            return None  # a live local worker may just have a long epoch
        return f"worker pid {attrs['pid']} on {host} died while running the trial"
    if grace_s is None:
        return None
    start = trial.datetime_start.timestamp() if trial.datetime_start else now
    beat = float(attrs.get("heartbeat", start))
    if now - beat > grace_s:
        worker = f"{attrs.get('host', '?')}:{attrs.get('pid', '?')}"
        return f"no heartbeat from worker {worker} for {now - beat:.0f} s (grace {grace_s:.0f} s)"
    return None


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """Enqueue ``trial``'s params again (at most MAX_RETRIES times per original trial)."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= MAX_RETRIES or not trial.params:
        return False
    original = trial.user_attrs.get("retry_of", trial.number)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": original, "retries": retries + 1,
                                                  "retried_from": trial.number})
    return True


def unmarked_reason(trial: optuna.trial.FrozenTrial, grace_s: float, now: float | None = None) -> str | None:
    """A RUNNING trial its worker never marked (host, pid) within ``grace_s``: the worker died
    between asking for the trial and starting it (marking takes milliseconds)."""
    if "host" in trial.user_attrs or trial.datetime_start is None:
        return None
    age = (time.time() if now is None else now) - trial.datetime_start.timestamp()
    return f"its worker never started it ({age:.0f} s old, grace {grace_s:.0f} s)" if age > grace_s else None


def recover_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage,
                         stale_after: float) -> list[tuple[int, str]]:
    """Fail RUNNING trials whose worker is gone and re-enqueue their params; returns (number, why).

    RDB storages: Optuna's heartbeat check fails trials of workers silent for the grace period
    (any host); it runs here too, not only inside ``optimize``, so a dead host's RUNNING trial
    cannot hold the survivors back. The journal store has no heartbeat of its own (Optuna's is
    RDB-only): the per-epoch ``heartbeat`` user attr stands in for it. Both add the fast local
    rule (a dead pid on this host is seen at once). Two workers may race: the one whose FAIL lands
    first re-enqueues, the other gets UpdateFinishedTrialError and moves on.
    """
    heartbeat = _has_heartbeat(storage)
    recovered = _fail_heartbeat_stale(study, stale_after) if heartbeat else []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(trial, None if heartbeat else stale_after) or unmarked_reason(trial, stale_after)
        if reason is None:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            study.tell(trial.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):
            continue  # another worker recovered it first
        requeue(study, trial)
        recovered.append((trial.number, reason))
    return recovered


def _fail_heartbeat_stale(study: optuna.Study, stale_after: float) -> list[tuple[int, str]]:
    """Optuna's heartbeat check; its callback (:class:`RetryStaleTrial`) re-queues each trial."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    with _experimental_ok():
        optuna.storages.fail_stale_trials(study)
    grace = heartbeat_settings(stale_after)[1]
    return [(t.number, f"no heartbeat for {grace} s") for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.number in running]


# ================================================================================ objective

@dataclass
class Objective:
    """Trains one trial's config with :func:`fit`; pruning and the heartbeat ride on its callback."""

    spec: StudySpec
    device: str = "cpu"
    data: Any = None  # a DataBundle the caller loaded; used for the trials whose DataConfig it was loaded for
    current: optuna.Trial | None = None  # the trial being trained (for Ctrl-C re-queueing)
    _data_cache: dict = field(default_factory=dict)

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: fit has written a "stopped" record and kept the checkpoint
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C or SIGTERM); re-queued")
            raise

    def _run(self, trial: optuna.Trial) -> float:
        from resnet_core.engine import fit, make_budget

        params = self.spec.space.suggest(trial)
        self._mark(trial)
        try:
            run = trial_config(self.spec, params, self.device)
        except ValueError as exc:  # a combination the config rejects (e.g. depth 8 with bottlenecks)
            return self._fail(trial, f"invalid config: {exc}")
        trial.set_user_attr("run_id", run_id(run))
        try:
            data = self._load(run.data)
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. no memory left for the data on this device
            return self._fail(trial, f"data could not be loaded: {type(exc).__name__}: {exc}")
        epochs = make_budget(run.train, len(data.train_y)).epochs
        trial.set_user_attr("budget_epochs", epochs)
        record = fit(run, callbacks=[self._callback(trial, epochs)], results_dir=self.spec.results, data=data)
        return self._outcome(trial, record)

    def _mark(self, trial: optuna.Trial) -> None:
        """Who runs this trial: lets another worker tell a dead trial from a slow one."""
        self.current = trial
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("heartbeat", time.time())

    def _load(self, cfg: DataConfig):
        """The data of the trial's own DataConfig: the caller's bundle only if it was loaded for
        it (a --compare subset or val_size sub-study asks for other data than the base study)."""
        from resnet_core.data import load_data

        if matching_data(self.data, cfg) is not None:
            return self.data
        if cfg not in self._data_cache:
            self._data_cache.clear()  # one bundle per worker: the device need not hold every config's data
            self._data_cache[cfg] = load_data(cfg, resolve_device(self.device))
        return self._data_cache[cfg]

    @staticmethod
    def _callback(trial: optuna.Trial, epochs: int) -> Callable[[dict], bool]:
        def report(metrics: dict) -> bool:
            trial.set_user_attr("heartbeat", time.time())
            value = metrics["val_error"]
            if value is None or not math.isfinite(value):
                return False
            trial.report(value, metrics["epoch"])
            # Stopping at the last epoch saves nothing and would hide a finished run as "pruned".
            return metrics["epoch"] < epochs and trial.should_prune()

        return report

    def _outcome(self, trial: optuna.Trial, record) -> float:
        trial.set_user_attr("epochs_done", len(record.history))
        trial.set_user_attr("run_status", record.status)
        if record.status == "stopped" and record.stop_reason == "callback":
            # A pruned run is not resumed; its checkpoint would only fill the disk.
            checkpoint_path(self.spec.results, record.run_id).unlink(missing_ok=True)
            raise optuna.TrialPruned(f"pruned after epoch {len(record.history)}")
        if record.status == "completed":
            value = record.final.get("val_error")
            if value is not None and math.isfinite(value):
                return float(value)
            return self._fail(trial, "the run has no finite validation error")
        reason = record.error or record.stop_reason or "no reason recorded"
        return self._fail(trial, f"run {record.status}: {reason}")

    @staticmethod
    def _fail(trial: optuna.Trial, reason: str) -> float:
        trial.set_user_attr("fail_reason", reason[:500])
        raise TrialFailed(reason)


def matching_data(data: Any, cfg: DataConfig) -> Any:
    """``data`` if it is a DataBundle loaded for ``cfg``, else None (the caller loads the right one)."""
    return data if data is not None and getattr(data, "config", None) == cfg else None


# ================================================================================== workers

@dataclass(frozen=True)
class WorkerJob:
    """One worker's share: the study, the target and where/how it runs."""

    spec: StudySpec
    target: int
    device: str = "cpu"
    worker: int = 0
    threads: int | None = None
    deadline: float | None = None  # time.time() after which no new trial starts
    fresh: bool = False  # this invocation created the study (its workers get the reproducible seeds)


def resumed_seed(seed: int, worker: int, existing_trials: int, salt: str = "") -> tuple[int, int]:
    """(seed, worker offset) of a worker's sampler.

    A fresh study gives (seed, worker): reproducible. A study that already has trials (a re-run
    after an interruption, or --add) derives a new stream from its trial count; replaying the
    seed would propose the first trials' params again (fit would return their records, and the
    study would hold duplicates instead of new points). ``salt`` (host and pid of a worker that
    joined a study another invocation created) keeps hosts started with the same command from
    proposing the same points: they all see the same seed, worker index and trial count.
    """
    if existing_trials == 0 and not salt:
        return seed, worker
    import zlib

    import numpy as np

    entropy = [seed, worker, existing_trials] + ([zlib.crc32(salt.encode())] if salt else [])
    derived = int(np.random.SeedSequence(entropy).generate_state(1)[0] % 2**31)
    return derived, 0


def worker_sampler(spec: StudySpec, job: "WorkerJob", existing_trials: int) -> optuna.samplers.BaseSampler:
    """The sampler of one worker: reproducible in a study this invocation created, else salted."""
    if spec.sampler in INDEXED_SAMPLERS:  # points indexed by trial number: one seed everywhere
        return make_sampler(spec.sampler, spec.seed, job.worker)
    if job.fresh:
        return make_sampler(spec.sampler, spec.seed, job.worker)
    salt = f"{socket.gethostname()}:{os.getpid()}"
    return make_sampler(spec.sampler, *resumed_seed(spec.seed, job.worker, existing_trials, salt))


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def run_worker(job: WorkerJob, data: Any = None, on_trial: Callable[[optuna.Study], None] | None = None) -> int:
    """Run trials until the study holds ``job.target`` finished trials; returns how many ran here.

    One trial per ``optimize`` call, so stale trials are recovered and the target re-checked
    before each trial (Optuna's own heartbeat also runs inside ``optimize``, for RDB storages).
    When the trials still missing are running elsewhere (another process or host), the worker
    waits for them instead of leaving: if one's worker dies, its trial is failed, re-queued and
    run here, so the target is reached once in all, not once per host and not short of it.
    Workers that check at the same moment may each start the last trial: at most workers - 1
    trials beyond the target.
    """
    import torch

    from resnet_core.devices import pin_device, share_compile_threads

    if job.threads:
        torch.set_num_threads(job.threads)
        share_compile_threads(job.threads)
    pin_device(resolve_device(job.device))
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported in one line by _one_trial
    spec = job.spec
    storage = open_storage(spec.storage, spec.stale_after)
    study = optuna.load_study(study_name=spec.name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=make_pruner(spec.pruner, spec.budget_epochs))
    study.sampler = worker_sampler(spec, job, len(study.trials))
    objective = Objective(spec, job.device, data)
    poll_s = min(2.0, heartbeat_settings(spec.stale_after)[0])
    ran, failures, last = 0, 0, None
    while failures < MAX_CONSECUTIVE_FAILURES and not _past(job.deadline):
        for number, reason in recover_stale_trials(study, storage, spec.stale_after):
            _say(f"trial {number} failed and re-queued: {reason}")
        c = counts(study)
        if c["finished"] >= job.target:
            break
        if c["finished"] + c["running"] >= job.target:  # the missing trials run elsewhere: wait for them
            if on_trial is not None:
                on_trial(study)
            time.sleep(poll_s)
            continue
        last = _one_trial(study, objective, on_trial)
        ran += 1
        failures = failures + 1 if last is None or last.state == TrialState.FAIL else 0
    if failures >= MAX_CONSECUTIVE_FAILURES:
        reason = last.user_attrs.get("fail_reason", "?") if last is not None else "?"
        _say(f"worker {job.worker}: stopping, the last {failures} trials all failed (last reason: {reason})")
    return ran


def _one_trial(study: optuna.Study, objective: Objective, on_trial) -> optuna.trial.FrozenTrial | None:
    finished: list[optuna.trial.FrozenTrial] = []
    callbacks = [lambda s, t: finished.append(t)] + ([lambda s, t: on_trial(s)] if on_trial else [])
    try:
        study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=True, callbacks=callbacks)
    except KeyboardInterrupt:
        _requeue_interrupted(study, objective.current)
        raise
    except AssertionError as exc:
        # Optuna's _run_trial: when telling a trial's state fails in the storage (a full disk), its
        # clean-up asserts "Should not reach." over that error. The user needs the storage's error.
        cause = _os_error_in(exc)
        if cause is None:
            raise
        raise cause from None
    finally:
        objective.current = None
    if finished and finished[0].state == TrialState.FAIL:
        _say(f"trial {finished[0].number} failed: {finished[0].user_attrs.get('fail_reason', 'unknown reason')}")
    return finished[0] if finished else None


def _os_error_in(exc: BaseException) -> OSError | None:
    """The first OSError among the exceptions ``exc`` was raised while handling, if any."""
    seen = exc.__context__
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__context__
    return seen


def _say(message: str) -> None:
    """One line on stderr that does not break a progress bar."""
    import sys

    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _requeue_interrupted(study: optuna.Study, trial: optuna.Trial | None) -> None:
    """Ctrl-C failed the running trial: queue its params again so the next run resumes its checkpoint."""
    if trial is None:
        return
    frozen = study.get_trials(deepcopy=False)[trial.number]
    if frozen.state == TrialState.FAIL and frozen.user_attrs.get("fail_reason", "").startswith("interrupted"):
        requeue(study, frozen)


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (a scheduler's or ``kill``'s polite stop) take the Ctrl-C path: the running
    trial writes its record and keeps its checkpoint, and is re-queued for the next run."""
    def _raise(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def _worker_entry(job: WorkerJob) -> None:
    """Entry point of a spawned worker process."""
    interrupt_on_sigterm()
    try:
        run_worker(job)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def worker_threads(n_workers: int, requested: int | None = None) -> int:
    """CPU threads per worker: the cores split evenly, so workers do not oversubscribe them
    (intra-op threads that outnumber free cores spin and stall: 20x slower on a busy machine).
    """
    return requested if requested else max(1, (os.cpu_count() or 1) // max(1, n_workers))


def worker_jobs(spec: StudySpec, target: int, devices: list[str], timeout: float | None,
                threads: int | None = None, fresh: bool = False) -> list[WorkerJob]:
    """One job per device slot."""
    deadline = time.time() + timeout if timeout else None
    per_worker = worker_threads(len(devices), threads)
    return [WorkerJob(spec, target, device, i, per_worker, deadline, fresh) for i, device in enumerate(devices)]


class TrialProgress:
    """tqdm bar over finished trials (COMPLETE + PRUNED) with the best validation error so far."""

    def __init__(self, study: optuna.Study, target: int, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=target, initial=min(target, counts(study)["finished"]), unit="trial",
                        disable=not enabled, dynamic_ncols=True, desc=study.study_name[-40:])
        self.update(study)

    def update(self, study: optuna.Study) -> None:
        c = counts(study)
        self.bar.n = min(self.bar.total, c["finished"])
        best = min((t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))), default=None)
        self.bar.set_postfix(best_val=f"{best:.2f}%" if best is not None else "-", pruned=c["pruned"],
                             failed=c["failed"], running=c["running"])
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def run_study(spec: StudySpec, target: int, devices: list[str], timeout: float | None = None,
              data: Any = None, progress: bool = True, poll_s: float = 2.0,
              threads: int | None = None, allow_change: bool = False) -> dict[str, int]:
    """Run workers (in this process when there is one, else one spawned process each) until the
    study has ``target`` finished trials; returns the final counts. ``allow_change``: see
    :func:`create_study`.
    """
    study, created = create_study(spec, allow_change)
    jobs = worker_jobs(spec, target, devices, timeout, threads, fresh=created)
    bar = TrialProgress(study, target, progress)
    try:
        if len(jobs) == 1:
            run_worker(jobs[0], data=data, on_trial=bar.update)
        else:
            _run_processes(jobs, study, bar, poll_s)
    finally:
        bar.update(study)
        bar.close()
    return counts(study)


def _run_processes(jobs: list[WorkerJob], study: optuna.Study, bar: TrialProgress, poll_s: float) -> None:
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    processes = [context.Process(target=_worker_entry, args=(job,), name=f"study-worker-{job.worker}") for job in jobs]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(poll_s)
            bar.update(study)
    except KeyboardInterrupt:
        _stop(processes)
        raise
    for process in processes:
        process.join()
    crashed = [p.name for p in processes if p.exitcode not in (0, None)]
    if crashed:
        print(f"warning: worker(s) {', '.join(crashed)} exited with an error; their trials are retried on the next run")


def _stop(processes: list) -> None:
    """Ctrl-C: workers in the terminal's process group got it too and are saving their state;
    give them time, then interrupt the ones still running (started elsewhere), then end them.
    """
    deadline = time.time() + 10  # in all, not per worker: a SIGTERM to the driver alone reaches no worker
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.time()))
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGINT)
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()


# ================================================================================== compare

def compare_specs(spec: StudySpec, field_name: str, values: list[str] | None = None) -> list[StudySpec]:
    """One sub-study per value of ``field_name`` with the field fixed and the rest of the space
    tuned: same trial budget, same sampler seed, its own pruner (no pruning across values).
    """
    dotted = resolve_field(field_name)
    param = spec.space.param(field_name)
    if values:
        chosen = list(values)
    elif param is not None:
        chosen = list(param.values())
    else:
        raise ValueError(f"--compare {field_name}: the space {spec.space.name} does not search it; "
                         "give --compare-values A,B")
    if len(chosen) < 2:
        raise ValueError(f"--compare {field_name}: needs at least 2 values (got {chosen})")
    space = spec.space.without(field_name)
    subs = []
    for value in chosen:
        try:
            base = apply_overrides(spec.base, {dotted: value})
        except ValueError as exc:
            raise ValueError(f"--compare {field_name}: {exc}") from None
        label = config_value(base, dotted)
        subs.append(dataclasses.replace(
            spec, name=f"{spec.name}.{field_name}={_label(label)}", space=space, base=base,
            compare=(("group", spec.name), ("field", field_name), ("value", _json_value(label))),
        ))
    return subs


def config_value(run: RunConfig, dotted: str) -> Any:
    """``run``'s value of a dotted field (``model.depth`` -> 20)."""
    section, _, name = dotted.rpartition(".")
    return getattr(getattr(run, section) if section else run, name)


def _label(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def final_runs(spec: StudySpec, study: optuna.Study, seeds: int) -> list[RunConfig]:
    """The best trial's config re-run with seeds FINAL_SEED_BASE + i (TEST error is read from these)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    best = trial_config(spec, study.best_trial.params, spec.base.device)
    return [dataclasses.replace(best, seed=FINAL_SEED_BASE + i) for i in range(seeds)]


def train_final_seeds(spec: StudySpec, study: optuna.Study, seeds: int, device: str, data: Any = None,
                      progress: bool = True) -> list:
    """Train (or find) the final-seed runs of one sub-study; returns their records."""
    from resnet_core.engine import fit

    runs = [dataclasses.replace(r, device=device) for r in final_runs(spec, study, seeds)]
    records = [fit(run, results_dir=spec.results, data=matching_data(data, run.data), progress=progress) for run in runs]
    study.set_user_attr("final_run_ids", [r.run_id for r in records])
    return records


# =========================================================================== time estimate

def estimate(spec: StudySpec, train_size: int, eval_size: int, device: str, trials: int, workers: int,
             threads: int | None = None) -> dict[str, float]:
    """Seconds per trial and in all from a short measured step rate (pruning makes it shorter),
    measured with the threads one worker will have.
    """
    import torch

    from resnet_core.engine import estimate_seconds, measure_step_rate

    torch.set_num_threads(worker_threads(workers, threads))
    run = trial_config(spec, {}, device)
    rate = measure_step_rate(run, steps=5)
    per_trial = estimate_seconds(run, rate, train_size, eval_size)
    rounds = math.ceil(max(0, trials) / max(1, workers))
    return {"images_per_s": rate, "per_trial_s": per_trial, "total_s": per_trial * rounds}


def describe_storage(storage: str) -> str:
    return mask_url(storage) + ("" if is_rdb_url(storage) else " (journal file)")


# ==================================================================================== planning

@dataclass(frozen=True)
class Setup:
    """A validated study (or --compare group) and facts about its data, before any trial."""

    spec: StudySpec
    train_size: int
    eval_size: int
    data_description: str


def plan(*, space: str = "recipe", model: str = "resnet20", budget_name: str = "quick", epochs: int | None = None,
         data: str | None = None, subset: int | None = None, val_size: int | None = None, seed: int = 0,
         overrides: Mapping[str, Any] | None = None, sampler: str = "tpe", pruner: str = "median",
         storage: str | None = None, study_name: str | None = None, results: str = "results",
         stale_after: float = 600.0, compare: str | None = None, spaces_dir: Path = SPACES_DIR,
         data_device: str = "cpu") -> tuple[Setup, Any]:
    """Check everything a study needs (space, config, sampler, pruner, data) before any trial.

    Returns the setup and the loaded DataBundle (on ``data_device``; also warms the data cache
    so parallel workers do not decode it at once).
    """
    from resnet_core.data import load_data
    from resnet_core.engine import make_budget

    plan_budget = budget(budget_name)
    make_sampler(sampler, seed)
    if not stale_after > 0:
        raise ValueError(f"--stale-after {stale_after}: expected a number of seconds > 0")
    base = base_run(model, plan_budget, epochs=epochs, data=data, subset=subset, val_size=val_size, seed=seed,
                    overrides=overrides)
    search = read_space(space, spaces_dir)
    validate_space(search, base)
    if compare is not None:
        resolve_field(compare)
    label = f"e{epochs}" if epochs else plan_budget.name
    suffix = f"-compare-{compare}" if compare else ""
    name = study_name or default_study_name(search.name, model, base.data.source, label) + suffix
    check_name(name, "--study-name")  # it names the journal and the report folder under --results
    storage = storage or default_storage(results, name)
    writable_dir(results, "results directory")  # run records, checkpoints and reports go there
    check_storage(storage, stale_after)  # an unreachable server fails now, not after the data are loaded
    bundle = load_data(base.data, data_device)
    fixed = apply_overrides(base, dict(search.fixed))
    budget_epochs = make_budget(fixed.train, len(bundle.train_y)).epochs
    make_pruner(pruner, budget_epochs)
    spec = StudySpec(name=name, storage=storage, space=search, base=base,
                     model=model, recipe=plan_budget.recipe, budget=label, budget_epochs=budget_epochs,
                     sampler=sampler, pruner=pruner, seed=seed, results=str(results), stale_after=stale_after)
    return Setup(spec, len(bundle.train_y), len(bundle.val_y) + len(bundle.test_y), bundle.description), bundle


def current_counts(spec: StudySpec) -> dict[str, int]:
    """Counts of an existing study (all zeros if it does not exist yet); creates nothing."""
    if not is_rdb_url(spec.storage) and not Path(spec.storage).exists():
        return {k: 0 for k in ("finished", "running", "waiting", "failed", "complete", "pruned")}
    storage = open_storage(spec.storage, spec.stale_after)
    if spec.name not in optuna.get_all_study_names(storage):
        return {k: 0 for k in ("finished", "running", "waiting", "failed", "complete", "pruned")}
    return counts(optuna.load_study(study_name=spec.name, storage=storage))


def plan_lines(setup: Setup, spec: StudySpec, target: int, done: int, devices: list[str],
               timing: Mapping[str, float] | None) -> list[str]:
    """What will run, for the console before training starts."""
    base = spec.base
    length = f"{base.train.epochs} epochs" if base.train.epochs else f"{base.train.iterations} iterations"
    lines = [
        f"study    {spec.name}  on {describe_storage(spec.storage)}",
        f"space    {spec.space.describe()}",
        f"model    {spec.model}; budget {spec.budget}: {length} of recipe {spec.recipe} "
        f"on {setup.train_size} training images",
        f"data     {setup.data_description}; validation {base.data.val_size} images (the objective), "
        "test evaluated but never used to choose",
        f"search   sampler {describe_sampler(spec.sampler, spec.seed)}; "
        f"pruner {describe_pruner(spec.pruner, spec.budget_epochs)}",
        f"trials   target {target} finished (COMPLETE + PRUNED): {done} done, {max(0, target - done)} to run "
        f"on {len(devices)} worker(s) [{', '.join(devices)}]",
    ]
    if timing:
        lines.append(f"time     measured {timing['images_per_s']:,.0f} training images/s -> "
                     f"~{timing['per_trial_s']:.0f} s per full trial, at most ~{timing['total_s'] / 60:.1f} min "
                     "in all (pruning shortens it)")
    return lines


# ===================================================================================== reports

def open_study_or_group(name: str, storage: str) -> tuple[str, list[optuna.Study]]:
    """("study", [study]) or ("compare", [sub-studies in value order]) for ``name``."""
    if not is_rdb_url(storage) and not Path(storage).exists():
        raise FileNotFoundError(f"storage {storage} does not exist (pass --storage or --results)")
    store = open_storage(storage)
    summaries = optuna.get_all_study_summaries(store, include_best_trial=False)
    names = [s.study_name for s in summaries]
    if name in names:
        return "study", [optuna.load_study(study_name=name, storage=store)]
    subs = [s.study_name for s in summaries if s.user_attrs.get("compare_group") == name]
    if not subs:
        raise ValueError(f"no study or --compare group named {name!r} in {mask_url(storage)}: "
                         f"found {', '.join(names) or 'none'}")
    return "compare", [optuna.load_study(study_name=n, storage=store) for n in subs]


def spec_from_study(study: optuna.Study, storage: str, results: str) -> StudySpec:
    """Rebuild a study's spec from what it recorded about itself (reports need no flags)."""
    from resnet_core.config import run_config_from_dict

    attrs = study.user_attrs
    recorded = attrs["space"]
    space = SearchSpace(name=recorded["name"], source="(from the study)",
                        params=tuple(parse_param(k, v, "(from the study)") for k, v in recorded["params"].items()),
                        fixed=tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in recorded["fixed"].items()))
    compare = tuple((k, attrs[f"compare_{k}"]) for k in ("group", "field", "value") if f"compare_{k}" in attrs)
    return StudySpec(name=study.study_name, storage=storage, space=space,
                     base=run_config_from_dict(attrs["base_config"]), model=attrs["model_preset"],
                     recipe=attrs["recipe"], budget=attrs["budget"],
                     budget_epochs=int(attrs["budget_epochs"]), sampler=attrs["sampler"], pruner=attrs["pruner"],
                     seed=int(attrs["seed"]), results=results, compare=compare)


def report_context(spec: StudySpec, runs, run_ids: list[str]) -> dict[str, Any]:
    """The header of a report: data, budget, hardware and versions of the runs behind it."""
    mine = runs.loc[runs["run_id"].isin(run_ids)] if not runs.empty else runs
    unique = lambda col: ", ".join(sorted({str(v) for v in mine[col].dropna()})) if col in mine else ""  # noqa: E731
    base = spec.base
    length = f"{base.train.epochs} epochs" if base.train.epochs else f"{base.train.iterations} iterations"
    context = {
        "objective": "validation error (%) of the final epoch, minimised (the test set never chooses)",
        "data": unique("provenance.data_description") or base.data.source,
        "split": f"train {unique('provenance.train_size') or '?'} / validation {base.data.val_size} / test "
                 f"{unique('provenance.test_size') or '?'} (validation carved with split_seed {base.data.split_seed})",
        "budget": f"{spec.budget}: {length}, recipe {spec.recipe} ({spec.budget_epochs} epochs per full trial)",
        "model": spec.model, "space": spec.space.describe(),
        "sampler": describe_sampler(spec.sampler, spec.seed),
        "pruner": describe_pruner(spec.pruner, spec.budget_epochs),
        "hardware": f"{unique('provenance.device_name')}; amp {unique('provenance.amp')}",
        "software": f"optuna {optuna.__version__}, torch {unique('provenance.torch')}, "
                    f"python {unique('provenance.python')}, "
                    f"commit {unique('provenance.git_commit')}",
        "storage": describe_storage(spec.storage), "budget_epochs": spec.budget_epochs,
    }
    if spec.compare:
        context["compare"] = ", ".join(f"{k} {v}" for k, v in spec.compare)
    return context


def best_command(spec: StudySpec, study: optuna.Study) -> str | None:
    from resnet_core.study_reports import reproduce_command

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return reproduce_command(trial_config(spec, study.best_trial.params), spec.model, spec.recipe)


def _save_figure(make: Callable[[], Any], path: Path, notes: list[str]) -> str | None:
    """Build and save one figure; a figure that cannot be drawn yet becomes a note, not a crash."""
    try:
        figure = make()
    except (ValueError, RuntimeError, ZeroDivisionError, KeyError) as exc:
        notes.append(f"{path.stem}: not drawn ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
        return None
    import io

    import matplotlib.pyplot as plt

    from resnet_core.store import atomic_write_bytes

    buffer = io.BytesIO()  # rendered in memory, then renamed into place: a kill never leaves half a PNG
    figure.savefig(buffer, format=path.suffix.lstrip("."), dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path.name


def write_study_report(study: optuna.Study, spec: StudySpec, out_dir: Path, figures: bool = True) -> Path:
    """trials.csv, best.json, report.md and figures of one study into ``out_dir``."""
    import json

    from resnet_core import study_reports as sr
    from resnet_core.store import atomic_write_text, load_runs

    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(spec.results)
    table = sr.trials_table(study, runs)
    atomic_write_text(out_dir / "trials.csv", table.to_csv(index=False))
    command = best_command(spec, study)
    atomic_write_text(out_dir / "best.json", json.dumps(sr.best_summary(study, command), indent=1, default=str) + "\n")
    run_ids = [r for r in table.get("user_attrs_run_id", []) if isinstance(r, str)]
    context = {**report_context(spec, runs, run_ids), "command": command, "changes": search_history_text(study)}
    notes: list[str] = []
    names = []
    if figures:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna.visualization.matplotlib is experimental
            names = _study_figures(study, spec, out_dir, notes)
    atomic_write_text(out_dir / "report.md", sr.study_markdown(study, context, runs, [n for n in names if n], notes))
    return out_dir


def _study_figures(study: optuna.Study, spec: StudySpec, out_dir: Path, notes: list[str]) -> list[str | None]:
    from resnet_core import study_reports as sr
    from resnet_core.store import load_histories

    top = sr.top_params(study)
    labels = sr.run_labels(sr.top_trials(study, 5))
    return [
        _save_figure(lambda: sr.history_figure(study), out_dir / "optimization_history.png", notes),
        _save_figure(lambda: sr.importance_figure(study), out_dir / "param_importances.png", notes),
        _save_figure(lambda: sr.parallel_figure(study, top), out_dir / "parallel_coordinates.png", notes),
        _save_figure(lambda: sr.slice_figure(study, top), out_dir / "slice.png", notes),
        _save_figure(lambda: sr.learning_curves_figure(load_histories(spec.results), labels),
                     out_dir / "learning_curves.png", notes),
    ]


def final_table(studies: list[optuna.Study], results: str):
    """One row per final-seed run of a --compare group: value, seed, test and validation error."""
    import pandas as pd

    from resnet_core.store import find_record

    rows = []
    for study in studies:
        for rid in study.user_attrs.get("final_run_ids", []):
            record = find_record(results, rid)
            if record is not None and record.status == "completed":
                rows.append({"value": study.user_attrs["compare_value"], "seed": record.config["seed"], "run_id": rid,
                             "test_error": record.final.get("test_error"), "val_error": record.final.get("val_error")})
    return pd.DataFrame(rows, columns=["value", "seed", "run_id", "test_error", "val_error"])


def write_compare_report(group: str, studies: list[optuna.Study], storage: str, results: str, out_dir: Path,
                         figures: bool = True) -> Path:
    """The fair comparison: per value its tuned best (validation) and its final seeds (TEST)."""
    import json

    import pandas as pd

    from resnet_core import study_reports as sr
    from resnet_core.store import atomic_write_text, load_runs

    out_dir.mkdir(parents=True, exist_ok=True)
    specs = [spec_from_study(s, storage, results) for s in studies]
    field_name = studies[0].user_attrs["compare_field"]
    values = [s.user_attrs["compare_value"] for s in studies]
    runs = load_runs(results)
    tables = [sr.trials_table(s, runs).assign(compare_value=v, study=s.study_name) for s, v in zip(studies, values)]
    trials = pd.concat(tables, ignore_index=True)
    atomic_write_text(out_dir / "trials.csv", trials.to_csv(index=False))
    final = final_table(studies, results)
    comparison = sr.compare_table(final, field_name, order=values) if not final.empty else pd.DataFrame()
    atomic_write_text(out_dir / "comparison.csv", comparison.to_csv(index=False))
    bests = [sr.best_summary(s, best_command(p, s)) | {"compare_value": v} for s, p, v in zip(studies, specs, values)]
    payload = {"group": group, "field": field_name, "values": bests,
               "final_seeds": comparison.to_dict(orient="records")}
    atomic_write_text(out_dir / "best.json", json.dumps(payload, indent=1, default=str) + "\n")
    notes: list[str] = []
    name = None
    if figures:
        name = _save_figure(lambda: sr.isolation_figure(trials, field_name, final), out_dir / "isolation.png", notes)
    run_ids = [r for r in trials.get("user_attrs_run_id", []) if isinstance(r, str)] + list(final["run_id"])
    context = report_context(specs[0], runs, run_ids)
    text = sr.compare_markdown(group, field_name, studies, values, context, comparison, notes, [name] if name else [])
    atomic_write_text(out_dir / "report.md", text)
    return out_dir


def report_warnings(storage: str, results: str) -> list[str]:
    """One line each about what a report left out: record copies in runs/, and a journal whose
    last operation was cut short (Optuna ignores it; the next run of the study cuts it)."""
    from resnet_core.store import misnamed_warning, scan_records

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable records: the report has warned about them already
        lines = [misnamed_warning(scan_records(results).misnamed, results)]
    if not is_rdb_url(storage) and Path(storage).is_file() and damaged_tail(storage) is not None:
        lines.append(f"warning: journal {storage} ends in a damaged line (an operation written only in part by a "
                     "killed process or a full disk): it is ignored, and the next studies/run.py of this study "
                     "cuts it, keeping a copy")
    return [line for line in lines if line]


def write_reports(name: str, storage: str, results: str, out_dir: Path | None = None, figures: bool = True) -> Path:
    """Rebuild the reports of a study or --compare group from the storage and the run records."""
    kind, studies = open_study_or_group(name, storage)
    target = out_dir or Path(results) / "studies" / check_name(name, "--study-name")
    if kind == "study":
        return write_study_report(studies[0], spec_from_study(studies[0], storage, results), target, figures)
    return write_compare_report(name, studies, storage, results, target, figures)
