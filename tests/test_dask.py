"""Grids on Dask (real LocalClusters of worker processes, tiny synthetic data): lost workers, Ctrl-C,
resume, an unreachable scheduler. The reference is a local run at the same thread count, which
CPU training repeats bit for bit, so the records of a cluster run must equal it exactly."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import dask  # installed with .[dev]: these tests never skip
from distributed import Client, LocalCluster, WorkerPlugin

from grid_helpers import COMPARED, FAST, RUN, driver, grid_file_fixture, keep_torch_threads, reference  # noqa: F401
from resnet_core.budgets import GRID_BUDGETS
from resnet_core.cli import run_cli
from resnet_core.dask_runner import RESUBMITS, run_all_dask
from resnet_core.grid.cells import expand
from resnet_core.grid.spec import load_grid

grid = grid_file_fixture("dasked")
OVERRIDES = {"data.source": "synthetic:400", "val_size": 40, "device": "cpu"}
# What the CLI with FAST resolves to on this CPU: the quick budget, 2 epochs, all 360 training images.
BUDGET = dataclasses.replace(GRID_BUDGETS["quick"].with_length(epochs=2), subset=None)


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))}


def finals(results: Path) -> dict[str, dict]:
    return {rid: r["final"] for rid, r in records(results).items()}


def summary(results: Path) -> pd.DataFrame:
    return pd.read_csv(results / "ablation" / "dasked" / "summary.csv")[COMPARED]


def _kill_a_busy_worker(client: Client, results: Path, killed: list, timeout: float = 120) -> None:
    """Once the first record is on disk, SIGKILL a worker process that is running a task."""
    deadline = time.monotonic() + timeout
    while not list((results / "runs").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    busy = {address: keys for address, keys in client.processing().items() if keys}
    pids = client.run(os.getpid)
    address = next(iter(busy))
    killed.append((address, list(busy[address])))
    os.kill(pids[address], signal.SIGKILL)


def test_a_lost_worker_is_replaced_and_the_records_equal_a_local_run(grid, reference, tmp_path, caplog):
    runs = [c.run for c in expand(load_grid(str(grid), tmp_path), OVERRIDES, BUDGET)]
    results = tmp_path / "results"
    killed: list = []
    # allowed-failures 0: the first death of a worker running a task fails the task with KilledWorker
    # at once, so the driver's own resubmission is what gets the run done.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), caplog.at_level(logging.WARNING), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        killer = threading.Thread(target=_kill_a_busy_worker, args=(client, results, killed), daemon=True)
        killer.start()
        outcomes = run_all_dask(runs, results, client, threads=1, progress=False)
        killer.join(timeout=10)
    assert killed and killed[0][1], "no worker was killed while running a task"
    assert "resubmitting, attempt 2 of" in caplog.text
    assert [o.status for o in outcomes] == ["completed"] * 4 and all(o.trained_now for o in outcomes)
    assert finals(results) == finals(reference)  # bit for bit: same configs, seeds and threads
    assert not list((results / "checkpoints").glob("*.pt"))  # finished runs keep no checkpoint


def test_cli_on_local_cluster_survives_ctrl_c_and_resumes_to_the_same_tables(grid, reference, tmp_path):
    results = tmp_path / "results"
    argv = [sys.executable, str(RUN), "--grid", str(grid), *FAST, "--results", str(results), "--dask", "local:2"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((results / "runs").glob("*.json")):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()[1].decode()[-800:]
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the driver and its workers
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()[-800:]
    assert "interrupting: running runs stop at the end of their epoch" in err.decode()
    before = records(results)
    assert {r["status"] for r in before.values()} <= {"completed", "stopped"}
    assert 1 <= sum(r["status"] == "completed" for r in before.values()) < 4
    for rid, record in before.items():
        if record["status"] == "stopped":  # stopped at an epoch boundary, its checkpoint shipped home
            assert record["stop_reason"] == "KeyboardInterrupt" and len(record["history"]) == 1
            assert (results / "checkpoints" / f"{rid}.pt").is_file()

    assert run_cli(driver("run").main, ["--grid", str(grid), *FAST, "--results", str(results), "--dask", "local:2"]) == 0
    after = records(results)
    assert len(after) == 4 and {r["status"] for r in after.values()} == {"completed"}
    assert finals(results) == finals(reference)  # resumed runs continued from their checkpoints exactly
    pd.testing.assert_frame_equal(summary(results), summary(reference), check_exact=True)
    assert not list((results / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("address", ["local:0", "local", "local:two"])
def test_malformed_local_address_is_one_line_exit_2(grid, address, tmp_path, capsys):
    argv = ["--grid", str(grid), *FAST, "--results", str(tmp_path / "results"), "--dask", address]
    assert run_cli(driver("run").main, argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: --dask {address!r} is invalid: expected local:N with N >= 1, or a scheduler address such as tcp://HOST:8786\n"
    assert not (tmp_path / "results").exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_scheduler_is_one_line_and_exit_2_before_training(grid, tmp_path):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    results = tmp_path / "results"
    argv = [sys.executable, str(RUN), "--grid", str(grid), *FAST, "--results", str(results), "--dask", address]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: cannot reach the Dask scheduler at {address!r}: "), line
    assert time.monotonic() - started < 60
    assert not list(results.rglob("*.json"))  # nothing trained, no manifest


class _DieOnFit(WorkerPlugin):
    """Every worker process that starts a run dies on the spot (a machine that keeps crashing)."""

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith("fit-"):
            os._exit(1)


def test_a_run_whose_workers_keep_dying_fails_after_bounded_resubmissions(grid, tmp_path, caplog):
    run = expand(load_grid(str(grid), tmp_path), OVERRIDES, BUDGET)[0].run
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), caplog.at_level(logging.WARNING), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.register_plugin(_DieOnFit())
        [outcome] = run_all_dask([run], tmp_path, client, threads=1, progress=False)
    assert outcome.status == "failed" and outcome.error.startswith("KilledWorker on the cluster")
    assert caplog.text.count("resubmitting") == RESUBMITS
    assert not list((tmp_path / "runs").glob("*.json"))  # nothing trained, nothing recorded


def test_local_workers_get_different_gpus(monkeypatch):
    # Two GPUs (mocked in this driver process): local:4 spreads its workers as the local runner
    # does, and each worker sends its auto/cuda runs to its own GPU.
    import torch

    from resnet_core import dask_runner

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with dask_runner.dask_client("local:4") as client:
        gpus = client.run(lambda dask_worker: (dask_worker.name, getattr(dask_worker, dask_runner.LOCAL_GPU_ATTR, None)))
        here = client.run(lambda dask_worker: dask_runner.device_here("auto", dask_worker))
    assert sorted(gpus.values()) == [(0, "cuda:0"), (1, "cuda:1"), (2, "cuda:0"), (3, "cuda:1")]
    assert sorted(here.values()) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    worker = type("Worker", (), {dask_runner.LOCAL_GPU_ATTR: "cuda:1"})()
    assert dask_runner.device_here("cuda", worker) == "cuda:1"
    assert dask_runner.device_here("cpu", worker) == "cpu" and dask_runner.device_here("cuda:0", worker) == "cuda:0"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert dask_runner.local_gpu_devices(4) == ()  # no GPUs: workers keep the runs' own device


def one_worker(threads: int = 1) -> LocalCluster:
    return LocalCluster(n_workers=1, threads_per_worker=threads, processes=True, dashboard_address=None)


def test_a_worker_running_several_tasks_at_once_is_refused_in_one_line(grid, tmp_path):
    runs = [c.run for c in expand(load_grid(str(grid), tmp_path), OVERRIDES, BUDGET)]
    with one_worker(threads=2) as cluster, Client(cluster) as client, pytest.raises(ValueError) as refused:
        run_all_dask(runs, tmp_path / "results", client, threads=1, progress=False)
    message = str(refused.value)
    assert "runs 2 tasks at once" in message and "torch._dynamo.reset()" in message
    assert message.endswith("start workers with `dask worker --nthreads 1`") and "\n" not in message
    assert not (tmp_path / "results" / "runs").exists()  # refused before anything trained


def test_budget_auto_goes_by_the_devices_of_the_cluster_workers(grid, tmp_path):
    import torch

    from resnet_core import dask_runner

    from resnet_core.grid import plan as grid_plan

    command = driver("run")
    request = command.request_of(command.parse_args(["--grid", str(grid), "--dask", "local:1"]))
    with one_worker() as cluster, Client(cluster) as client:
        assert dask_runner.cluster_device_type(client) == "cpu"
        client.run(lambda: setattr(torch.cuda, "is_available", lambda: True))  # the worker now has a "GPU"
        assert dask_runner.cluster_device_type(client) == "cuda"  # this driver has none: the workers' answer
        assert dask_runner.cluster_device_type(client, "cpu") == "cpu"  # runs asking for the CPU get the CPU
        budget, why = grid_plan.choose_budget(request, grid_plan.build_spec(request), client)
    assert budget.name == "paper" and "CUDA" in why


def test_a_worker_alternating_between_two_data_configs_loads_each_once(grid, tmp_path):
    from resnet_core import runner

    runs = [c.run for c in expand(load_grid(str(grid), tmp_path), OVERRIDES, BUDGET)]
    short = dataclasses.replace(runs[0].train, epochs=1)
    other = dataclasses.replace(runs[0].data, val_size=50)
    runs = [dataclasses.replace(run, train=short, data=other if i % 2 else run.data) for i, run in enumerate(runs)]
    with one_worker() as cluster, Client(cluster) as client:
        for run in runs:  # one after another on the one worker: data A, B, A, B
            (outcome,) = run_all_dask([run], tmp_path, client, threads=1, progress=False)
            assert outcome.status == "completed"
        loads = client.run(lambda: runner.worker_data.cache_info().misses)
    assert list(loads.values()) == [2]
