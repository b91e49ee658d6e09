"""The journal file store: appends that repair a damaged tail first and finish before a Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from typing import Any, Iterator

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from resnet_core.study.common import say


# The keys Optuna 5's journal replay reads of each operation, by op_code (JournalOperation and
# JournalStorageReplayResult in optuna/storages/journal/_storage.py); a line without them fails
# there with a bare KeyError or AssertionError.
OPERATION_KEYS: dict[int, tuple[str, ...]] = {
    0: ("study_name", "directions"),  # CREATE_STUDY
    1: ("study_id",),  # DELETE_STUDY
    2: ("study_id", "user_attr"),  # SET_STUDY_USER_ATTR
    3: ("study_id", "system_attr"),  # SET_STUDY_SYSTEM_ATTR
    4: ("study_id", "datetime_start"),  # CREATE_TRIAL
    5: ("trial_id", "param_name", "param_value_internal", "distribution"),  # SET_TRIAL_PARAM
    6: ("trial_id", "state", "values"),  # SET_TRIAL_STATE_VALUES
    7: ("trial_id", "step", "intermediate_value"),  # SET_TRIAL_INTERMEDIATE_VALUE
    8: ("trial_id", "user_attr"),  # SET_TRIAL_USER_ATTR
    9: ("trial_id", "system_attr"),  # SET_TRIAL_SYSTEM_ATTR
    10: (),  # DISCARD_TRIALS
}


def is_operation(log: Any) -> bool:
    """Whether ``log`` (one parsed journal line) is an operation Optuna's replay can apply."""
    if not isinstance(log, dict) or not isinstance(log.get("worker_id"), str):
        return False
    op_code = log.get("op_code")
    keys = OPERATION_KEYS.get(op_code) if type(op_code) is int else None  # not a bool, not 1.0
    return keys is not None and all(key in log for key in keys)


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
    undone, so it never leaves a fragment itself. Reading is Optuna's, with errors that name the file;
    a whole JSON line that is no operation (:func:`is_operation`) is an error naming its line, never
    cut: no killed write leaves a whole line, so it is someone's data, and each process's Optuna
    reader keeps byte offsets of the lines it has read, which a line removed under it would shift.
    """

    def __init__(self, path: str):
        self.path = path
        self.lock = JournalFileSymlinkLock(path)
        self.reader = JournalFileBackend(path, lock_obj=self.lock)

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        for line, log in enumerate(self._parsed(log_number_from), start=log_number_from + 1):
            if not is_operation(log):
                text = json.dumps(log)
                raise ValueError(f"journal {self.path} line {line} is not an Optuna operation "
                                 f"({text[:60] + ('...' if len(text) > 60 else '')}): something other than a study "
                                 "wrote it; delete that line (or restore the file from a copy) and run again")
            yield log

    def _parsed(self, log_number_from: int) -> Iterator[Any]:
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
        say(f"journal {self.path}: cut a damaged last line ({len(tail)} bytes, an operation written only in "
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
