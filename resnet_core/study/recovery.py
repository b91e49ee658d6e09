"""Trials whose worker died: how they are told from slow ones, failed and re-queued (journal
stores: a dead local pid or a stale per-epoch heartbeat attr; RDB stores: Optuna's heartbeat too)."""

from __future__ import annotations

import copy
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from resnet_core.study.common import MAX_RETRIES, experimental_ok


def heartbeat_settings(stale_after: float) -> tuple[int, int]:
    """(heartbeat interval, grace period) in whole seconds for RDB storages: a trial whose worker
    sent no heartbeat for ``stale_after`` seconds is failed and retried (three beats per grace)."""
    return max(1, int(min(60, stale_after / 3))), max(2, int(stale_after))


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


# A worker marks its trial (host, pid, heartbeat) right after asking for it, which takes milliseconds;
# one killed in between leaves a RUNNING trial nothing else can judge, so it is given this long, not the
# per-epoch grace (600 s by default: a study killed at start-up would wait ten minutes for it).
UNMARKED_GRACE_S = 60.0


def unmarked_reason(trial: optuna.trial.FrozenTrial, grace_s: float, now: float | None = None) -> str | None:
    """A RUNNING trial its worker never fully marked (host and pid) within ``min(grace_s, 60 s)``: the
    worker died between asking for the trial and starting it."""
    attrs = trial.user_attrs
    if ("host" in attrs and "pid" in attrs) or trial.datetime_start is None:
        return None
    grace_s = min(grace_s, UNMARKED_GRACE_S)
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
    heartbeat = is_heartbeat_enabled(storage)
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
    with experimental_ok():
        optuna.storages.fail_stale_trials(study)
    grace = heartbeat_settings(stale_after)[1]
    return [(t.number, f"no heartbeat for {grace} s") for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.number in running]
