"""Constants and small helpers every study module shares (no Optuna study logic here)."""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Iterator

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts
FINAL_SEED_BASE = 1000  # re-training seeds of a --compare study: 1000, 1001, ... (never a trial's seed)
MAX_RETRIES = 3  # a trial whose worker died is re-queued at most this often (a config that kills workers)
MAX_CONSECUTIVE_FAILURES = 10  # a worker stops when every trial fails (a broken setup, not a bad config)


class TrialFailed(RuntimeError):
    """A trial whose run failed: recorded as FAIL with ``fail_reason``; the study goes on."""


def is_diverged(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial whose run diverged: PRUNED with user attr ``diverged`` (the objective), or FAIL with
    run status ``diverged`` (studies recorded before divergence was told to the sampler)."""
    if trial.user_attrs.get("diverged"):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("run_status") == "diverged"


def say(message: str) -> None:
    """One line on stderr that does not break a progress bar."""
    tqdm.write(message, file=sys.stderr)


@contextlib.contextmanager
def experimental_ok() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning for features chosen on purpose (heartbeats, QMC)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
