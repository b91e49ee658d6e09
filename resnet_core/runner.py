"""Train many run configs in parallel worker processes, skipping the ones already finished.

Run records are the source of truth (docs/DESIGN.md, result store): a run whose record says
``completed`` or ``diverged`` is not trained again, so an interrupted grid resumes where it
stopped, and a run cut off mid-way resumes from its checkpoint inside :func:`fit`.

Each run is claimed before it trains (``store.claim_run``: a lock file its worker holds), so two
drivers on one results folder share a grid: a run claimed by the other driver is waited for, not
trained again, and a claim whose holder died is free at once.

Parallelism is joblib's loky backend, one process per worker, one run at a time per process. On
several GPUs each run claims a free device slot (``devices.worker_devices``) with an exclusive file
lock, so a GPU never gets more than ``workers_per_gpu`` runs however the runs finish. Each worker
gets ``cores // workers`` threads so that workers do not fight over cores (CPU results are bitwise
repeatable only at the same thread count: ``threads`` pins it); :mod:`resnet_core.slots` sets them. A run that runs out of
GPU memory is tried once more (:mod:`resnet_core.gpu_memory`). A study's final stage trains here
too, on the study's devices and threads. The same runs on a Dask cluster: :mod:`resnet_core.dask_runner`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from joblib import Parallel, delayed

from resnet_core.config import DataConfig, RunConfig
from resnet_core.identity import run_id
from resnet_core.data import DataBundle, load_data
from resnet_core.devices import resolve_device, worker_devices
from resnet_core.engine import check_fits_data
from resnet_core.engine import fit as engine_fit
from resnet_core.fused_fit import fit_group
from resnet_core.gpu_memory import check_memory_fraction, fit_all_retrying_oom
from resnet_core.migrate import print_migration
from resnet_core.progress import progress_bar
from resnet_core.slots import Slot, occupy, worker_threads
from resnet_core.store import FINAL_STATUSES, RunRecord, claim_run, find_record

BUSY = "busy"  # not an outcome: another process holds the run's claim (train_job's answer, never returned)
CLAIM_POLL_S = 2.0  # seconds between looks at runs another driver is training
FUSE_SETTINGS = ("auto", "on", "off")
MAX_FUSED = 8  # members of one fused group at most: the benchmark measures groups up to 8


@dataclass(frozen=True)
class Outcome:
    """What became of one run: its status and headline numbers (the record holds the rest)."""

    run_id: str
    status: str  # completed | diverged | failed | stopped
    error: str | None = None
    test_error: float | None = None
    wall_seconds: float = 0.0
    trained_now: bool = False  # False: the record was already final before this call


def outcome_of(record: RunRecord, trained_now: bool) -> Outcome:
    return Outcome(
        run_id=record.run_id,
        status=record.status,
        error=record.error,
        test_error=record.final.get("test_error"),
        wall_seconds=record.wall_seconds,
        trained_now=trained_now,
    )


def finished(run: RunConfig, results_dir: str | Path) -> RunRecord | None:
    """The run's record if it is final (completed or diverged), else None."""
    record = find_record(results_dir, run_id(run))
    return record if record is not None and record.status in FINAL_STATUSES else None


def split_done(runs: Sequence[RunConfig], results_dir: str | Path) -> tuple[list[Outcome], list[RunConfig]]:
    """(outcomes of the runs already finished, runs still to train), in the order given."""
    done, pending = [], []
    for run in runs:
        record = finished(run, results_dir)
        if record is None:
            pending.append(run)
        else:
            done.append(outcome_of(record, trained_now=False))
    return done, pending


# ------------------------------------------------------------------------------ the workers

@dataclass(frozen=True)
class WorkerPool:
    """How the worker processes train: one device slot per worker, torch threads per run (None: the
    cores this process may use over the workers), an optional cap on each process's share of its
    GPU's memory, the function that trains one run (a worker unpickles it: a top-level function), and
    whether runs that differ only in their seed train as one fused model (:func:`fuses`)."""

    devices: tuple[str, ...]
    threads: int | None = None
    memory_fraction: float | None = None
    fit: Callable[..., RunRecord] = engine_fit
    fuse: bool = False

    def threads_each(self) -> int:
        return worker_threads(len(self.devices), self.threads)


# Data configs a worker keeps loaded: a worker alternating between a few (a --compare pair, a grid
# over subsets) reloads none of them, while a device never holds more than a handful of datasets.
WORKER_DATA_CONFIGS = 3


@functools.lru_cache(maxsize=WORKER_DATA_CONFIGS)
def worker_data(cfg: DataConfig, device: str) -> DataBundle:
    """Data loaded once per worker process, data config and device (later runs share the split)."""
    return load_data(cfg, resolve_device(device))


@contextlib.contextmanager
def _device_slot(devices: tuple[str, ...], lock_dir: str | None) -> Iterator[str]:
    """Hold one free device slot (an exclusive lock file) while a run trains on it."""
    if lock_dir is None or len(set(devices)) == 1:
        yield devices[0]
        return
    for index, device in enumerate(devices):
        handle = open(Path(lock_dir) / f"slot{index}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield device
        finally:
            handle.close()  # closing releases the lock, also when the process dies
        return
    raise RuntimeError(f"no free device slot among {len(devices)}: more concurrent runs than workers")


def train_job(runs: list[RunConfig], results_dir: str, pool: WorkerPool, lock_dir: str | None) -> list[Outcome]:
    """Worker body for one job: a run alone, or a fused group (runs equal but for the seed, trained as
    one model). Every run is claimed first (BUSY if another process has it); those this process holds
    and that the claim's previous holder did not finish meanwhile train together on one device slot."""
    with contextlib.ExitStack() as stack:
        outcomes, todo = {}, []
        for run in runs:
            if not stack.enter_context(claim_run(results_dir, run_id(run))):
                outcomes[run_id(run)] = Outcome(run_id=run_id(run), status=BUSY)
            elif (record := finished(run, results_dir)) is not None:
                outcomes[run_id(run)] = outcome_of(record, trained_now=False)
            else:
                todo.append(run)
        if todo:
            outcomes.update((o.run_id, o) for o in _train_claimed(todo, results_dir, pool, lock_dir))
        return [outcomes[run_id(run)] for run in runs]


def _train_claimed(runs: list[RunConfig], results_dir: str, pool: WorkerPool, lock_dir: str | None) -> list[Outcome]:
    """Train claimed runs on a free device slot: one with ``pool.fit``, several as one fused group. The
    slot's threads and device are set while they train (one worker trains in the caller's process:
    its settings come back)."""
    with _device_slot(pool.devices, lock_dir) as device, \
            occupy(Slot(device, pool.threads_each(), pool.memory_fraction)):
        runs = [dataclasses.replace(run, device=device) for run in runs]
        try:
            data = worker_data(runs[0].data, device)
        except Exception:  # noqa: BLE001 - fit loads again and records the failure as a result
            data = None
        if len(runs) == 1:
            train = lambda: [pool.fit(runs[0], results_dir=results_dir, data=data)]  # noqa: E731
        else:
            train = lambda: fit_group(runs, results_dir=results_dir, data=data)  # noqa: E731
        return [outcome_of(r, trained_now=True) for r in fit_all_retrying_oom(train, results_dir)]


def fusion_jobs(runs: Sequence[RunConfig], fuse: bool, max_members: int = MAX_FUSED) -> list[list[RunConfig]]:
    """The jobs the workers take: one run each, or with ``fuse`` the runs that differ only in their
    seed together, up to ``max_members`` a job, in the order the runs came."""
    if not fuse:
        return [[run] for run in runs]
    groups: dict[RunConfig, list[RunConfig]] = {}
    for run in runs:
        groups.setdefault(dataclasses.replace(run, seed=0), []).append(run)
    return [members[i:i + max_members] for members in groups.values() for i in range(0, len(members), max_members)]


def check_fuse(setting: str) -> None:
    """One-line ValueError for a ``--fuse`` setting other than auto, on and off."""
    if setting not in FUSE_SETTINGS:
        raise ValueError(f"fuse={setting!r} is invalid: expected one of {', '.join(FUSE_SETTINGS)}")


def fuses(setting: str, devices: Sequence[str]) -> bool:
    """Whether ``--fuse`` ``setting`` (auto, on, off) fuses on ``devices``: auto fuses on GPUs only.

    On the CPU a fused group of 3 resnet20s trains more slowly than the 3 runs one after another
    (``python -m resnet_core.bench``; the numbers are in docs/scaling.md); on a GPU a small ResNet
    leaves the device mostly idle and one fused model fills it (HFTA, Wang et al., MLSys 2021).
    """
    check_fuse(setting)
    if setting != "auto":
        return setting == "on"
    return all(resolve_device(d).type == "cuda" for d in devices)


# ------------------------------------------------------------------------------ the driver

def check_parallelism(workers: int, workers_per_gpu: int = 1, threads: int | None = None,
                      memory_fraction: float | None = None) -> None:
    """One-line ValueError for a negative worker count, a zero per-GPU share, a zero thread count or
    a GPU memory share outside (0, 1]."""
    check_memory_fraction(memory_fraction)
    if workers < 0 or workers_per_gpu < 1:
        raise ValueError(f"workers={workers}, workers_per_gpu={workers_per_gpu} is invalid: "
                         "expected workers >= 0 and workers_per_gpu >= 1")
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads} is invalid: expected threads >= 1 (or leave it unset: cores // workers)")


def plan_devices(workers: int, device: str = "auto", workers_per_gpu: int = 1) -> tuple[str, ...]:
    """One device string per worker (``workers`` 0: one per GPU slot, or 1 on the CPU)."""
    check_parallelism(workers, workers_per_gpu)
    resolve_device(device)  # an unavailable device is a one-line error before anything starts
    return tuple(worker_devices(workers, device, workers_per_gpu))


def preload_data(runs: Sequence[RunConfig]) -> dict[DataConfig, DataBundle]:
    """Load every distinct data config once, on the CPU, before the workers start.

    A missing dataset, or a model its data cannot train, is then one error up front instead of a
    failed record per run, and the workers find the decoded cache on disk instead of all decoding
    the images at once.
    """
    bundles = {cfg: load_data(cfg, "cpu") for cfg in dict.fromkeys(run.data for run in runs)}
    for run in runs:
        check_fits_data(run, bundles[run.data].num_classes, bundles[run.data].train_x.shape[1])
    return bundles


def runs_bar(total: int, initial: int, enabled: bool, desc: str):
    """The bar over a grid's runs (local workers or a Dask cluster)."""
    return progress_bar(enabled, total=total, initial=initial, desc=desc, unit="run")


def run_all(
    runs: Sequence[RunConfig],
    results_dir: str | Path = "results",
    workers: int = 1,
    device: str = "auto",
    workers_per_gpu: int = 1,
    progress: bool = True,
    desc: str = "runs",
    threads: int | None = None,
    memory_fraction: float | None = None,
    fuse: str = "auto",
) -> list[Outcome]:
    """Train every run not yet finished, ``workers`` at a time; returns outcomes in ``runs`` order. The
    library's one-call path: it migrates records of an older run-id schema first, as a command does.

    A failed or diverged run is an outcome, never an exception. Ctrl-C propagates (exit 130 in
    the command lines); records of finished runs are on disk, a run cut off keeps its last
    epoch's checkpoint, and a rerun resumes the rest. ``threads``: torch threads per CPU run
    (default ``cores // workers``); ``memory_fraction``: each worker's share of its GPU's memory;
    ``fuse``: auto, on or off (:func:`fuses`).
    """
    check_parallelism(workers, workers_per_gpu, threads, memory_fraction)
    devices = plan_devices(workers, device, workers_per_gpu)
    pool = WorkerPool(devices, threads, memory_fraction, fuse=fuses(fuse, devices))
    print_migration(results_dir, runs)  # runs stored under an older run-id schema count as done
    return train_all(runs, results_dir, pool, progress, desc)


def train_all(runs: Sequence[RunConfig], results_dir: str | Path, pool: WorkerPool, progress: bool = True,
              desc: str = "runs") -> list[Outcome]:
    """:func:`run_all` on the worker ``pool``'s devices: one process per device slot (in this
    process when there is one slot); a run another process is training is waited for and its
    record read back. Records of an older run-id schema are the caller's to migrate first (a command
    does it once, when it plans: resnet_core/grid/plan.py, resnet-study, resnet-train)."""
    done, pending = split_done(runs, results_dir)
    pool = dataclasses.replace(pool, threads=pool.threads_each())  # counted here: every worker gets the same
    outcomes = {o.run_id: o for o in done}
    # An absolute path: worker processes need not share the caller's working directory.
    where = str(Path(results_dir).resolve())
    with tempfile.TemporaryDirectory(prefix="resnet_core_slots_") as lock_dir, \
            runs_bar(len(runs), len(done), progress, desc) as bar:
        parallel = Parallel(n_jobs=len(pool.devices), backend="loky", return_as="generator_unordered",
                            pre_dispatch="n_jobs", batch_size=1)
        waiting = 0
        while pending:
            busy = set()
            jobs = fusion_jobs(pending, pool.fuse)
            for job_outcomes in parallel(delayed(train_job)(job, where, pool, lock_dir) for job in jobs):
                for outcome in job_outcomes:
                    if outcome.status == BUSY:
                        busy.add(outcome.run_id)
                        continue
                    outcomes[outcome.run_id] = outcome
                    bar.update(1)
                bar.set_postfix_str(tally(outcomes.values()))
            # Runs another driver is training: look again in a moment (a run it finished is then
            # read back; one whose claim a dead holder left is trained here).
            pending = [run for run in pending if run_id(run) in busy]
            if pending and len(pending) != waiting:
                print(f"waiting for {len(pending)} run(s) that another process is training on {where}",
                      file=sys.stderr, flush=True)
            waiting = len(pending)
            if pending:
                time.sleep(CLAIM_POLL_S)
    return [outcomes[run_id(run)] for run in runs]


def tally(outcomes) -> str:
    """``completed 3 failed 1``: the progress bar's running count of outcomes by status."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return " ".join(f"{status} {n}" for status, n in sorted(counts.items()))
