"""Train a grid's runs on a Dask cluster; the driver, not the workers, writes the run records.

Workers need no shared filesystem. Each run trains with :func:`fit` into a temporary results
directory on its worker, which sends the record (and, for a run stopped part-way, its checkpoint)
back to the driver; the driver stores them with the result store's atomic writes, so the records
and reports are those of a local run. Workers need the package installed and the data reachable
under the same ``data.source``: a directory that exists at that path on every worker, or a
torchvision name (``cifar10``) whose files are already in place there.

Each worker process runs one task at a time (``dask worker --nthreads 1``; a worker with more is
refused): runs in one process share torch's process-wide state, and one run's
``torch._dynamo.reset()`` would clear another's compiled model.

Lost workers: when a worker dies mid-run the scheduler re-runs its tasks elsewhere, up to
``distributed.scheduler.allowed-failures`` deaths per task; when it gives up (``KilledWorker``)
the driver resubmits the run, at most ``RESUBMITS`` times. Other exceptions on a worker are
retried ``RETRIES`` times by Dask. Training failures are not exceptions: fit records them
(status failed or diverged), exactly as in a local run.

Ctrl-C: the driver sets a cluster-wide stop event. Runs not yet started return at once; running
runs stop at the end of their current epoch and come back as ``stopped`` records with their
checkpoints, which the driver writes (a rerun resumes them, on any worker). A second Ctrl-C
cancels everything at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlparse

import torch
from distributed import Client, Event, Future, KilledWorker, LocalCluster, WorkerPlugin, as_completed, get_worker

from resnet_core.config import RunConfig
from resnet_core.identity import run_id
from resnet_core.devices import available_cpus, resolve_device, worker_devices
from resnet_core.engine import fit
from resnet_core.gpu_memory import fit_retrying_oom
from resnet_core.runner import Outcome, outcome_of, runs_bar, split_done, tally, worker_data
from resnet_core.schedules import make_budget
from resnet_core.slots import Slot, occupy
from resnet_core.store import (
    FINAL_STATUSES,
    RunRecord,
    atomic_write_bytes,
    checkpoint_path,
    find_record,
    write_record,
)

CONNECT_TIMEOUT = "5s"  # an unreachable scheduler is an error within seconds, not a hang
RETRIES = 2  # Dask re-runs a task that raised this often (a worker-side hiccup, not a training failure)
RESUBMITS = 2  # the driver resubmits a run whose workers kept dying (KilledWorker) this often
LOCAL_PREFIX = "local:"
LOCAL_GPU_ATTR = "resnet_core_gpu"  # attribute a local:N worker gets: the GPU its auto/cuda runs use

log = logging.getLogger(__name__)

Threads = int | dict[str, int]  # one count for every run, or per host (see threads_by_host)


@dataclass(frozen=True)
class Task:
    """What one run needs on a worker: its config, its state so far, and how to behave."""

    run: RunConfig
    prior: dict[str, Any] | None  # the driver's unfinished record (history, wall time so far)
    checkpoint: bytes | None  # the driver's checkpoint of the run, to resume from
    threads: Threads
    stop: str  # name of the cluster-wide stop event of this grid invocation


# ------------------------------------------------------------------------------ connecting

class _IgnoreSigint(WorkerPlugin):
    """Workers of ``local:N`` share the terminal's process group, so Ctrl-C reaches them too. It is
    the driver's to handle (runs stop at an epoch boundary); the workers must not die of it first."""

    name = "resnet_core-ignore-sigint"

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class _PinLocalGpu(WorkerPlugin):
    """``local:N`` on a host with GPUs: worker i trains its auto/cuda runs on ``devices[i]``.

    Without it every worker's ``cuda`` is the process's current device, GPU 0. LocalCluster names
    its workers 0..N-1. The GPU is pinned by the task itself (:func:`train_remote`), since the
    current CUDA device is per thread and tasks do not run in the thread that sets plugins up.
    """

    name = "resnet_core-local-gpu"

    def __init__(self, devices: tuple[str, ...]):
        self.devices = devices

    def setup(self, worker) -> None:
        if isinstance(worker.name, int):
            setattr(worker, LOCAL_GPU_ATTR, self.devices[worker.name % len(self.devices)])


def local_gpu_devices(count: int) -> tuple[str, ...]:
    """The GPU of each of ``count`` local workers, spread evenly as the local runner spreads its
    workers (``devices.worker_devices``); empty without GPUs."""
    gpus = torch.cuda.device_count()
    return tuple(worker_devices(count, "cuda", math.ceil(count / gpus))) if gpus else ()


def device_here(requested: str, worker) -> str:
    """The device a run asking for ``requested`` trains on, on this worker (auto/cuda: its GPU)."""
    gpu = getattr(worker, LOCAL_GPU_ATTR, None)
    return gpu if gpu is not None and requested in ("auto", "cuda") else requested


def local_workers(address: str) -> int | None:
    """``local:N`` -> N (a LocalCluster of N worker processes); a scheduler address -> None."""
    if not address.startswith("local"):
        return None
    count = address[len(LOCAL_PREFIX):] if address.startswith(LOCAL_PREFIX) else ""
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"--dask {address!r} is invalid: expected local:N with N >= 1, or a scheduler "
                         "address such as tcp://HOST:8786")
    return int(count)


@contextlib.contextmanager
def dask_client(address: str, timeout: str = CONNECT_TIMEOUT) -> Iterator[Client]:
    """A client of the scheduler at ``address``, or of a new local cluster for ``local:N``.

    An unreachable scheduler is a one-line ValueError after ``timeout``, before anything trains.
    """
    count = local_workers(address)
    if count is not None:
        with LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            client.register_plugin(_IgnoreSigint())
            gpus = local_gpu_devices(count)
            if gpus:
                client.register_plugin(_PinLocalGpu(gpus))
            yield client
        return
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot reach the Dask scheduler at {address!r}: {_first_line(exc)}") from None
    with client:
        yield client


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------- what workers have

def _device_type(requested: str, dask_worker) -> str:
    """The device type a run asking for ``requested`` gets on this worker (runs via ``client.run``)."""
    try:
        return resolve_device(device_here(requested, dask_worker)).type
    except ValueError:
        return "unavailable"


def cluster_device_type(client: Client, requested: str = "auto") -> str:
    """The device type runs asking for ``requested`` get on the cluster's workers (not this driver's):
    ``cuda`` when every worker has a GPU for them; a cluster of mixed workers counts as ``cpu``."""
    types = set(client.run(_device_type, requested, on_error="ignore").values())
    if not types:
        raise ValueError(f"--budget auto: the Dask cluster at {client.scheduler.address} has no workers yet to "
                         "ask for their devices; give --budget quick, standard or paper")
    return types.pop() if len(types) == 1 else "cpu"


def _threads_error(address: str, nthreads: int) -> str:
    return (f"Dask worker {address} runs {nthreads} tasks at once: runs in one process share torch's "
            "process-wide state (a run's torch._dynamo.reset() clears another's compiled model); "
            "start workers with `dask worker --nthreads 1`")


def check_one_task_per_worker(client: Client) -> None:
    """One-line ValueError when a worker process runs several tasks at once (``--nthreads`` > 1)."""
    for address, nthreads in client.run(_task_slots, on_error="ignore").items():
        if nthreads > 1:
            raise ValueError(_threads_error(address, nthreads))


def _task_slots(dask_worker) -> int:
    return dask_worker.state.nthreads


# --------------------------------------------------------------------------------- threads

def _host(address: str) -> str:
    return urlparse(address).hostname or address


def _slots(dask_worker) -> tuple[str, int, int]:
    """(host, cores, task slots) of one worker process (runs there via ``client.run``)."""
    return _host(dask_worker.address), available_cpus(), dask_worker.state.nthreads


def threads_by_host(client: Client) -> dict[str, int]:
    """Torch threads per run on each host: its cores shared by the task slots of all its workers,
    as the local runner shares them (``cores // workers``), so CPU runs do not oversubscribe."""
    cores: dict[str, int] = {}
    slots: dict[str, int] = {}
    for host, count, nthreads in client.run(_slots, on_error="ignore").values():  # a dying worker: no plan
        cores[host] = count
        slots[host] = slots.get(host, 0) + nthreads
    return {host: max(1, cores[host] // slots[host]) for host in cores}


def _task_threads(plan: Threads, worker) -> int:
    """This run's thread count; a worker that joined after the plan shares its own cores."""
    if isinstance(plan, int):
        return plan
    return plan.get(_host(worker.address)) or max(1, available_cpus() // worker.state.nthreads)


# ------------------------------------------------------------------------------ the worker

def _seed_scratch(scratch: str, task: Task) -> None:
    """Put the driver's unfinished record and checkpoint where fit looks for them (it resumes)."""
    if task.prior is not None:
        write_record(scratch, RunRecord.from_dict(task.prior))
    if task.checkpoint is not None:
        atomic_write_bytes(checkpoint_path(scratch, run_id(task.run)), task.checkpoint)


def _reply(record: RunRecord, scratch: str) -> dict[str, Any]:
    """The record as a dict, with the checkpoint of a run that stopped part-way."""
    values = record.to_dict()
    if record.status == "stopped" and record.stop_reason == "callback":
        values["stop_reason"] = "KeyboardInterrupt"  # our stop event: the grid was interrupted
    ckpt = checkpoint_path(scratch, record.run_id)
    return {"record": values, "checkpoint": ckpt.read_bytes() if ckpt.exists() else None}


def train_remote(task: Task) -> dict[str, Any] | None:
    """Worker body: fit one run in a scratch directory and return what the driver stores.

    None: the grid was interrupted before this run started. ``{"error": ...}``: this worker cannot
    load the data or use the device (the user's to fix, so not retried).
    """
    worker = get_worker()
    stop = Event(task.stop)
    if stop.is_set():
        return None
    if worker.state.nthreads > 1:  # a worker that joined after the driver's check
        return {"error": _threads_error(worker.address, worker.state.nthreads)}
    run = dataclasses.replace(task.run, device=device_here(task.run.device, worker))
    try:
        resolve_device(run.device)  # a device this worker lacks: the user's to fix, so not retried
    except ValueError as exc:
        return {"error": f"on worker {worker.address}: {_first_line(exc)}"}
    with occupy(Slot(run.device, _task_threads(task.threads, worker))):  # in the task's thread
        return _train_task(task, run, worker, stop)


def _train_task(task: Task, run: RunConfig, worker, stop: Event) -> dict[str, Any]:
    """:func:`train_remote` in its slot: the data, then fit in a scratch directory."""
    try:
        data = worker_data(run.data, run.device)
        total = make_budget(run.train, len(data.train_y)).total_iterations
    except (ValueError, OSError) as exc:
        return {"error": f"on worker {worker.address}: {_first_line(exc)}"}

    def interrupted(metrics: dict[str, Any]) -> bool:  # after each epoch; a finished run just completes
        return metrics["iteration"] < total and stop.is_set()

    with tempfile.TemporaryDirectory(prefix="resnet_core_run_") as scratch:
        _seed_scratch(scratch, task)
        return _reply(fit_retrying_oom(fit, run, callbacks=[interrupted], results_dir=scratch, data=data), scratch)


# ------------------------------------------------------------------------------ the driver

def make_task(run: RunConfig, results_dir: Path, threads: Threads, stop: str) -> Task:
    """The run with the driver's unfinished record and checkpoint, if any (a resumed run)."""
    prior = find_record(results_dir, run_id(run))
    ckpt = checkpoint_path(results_dir, run_id(run))
    return Task(run=run, prior=prior.to_dict() if prior is not None else None,
                checkpoint=ckpt.read_bytes() if ckpt.exists() else None, threads=threads, stop=stop)


def store_reply(results_dir: Path, reply: dict[str, Any]) -> Outcome:
    """Write a worker's checkpoint (if any), then its record, as fit would have locally."""
    record = RunRecord.from_dict(reply["record"])
    ckpt = checkpoint_path(results_dir, record.run_id)
    if reply.get("checkpoint") is not None:
        atomic_write_bytes(ckpt, reply["checkpoint"])
    write_record(results_dir, record)
    if record.status in FINAL_STATUSES:
        ckpt.unlink(missing_ok=True)  # the record now holds everything the checkpoint did
    return outcome_of(record, trained_now=True)


@dataclass
class _Driver:
    """The driver's state while a grid runs: one task per run, attempts, outcomes so far."""

    client: Client
    results_dir: Path
    tasks: dict[str, Task]
    outcomes: dict[str, Outcome]
    bar: Any
    attempts: dict[str, int] = dataclasses.field(default_factory=dict)
    runs_of: dict[str, str] = dataclasses.field(default_factory=dict)  # future key -> run id
    live: dict[str, Future] = dataclasses.field(default_factory=dict)  # future key -> future

    def submit(self, rid: str) -> Future:
        attempt = self.attempts.get(rid, 0) + 1
        self.attempts[rid] = attempt
        key = f"fit-{rid}-{attempt}-{uuid.uuid4().hex[:8]}"
        self.runs_of[key] = rid
        self.live[key] = self.client.submit(train_remote, self.tasks[rid], key=key, retries=RETRIES, pure=False)
        return self.live[key]

    def collect(self, future: Future, resubmit: bool = True) -> Future | None:
        """Store a finished task's result; returns a new future when its worker kept dying."""
        rid = self.runs_of[future.key]
        self.live.pop(future.key, None)
        if future.status == "cancelled":
            return None
        error = future.exception() if future.status == "error" else None
        if isinstance(error, KilledWorker) and resubmit and self.attempts[rid] <= RESUBMITS:
            log.warning("run %s: the workers running it died (%s); resubmitting, attempt %d of %d",
                        rid, _first_line(error), self.attempts[rid] + 1, RESUBMITS + 1)
            return self.submit(rid)
        if error is not None:
            message = f"{type(error).__name__} on the cluster: {_first_line(error)}"
            self._done(Outcome(run_id=rid, status="failed", error=message))
            return None
        reply = future.result()
        if reply is None:
            return None  # not started: the grid was interrupted
        if "error" in reply:
            raise ValueError(reply["error"])
        self._done(store_reply(self.results_dir, reply))
        return None

    def _done(self, outcome: Outcome) -> None:
        self.outcomes[outcome.run_id] = outcome
        self.bar.update(1)
        self.bar.set_postfix_str(tally(self.outcomes.values()))


def _collect_all(driver: _Driver, pending: as_completed) -> None:
    for future in pending:
        again = driver.collect(future)
        if again is not None:
            pending.add(again)


def _stop_gracefully(driver: _Driver, pending: as_completed, stop: Event) -> None:
    """First Ctrl-C: no new runs; running runs end their epoch and their records come back."""
    stop.set()
    print("interrupting: running runs stop at the end of their epoch and are saved (Ctrl-C again to quit now)",
          file=sys.stderr)
    try:
        for future in pending:
            driver.collect(future, resubmit=False)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: leave now; the caller cancels what is left


def run_all_dask(
    runs: Sequence[RunConfig],
    results_dir: str | Path,
    client: Client,
    threads: int | None = None,
    progress: bool = True,
    desc: str = "runs",
) -> list[Outcome]:
    """:func:`resnet_core.runner.run_all` on a Dask cluster: same skipping, records and outcomes.

    ``threads``: torch threads per CPU run (default: each host's cores over its task slots). A
    worker that runs several tasks at once is refused (one line naming the fix).
    """
    results_dir = Path(results_dir)
    check_one_task_per_worker(client)
    done, pending = split_done(runs, results_dir)
    outcomes = {o.run_id: o for o in done}
    plan: Threads = threads if threads is not None else threads_by_host(client)
    stop = Event(f"resnet_core-stop-{uuid.uuid4().hex}", client=client)
    tasks = {run_id(run): make_task(run, results_dir, plan, stop.name) for run in pending}
    with runs_bar(len(runs), len(done), progress, desc) as bar:
        driver = _Driver(client, results_dir, tasks, outcomes, bar)
        futures = as_completed([driver.submit(rid) for rid in tasks])
        try:
            _collect_all(driver, futures)
        except KeyboardInterrupt:
            _stop_gracefully(driver, futures, stop)
            raise
        finally:
            if driver.live:  # after an error or a second Ctrl-C: runs still going stop at their epoch end
                stop.set()
                client.cancel(list(driver.live.values()))
    return [outcomes[run_id(run)] for run in runs]
