"""The benchmark's ``--processes N``: N worker processes, each training its own model with the
engine's eager step, on the same device at the same time (runs sharing a GPU, as study and grid
workers with --workers-per-gpu do). Without MPS, CUDA processes on one GPU take turns; this
measures what that costs or gains.

Each worker sets up and warms up alone, then every round starts at a barrier; a round's aggregate
is all workers' images over the span from the first start to the last end (a monotonic clock, the
same in every process).
"""

from __future__ import annotations

import multiprocessing
import queue
import time

import torch

from resnet_core.bench_loop import NAMED_MODES, BenchRequest, Row, failure_note, images_per_s, median_row, setup
from resnet_core.devices import available_cpus, sync

WAIT_SECONDS = 600  # for a worker's next result (its start includes importing torch and warming up)


def threads_per_process(count: int) -> int:
    """Threads for each of ``count`` concurrent workers: this process's cores split between them."""
    return max(1, available_cpus() // count)


def process_rows(request: BenchRequest, count: int, skip: bool = False) -> list[Row]:
    """One row per batch size for ``count`` concurrent workers (``skip``: rows saying the time limit
    left no room for them)."""
    if skip:
        return [Row("processes", batch, count, None, note="skipped (time limit)") for batch in request.batches]
    context = multiprocessing.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
    barrier, results = context.Barrier(count, timeout=WAIT_SECONDS), context.Queue()
    workers = [context.Process(target=_worker, args=(request, threads_per_process(count), barrier, results),
                               daemon=True) for _ in range(count)]
    for worker in workers:
        worker.start()
    try:
        spans = _collect(results, count * request.rounds * len(request.batches))
    except RuntimeError as exc:  # the in-process rows keep their figures
        return [Row("processes", batch, count, None, note=failure_note(exc)) for batch in request.batches]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
    return [median_row("processes", batch, count, _round_rates(spans, request, batch, count)) for batch in request.batches]


def _round_rates(spans: list[tuple], request: BenchRequest, batch: int, count: int) -> list[float]:
    rates = []
    for round_index in range(request.rounds):
        mine = [(start, end) for b, r, start, end in spans if b == batch and r == round_index]
        rates.append(count * request.steps * batch / (max(e for _, e in mine) - min(s for s, _ in mine)))
    return rates


def _collect(results, expected: int) -> list[tuple]:
    """``expected`` (batch, round, start, end) spans from the workers; a worker's error raises."""
    spans = []
    while len(spans) < expected:
        try:
            kind, *payload = results.get(timeout=WAIT_SECONDS)
        except queue.Empty:
            raise RuntimeError(f"a worker process sent nothing for {WAIT_SECONDS} s") from None
        if kind == "error":
            raise RuntimeError(f"a worker process: {payload[0]}")
        spans.append(tuple(payload))
    return spans


def _worker(request: BenchRequest, threads: int, barrier, results) -> None:
    """One worker: set up an eager loop per batch size, warm up, then time each round from the barrier."""
    try:
        torch.set_num_threads(threads)
        loops = {batch: setup(request, NAMED_MODES["eager"], batch) for batch in request.batches}
        for loop in loops.values():
            if request.warmup:
                images_per_s(loop, request.warmup, 1)
        for round_index in range(request.rounds):
            for batch, loop in loops.items():
                barrier.wait()
                start = time.monotonic()
                loop.run(request.steps)
                sync(loop.trainer.device)
                results.put(("span", batch, round_index, start, time.monotonic()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        barrier.abort()  # the other workers stop waiting
        results.put(("error", f"{type(exc).__name__}: {exc}"))
