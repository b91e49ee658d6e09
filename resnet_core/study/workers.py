"""Workers: processes (not threads: samplers re-seed threads, GPUs want a process each) that run
trials of one shared study until it holds its target of finished trials; signals and progress."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import optuna
from optuna.trial import TrialState

from resnet_core.engine import fit as engine_fit
from resnet_core.progress import progress_bar
from resnet_core.slots import Slot, occupy, worker_threads
from resnet_core.study.common import MAX_CONSECUTIVE_FAILURES, TrialFailed, say
from resnet_core.study.objective import Objective
from resnet_core.study.recovery import heartbeat_settings, recover_stale_trials, requeue
from resnet_core.study.pruners import make_pruner
from resnet_core.study.search import INDEXED_SAMPLERS, counts, create_study, make_sampler
from resnet_core.study.spec import StudySpec
from resnet_core.study.storage import open_storage


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
    fit: Callable[..., Any] = engine_fit  # trains a trial; a spawned worker unpickles it: a top-level function
    memory_fraction: float | None = None  # this process's share of its GPU's memory (None: no cap)


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
    with occupy(Slot(job.device, job.threads or None, job.memory_fraction)):  # given back when it returns
        return _run_trials(job, data, on_trial)


def _run_trials(job: WorkerJob, data: Any, on_trial: Callable[[optuna.Study], None] | None) -> int:
    spec = job.spec
    storage = open_storage(spec.storage, spec.stale_after)
    study = optuna.load_study(study_name=spec.name, storage=storage, sampler=optuna.samplers.RandomSampler(),
                              pruner=make_pruner(*spec.pruner_shape()))
    study.sampler = worker_sampler(spec, job, len(study.trials))
    objective = Objective(spec, job.device, data, fit=job.fit)
    poll_s = min(2.0, heartbeat_settings(spec.stale_after)[0])
    ran, failures, last = 0, 0, None
    while failures < MAX_CONSECUTIVE_FAILURES and not _past(job.deadline):
        for number, reason in recover_stale_trials(study, storage, spec.stale_after):
            say(f"trial {number} failed and re-queued: {reason}")
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
        say(f"worker {job.worker}: stopping, the last {failures} trials all failed (last reason: {reason})")
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
        say(f"trial {finished[0].number} failed: {finished[0].user_attrs.get('fail_reason', 'unknown reason')}")
    return finished[0] if finished else None


def _os_error_in(exc: BaseException) -> OSError | None:
    """The first OSError among the exceptions ``exc`` was raised while handling, if any."""
    seen = exc.__context__
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__context__
    return seen


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
    """Entry point of a spawned worker process: its own signal handling and log level."""
    interrupt_on_sigterm()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported in one line by _one_trial
    try:
        run_worker(job)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def worker_jobs(spec: StudySpec, target: int, devices: list[str], timeout: float | None,
                threads: int | None = None, fresh: bool = False,
                fit: Callable[..., Any] = engine_fit, memory_fraction: float | None = None) -> list[WorkerJob]:
    """One job per device slot."""
    deadline = time.time() + timeout if timeout else None
    per_worker = worker_threads(len(devices), threads)
    return [WorkerJob(spec, target, device, i, per_worker, deadline, fresh, fit, memory_fraction)
            for i, device in enumerate(devices)]


class TrialProgress:
    """tqdm bar over finished trials (COMPLETE + PRUNED) with the best validation error so far."""

    def __init__(self, study: optuna.Study, target: int, enabled: bool = True):
        self.bar = progress_bar(enabled, total=target, initial=min(target, counts(study)["finished"]), unit="trial",
                                desc=study.study_name[-40:])
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
              threads: int | None = None, allow_change: bool = False,
              fit: Callable[..., Any] = engine_fit, memory_fraction: float | None = None) -> dict[str, int]:
    """Run workers (in this process when there is one, else one spawned process each) until the
    study has ``target`` finished trials; returns the final counts. ``allow_change``: see
    :func:`create_study`; ``fit`` trains each trial (with several devices it goes to spawned
    processes, so it must be a top-level function); ``memory_fraction``: each worker's share of
    its GPU's memory.
    """
    study, created = create_study(spec, allow_change)
    jobs = worker_jobs(spec, target, devices, timeout, threads, fresh=created, fit=fit, memory_fraction=memory_fraction)
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
