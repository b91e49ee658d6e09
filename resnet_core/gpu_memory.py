"""GPU memory of worker processes: an optional cap on each process's share of its GPU, and one
retry of a run that ran out of memory (a neighbour on the same GPU may have held the memory for a
moment; a run that fails twice needs fewer neighbours or a smaller batch)."""

from __future__ import annotations

import dataclasses
import gc
from typing import Any, Callable

import torch

from resnet_core.store import RunRecord, write_record

OOM_ERROR = "OutOfMemoryError"  # the type name fit writes at the start of a failed record's error
# Allocation failures inside CUDA libraries come as RuntimeErrors with these words.
OOM_TEXTS = ("CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED")


def check_memory_fraction(fraction: float | None) -> None:
    """One-line ValueError for a share of a GPU's memory outside (0, 1]."""
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"--gpu-memory-fraction {fraction:g}: expected a number in (0, 1] "
                         "(each worker's share of its GPU's memory)")


def limit_memory(device: torch.device, fraction: float | None) -> None:
    """Cap this process's CUDA caching allocator on ``device`` at ``fraction`` of its memory: an
    allocation beyond it raises out of memory in this process instead of starving the others on the
    GPU (torch.cuda.set_per_process_memory_fraction). A no-op without a fraction or off CUDA."""
    if fraction is not None and device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(fraction, device)


def out_of_memory(record: RunRecord) -> bool:
    """Whether ``record`` is a run that failed because its device ran out of memory."""
    error = record.error or ""
    return record.status == "failed" and (error.startswith(OOM_ERROR) or any(text in error for text in OOM_TEXTS))


def release_cached_memory() -> None:
    """Free what only reference cycles held, then hand the CUDA allocator's unused blocks back."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def fit_retrying_oom(fit: Callable[..., RunRecord], run: Any, **kwargs: Any) -> RunRecord:
    """``fit(run, **kwargs)``; a run that ran out of memory is tried once more after the cached
    memory is released (it resumes from its last checkpoint). A second failure is recorded with an
    error line that says so and what to change."""
    return fit_all_retrying_oom(lambda: [fit(run, **kwargs)], kwargs.get("results_dir", "results"))[0]


def fit_all_retrying_oom(train: Callable[[], list[RunRecord]], results_dir: Any) -> list[RunRecord]:
    """``train()`` (one run, or a fused group's records); when any record ran out of memory, once more
    after the cached memory is released (finished runs are not trained again, the rest resume from
    their checkpoints). A run out of memory twice is recorded with a line saying what to change."""
    records = train()
    if not any(out_of_memory(r) for r in records):
        return records
    release_cached_memory()
    return [_out_of_memory_twice(r, results_dir) if out_of_memory(r) else r for r in train()]


def _out_of_memory_twice(record: RunRecord, results_dir: Any) -> RunRecord:
    first = (record.error or "").splitlines()[0] if record.error else OOM_ERROR
    record = dataclasses.replace(record, error=(
        f"out of memory twice (retried once after releasing cached memory): run fewer workers per GPU "
        f"(--workers-per-gpu) or a smaller batch; {first}"))
    write_record(results_dir, record)
    return record
