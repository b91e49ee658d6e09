"""An execution slot: what one worker sets up before it trains, for every executor alike -- a joblib
worker of :mod:`resnet_core.runner`, a Dask task of :mod:`resnet_core.dask_runner` and an Optuna study
worker of :mod:`resnet_core.study.workers`.

A slot is a device and a share of the host's cores: torch's intra-op threads (workers that together
ask for more threads than there are cores spin and stall), the compile pool's threads (every worker
process would otherwise start an Inductor pool of the whole CPU count), the slot's GPU as the
thread's current CUDA device (stray allocations such as cuDNN workspaces land on it) and, optionally,
a cap on this process's share of that GPU's memory. :func:`occupy` sets them in the calling thread
(OpenMP keeps the thread count and CUDA the current device per thread) and puts back what it changed
when it exits, so a worker run inside the caller's process (one worker, a test) leaves it as it was.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator

import torch

from resnet_core.devices import available_cpus, pin_device, resolve_device, share_compile_threads
from resnet_core.gpu_memory import limit_memory

COMPILE_THREADS_ENV = "TORCHINDUCTOR_COMPILE_THREADS"


@dataclass(frozen=True)
class Slot:
    """One worker's device and share of the host: ``threads`` torch (and compile) threads (None:
    leave them as they are) and ``memory_fraction`` of its GPU's memory (None: no cap)."""

    device: str
    threads: int | None = None
    memory_fraction: float | None = None


def worker_threads(workers: int, requested: int | None = None) -> int:
    """Torch threads of each of ``workers`` workers on one host: ``requested``, else the cores this
    process may use split evenly (at least one each)."""
    return requested if requested else max(1, available_cpus() // max(1, workers))


@contextlib.contextmanager
def occupy(slot: Slot) -> Iterator[torch.device]:
    """Set up the calling thread as ``slot`` while the block runs; yields the resolved device."""
    device = resolve_device(slot.device)
    with contextlib.ExitStack() as undo:
        if slot.threads is not None:
            undo.callback(torch.set_num_threads, torch.get_num_threads())
            undo.callback(_restore_compile_threads, os.environ.get(COMPILE_THREADS_ENV), _compile_threads())
            torch.set_num_threads(slot.threads)
            share_compile_threads(slot.threads)
        if device.type == "cuda" and device.index is not None and torch.cuda.is_initialized():
            undo.callback(torch.cuda.set_device, torch.cuda.current_device())
        pin_device(device)
        if slot.memory_fraction is not None and device.type == "cuda":
            undo.callback(torch.cuda.set_per_process_memory_fraction,
                          torch.cuda.get_per_process_memory_fraction(device), device)
        limit_memory(device, slot.memory_fraction)
        yield device


def _compile_threads() -> int | None:
    """Inductor's compile pool size, when its config is imported already."""
    config = sys.modules.get("torch._inductor.config")
    return None if config is None else config.compile_threads


def _restore_compile_threads(env: str | None, threads: int | None) -> None:
    if env is None:
        os.environ.pop(COMPILE_THREADS_ENV, None)
    else:
        os.environ[COMPILE_THREADS_ENV] = env
    config = sys.modules.get("torch._inductor.config")
    if config is not None and threads is not None:
        config.compile_threads = threads
