"""python -m resnet_core.bench: every requested row in the table and the JSON, fused rows' per-member
and aggregate figures, no host reads inside a measurement, one-line errors. Tiny sizes on the CPU;
no assertion on any speed."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
import torch

from resnet_core import bench, bench_loop
from resnet_core.commands import bench as bench_command
from resnet_core.cli import run_cli

TINY = ["--model", "resnet20", "--device", "cpu", "--steps", "1", "--rounds", "1", "--warmup", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def rows_of(path) -> list[dict]:
    return json.loads(path.read_text())["rows"]


def test_every_requested_row_is_in_the_table_and_the_json(tmp_path, capsys):
    path = tmp_path / "new" / "bench.json"
    argv = TINY + ["--batch", "4,8", "--modes", "eager,cudagraphs,fused1,fused3,eager", "--json", str(path)]
    assert bench_command.main(argv) == 0
    rows, table = rows_of(path), capsys.readouterr().out
    expected = [(mode, batch, k) for batch in (4, 8) for mode, k in (("eager", 1), ("cudagraphs", 1), ("fused1", 1),
                                                                     ("fused3", 3))]
    assert [(r["mode"], r["batch"], r["k"]) for r in rows] == expected  # the repeated eager: one row
    assert all(f"| {mode} | {batch} | {k} |" in table for mode, batch, k in expected)
    for row in rows:
        if row["mode"] == "cudagraphs":  # CUDA only
            assert row["aggregate_ips"] is None and row["note"] == "n/a (CUDA only)" and row["vs_eager"] is None
        else:
            assert row["aggregate_ips"] > 0 and row["k"] * row["per_run_ips"] == pytest.approx(row["aggregate_ips"])
            assert row["vs_eager"] == pytest.approx(row["aggregate_ips"] / rows[expected.index(("eager", row["batch"], 1))]
                                                    ["aggregate_ips"])


def test_concurrent_processes_are_one_row_per_batch(tmp_path):
    path = tmp_path / "bench.json"
    assert bench_command.main(TINY + ["--batch", "4", "--modes", "", "--processes", "2", "--json", str(path)]) == 0
    (row,) = rows_of(path)
    assert (row["mode"], row["batch"], row["k"]) == ("processes", 4, 2)
    assert row["aggregate_ips"] > 0 and 2 * row["per_run_ips"] == pytest.approx(row["aggregate_ips"])


def test_a_worker_process_that_fails_is_a_row_saying_so():
    from resnet_core.bench_processes import process_rows

    request = bench.BenchRequest(device="cuda:7", batches=(4, 8), steps=1, rounds=1, warmup=0)  # no such device here
    rows = process_rows(request, 1)
    assert [(r.mode, r.batch, r.k, r.aggregate_ips) for r in rows] == [("processes", 4, 1, None), ("processes", 8, 1, None)]
    assert all(r.note.startswith("failed: RuntimeError: a worker process: ValueError: device='cuda:7'") for r in rows)


def test_a_mode_that_fails_is_a_row_saying_so_and_the_others_run(tmp_path, monkeypatch):
    real = bench.setup

    def setup(request, mode, batch):
        if mode.fused:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        return real(request, mode, batch)

    monkeypatch.setattr(bench, "setup", setup)
    path = tmp_path / "bench.json"
    assert bench_command.main(TINY + ["--batch", "4", "--modes", "eager,fused3", "--json", str(path)]) == 1
    eager, fused = rows_of(path)
    assert eager["aggregate_ips"] > 0
    assert fused["aggregate_ips"] is None and fused["note"] == "failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_under_a_time_limit_compiled_rows_are_set_up_last_and_left_out_first(monkeypatch):
    clock, order = [0.0], []

    def ready(request, mode, batch):  # setting up takes 1 s, compiling 10 s
        order.append((mode.name, batch))
        clock[0] += 10.0 if mode.compile_mode else 1.0
        return object()

    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(bench, "_ready", ready)
    def measure(loop, steps, members):  # a measurement takes 1 s
        clock[0] += 1.0
        return 100.0 * members

    monkeypatch.setattr(bench, "images_per_s", measure)
    modes = tuple(map(bench.parse_mode, ["compiled", "eager", "fused2"]))
    request = bench.BenchRequest(device="cpu", modes=modes, batches=(4, 8), time_limit=15.0)
    rows = bench._in_process_rows(request, torch.device("cpu"), started=0.0)
    assert order == [("eager", 4), ("fused2", 4), ("eager", 8), ("fused2", 8), ("compiled", 4)]
    assert [(r.mode, r.batch, r.aggregate_ips, r.note) for r in rows] == [
        ("compiled", 4, 100.0, ""), ("eager", 4, 100.0, ""), ("fused2", 4, 200.0, ""),
        ("compiled", 8, None, "skipped (time limit)"), ("eager", 8, 100.0, ""), ("fused2", 8, 200.0, "")]
    assert all(len(r.rounds_ips) == 1 for r in rows if r.aggregate_ips)  # past the limit: no second round


def recording(name: str, real, reads: list[str]):
    def read(self, *args, **kwargs):
        reads.append(name)
        return real(self, *args, **kwargs)
    return read


def test_a_measurement_never_reads_the_device_from_the_host(monkeypatch):
    """Review point 6 of issue 24: no epoch restarts with a host read inside a measurement, however
    many steps it runs (more steps than the pool holds batches)."""
    request = bench.BenchRequest(device="cpu", batches=(4,))
    loops = [bench.setup(request, bench.parse_mode(name), 4) for name in ("eager", "fused2")]
    reads: list[str] = []
    for method in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, method, recording(method, getattr(torch.Tensor, method), reads))
    for loop in loops:
        loop.run(2 * bench_loop.POOL_BATCHES + 1)
    monkeypatch.undo()
    assert reads == []
    assert loops[0].done == loops[1].done == 2 * bench_loop.POOL_BATCHES + 1
    assert [m.run.seed for m in loops[1].trainer.members] == [0, 1]  # the fused trainer's group of seeds 0..K-1
    assert loops[1].sums[0].shape == (2,) and loops[1].sums[2].shape[0] == 2  # per member


@pytest.mark.parametrize("argv, message", [
    (["--modes", "eager,fused0"], "--modes 'fused0' is invalid"),
    (["--modes", "turbo"], "--modes 'turbo' is invalid: expected eager, compiled, cudagraphs or fusedK"),
    (["--batch", "128,0"], "--batch '128,0' is invalid"),
    (["--processes", "two"], "--processes 'two' is invalid"),
    (["--steps", "many"], "--steps: invalid int value"),
    (["--rounds", "0"], "--rounds 0"),
    (["--modes", ""], "nothing to measure"),
    (["--model", "resnet21"], "unknown model preset 'resnet21'"),
    (["--time-limit", "0"], "--time-limit 0.0"),
])
def test_a_bad_flag_is_one_line_and_exit_2(argv, message, capsys):
    assert run_cli(bench_command.main, ["--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_the_command_line_refuses_a_bad_mode_in_one_line():
    done = subprocess.run([sys.executable, "-m", "resnet_core.bench", "--modes", "eager,fastest"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["error: --modes 'fastest' is invalid: expected eager, compiled, "
                                                "cudagraphs or fusedK (K >= 1 members, e.g. fused3)"]
