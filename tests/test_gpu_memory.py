"""GPU memory of workers without a GPU: a run that runs out of memory (a real out-of-memory error
raised inside fit, as CUDA would) is retried once, and the memory cap flag is checked up front."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resnet_core.cli import run_cli
from resnet_core.commands import grid as grid_command
from resnet_core.commands import study as study_command
from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from resnet_core.engine import fit
from resnet_core.gpu_memory import fit_retrying_oom, out_of_memory
from resnet_core.identity import run_id
from resnet_core.runner import WorkerPool, train_all
from resnet_core.store import RunRecord, find_record

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.19 GiB"


def tiny_run() -> RunConfig:
    return RunConfig(model=ModelConfig(depth=8), data=DataConfig(source="synthetic:300", val_size=100),
                     train=TrainConfig(epochs=2, batch_size=50, eval_batch_size=500), device="cpu")


def oom_once_fit(run: RunConfig, callbacks=(), results_dir="results", **kwargs) -> RunRecord:
    """The real fit; the first time it runs in ``results_dir`` the device runs out of memory after epoch 1."""
    marker = Path(results_dir) / "out-of-memory-raised"

    def out_of_memory(metrics: dict) -> bool:
        if not marker.exists():
            marker.touch()
            raise torch.cuda.OutOfMemoryError(OOM_MESSAGE)
        return False

    return fit(run, list(callbacks) + [out_of_memory], results_dir=results_dir, **kwargs)


def test_a_run_out_of_memory_is_retried_once_and_resumes_from_its_checkpoint(tmp_path):
    (outcome,) = train_all([tiny_run()], tmp_path, WorkerPool(("cpu",), threads=1, fit=oom_once_fit), progress=False)
    assert (tmp_path / "out-of-memory-raised").exists()  # the first try did run out of memory
    assert outcome.status == "completed" and outcome.error is None
    record = find_record(tmp_path, run_id(tiny_run()))
    assert [epoch["epoch"] for epoch in record.history] == [1, 2]  # epoch 1 from the checkpoint, then epoch 2


def test_a_run_out_of_memory_twice_is_failed_with_a_line_saying_what_to_change(tmp_path):
    tries = []

    def always_out_of_memory(run, **kwargs) -> RunRecord:
        tries.append(run_id(run))
        return RunRecord(run_id(run), "failed", {}, error=f"OutOfMemoryError: {OOM_MESSAGE}\nsecond line")

    record = fit_retrying_oom(always_out_of_memory, tiny_run(), results_dir=tmp_path)
    assert len(tries) == 2 and record.status == "failed"
    assert record.error.startswith("out of memory twice (retried once after releasing cached memory): "
                                   "run fewer workers per GPU (--workers-per-gpu) or a smaller batch")
    assert "\n" not in record.error and OOM_MESSAGE in record.error
    assert find_record(tmp_path, record.run_id).error == record.error  # what the report reads


def test_allocation_failures_inside_cuda_libraries_count_as_out_of_memory():
    def failed(error: str) -> RunRecord:
        return RunRecord("r", "failed", {}, error=error)

    assert out_of_memory(failed("RuntimeError: CUDA error: out of memory\nCUDA kernel errors might be ..."))
    assert out_of_memory(failed("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate`"))
    assert not out_of_memory(failed("RuntimeError: shapes cannot be multiplied"))
    assert not out_of_memory(RunRecord("r", "diverged", {}, error="OutOfMemoryError: never mind"))


def test_other_failures_are_not_retried(tmp_path):
    tries = []

    def failing(run, **kwargs) -> RunRecord:
        tries.append(run_id(run))
        return RunRecord(run_id(run), "failed", {}, error="RuntimeError: something else")

    assert fit_retrying_oom(failing, tiny_run(), results_dir=tmp_path).error == "RuntimeError: something else"
    assert len(tries) == 1


@pytest.mark.parametrize("command, argv", [
    (grid_command, ["--grid", "degradation", "--dry-run"]),
    (study_command, ["--trials", "1", "--dry-run"]),
])
@pytest.mark.parametrize("fraction", ["0", "1.5"])
def test_a_gpu_memory_fraction_outside_0_1_is_one_line_exit_2(command, argv, fraction, tmp_path, capsys):
    code = run_cli(command.main, argv + ["--results", str(tmp_path), "--gpu-memory-fraction", fraction])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"error: --gpu-memory-fraction {fraction}: expected a number in (0, 1] "
                                 "(each worker's share of its GPU's memory)\n")

