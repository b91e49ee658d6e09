"""Fit functions that studies are given through their public ``fit`` parameter (no patching).

They are top-level functions of an importable module, so a study can pickle them into spawned
worker processes (put ``tests/`` on the child's PYTHONPATH when it is a fresh interpreter).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from resnet_core.config import RunConfig, parse_assignments
from resnet_core.identity import run_id
from resnet_core.engine import fit
from resnet_core.store import RunRecord, write_record
from resnet_core.study.plan import StudyRequest

TINY_SETTINGS = ["depth=8", "widths=4,8,16", "batch_size=50", "eval_batch_size=500", "cycle_momentum=false"]


def tiny_request(results: Path, space: Path, **changes) -> StudyRequest:
    """The request ``studies/run.py`` builds from test_study's ``tiny_args`` (same study, same question)."""
    values = dict(space=str(space), data="synthetic:300", subset=200, val_size=100, epochs=2,
                  overrides=tuple(parse_assignments(TINY_SETTINGS).items()), sampler="random", pruner="median",
                  results=str(results), study_name="tiny")
    return StudyRequest(**(values | changes))


def hanging_fit(run: RunConfig, callbacks=(), **kw) -> RunRecord:
    """The real fit that trains epoch 1, reports it, then hangs until the process is killed."""
    return fit(run, list(callbacks) + [lambda metrics: time.sleep(600)], **kw)


def host_fit(run: RunConfig, callbacks=(), **kw) -> RunRecord:
    """The real fit, pausing ``TEST_EPOCH_SLEEP`` s after each epoch and hanging after epoch
    ``TEST_HANG_AFTER_EPOCH`` (when set): lets a test overlap hosts or kill one mid-trial."""
    pause, hang = float(os.environ.get("TEST_EPOCH_SLEEP", "0")), int(os.environ.get("TEST_HANG_AFTER_EPOCH", "0"))

    def slow(metrics: dict) -> None:
        time.sleep(pause)
        if hang and metrics["epoch"] >= hang:
            time.sleep(600)

    return fit(run, list(callbacks) + [slow], **kw)


def fake_fit(run: RunConfig, callbacks=(), results_dir="results", data=None, progress=False) -> RunRecord:
    """No training: two epochs whose validation error is a known function of the lr, reported to
    the callbacks as fit reports them. Returns a completed record (not written anywhere)."""
    error = fake_error(run.train.lr)
    history = [{"epoch": epoch, "val_error": error + 2 - epoch} for epoch in (1, 2)]
    for metrics in history:
        if any(callback(metrics) for callback in callbacks):
            return RunRecord(run_id(run), "stopped", {}, history[:metrics["epoch"]], stop_reason="callback")
    return RunRecord(run_id(run), "completed", {}, history, final={"val_error": error})


def fake_error(lr: float) -> float:
    return 10 + 5 * abs(math.log10(lr) + 1)  # lowest at lr = 0.1


def side_by_side_fit(run: RunConfig, callbacks=(), results_dir="results", data=None, progress=False) -> RunRecord:
    """No training: waits (up to 60 s) until two processes are inside this function, then writes a
    completed record whose provenance names its process and torch thread count. A driver that
    trains its runs one after another in one process waits out the minute."""
    import torch

    inside = Path(results_dir) / "inside"
    inside.mkdir(parents=True, exist_ok=True)
    (inside / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(inside.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    record = RunRecord(run_id(run), "completed", {"seed": run.seed}, final={"test_error": 10.0},
                       provenance={"pid": os.getpid(), "threads": torch.get_num_threads()})
    write_record(results_dir, record)
    return record
