"""The execution slot every executor sets up (joblib workers, Dask tasks, study workers): threads,
compile threads, the pinned GPU and its memory cap, all given back when the slot is left."""

from __future__ import annotations

import os

import pytest
import torch

from resnet_core import runner, slots
from resnet_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from resnet_core.identity import run_id
from resnet_core.store import RunRecord, find_record, write_record
from resnet_core.study.workers import worker_jobs


@pytest.fixture
def compile_threads(monkeypatch):
    """Inductor's pool size as a worker's parent left it: 7, in the variable and the config."""
    import torch._inductor.config as inductor

    monkeypatch.setenv(slots.COMPILE_THREADS_ENV, "7")
    monkeypatch.setattr(inductor, "compile_threads", 7)
    return inductor


def other_count() -> int:
    return 1 if torch.get_num_threads() != 1 else 2


def test_a_slot_sets_its_threads_and_gives_them_back(compile_threads):
    before, target = torch.get_num_threads(), other_count()
    with slots.occupy(slots.Slot("cpu", target)) as device:
        assert device == torch.device("cpu") and torch.get_num_threads() == target
        assert os.environ[slots.COMPILE_THREADS_ENV] == str(target) and compile_threads.compile_threads == target
    assert torch.get_num_threads() == before
    assert os.environ[slots.COMPILE_THREADS_ENV] == "7" and compile_threads.compile_threads == 7


def test_a_slot_gives_its_settings_back_when_its_work_fails(compile_threads):
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), slots.occupy(slots.Slot("cpu", other_count())):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before and compile_threads.compile_threads == 7


def test_a_slot_without_threads_leaves_them_alone(compile_threads):
    before = torch.get_num_threads()
    with slots.occupy(slots.Slot("cpu")):
        assert torch.get_num_threads() == before and os.environ[slots.COMPILE_THREADS_ENV] == "7"


def test_a_slot_pins_its_gpu_caps_its_memory_and_gives_both_back(monkeypatch):
    """No GPU needed: the CUDA calls are recorded."""
    calls = []
    gpu = torch.device("cuda:1")
    monkeypatch.setattr(slots, "resolve_device", lambda name: gpu)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("device", device)))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device: calls.append(("memory", fraction, device)))
    with slots.occupy(slots.Slot("cuda:1", memory_fraction=0.5)):
        assert calls == [("device", gpu), ("memory", 0.5, gpu)]
    assert calls[2:] == [("memory", 1.0, gpu), ("device", 0)]  # given back, the last set first


def test_every_executor_splits_the_cores_with_one_function():
    assert slots.worker_threads(2, requested=3) == 3
    share = slots.worker_threads(2)
    assert runner.WorkerPool(("cpu", "cpu")).threads_each() == share
    assert {job.threads for job in worker_jobs(None, 1, ["cpu", "cpu"], None)} == {share}


def threads_fit(run: RunConfig, results_dir: str, data=None, **kw) -> RunRecord:
    """No training: a completed record naming the torch threads the run had."""
    record = RunRecord(run_id(run), "completed", {"seed": run.seed}, provenance={"threads": torch.get_num_threads()})
    write_record(results_dir, record)
    return record


def test_a_worker_in_the_callers_process_trains_in_its_slot_and_gives_the_threads_back(tmp_path):
    run = RunConfig(model=ModelConfig(depth=8), train=TrainConfig(epochs=1), data=DataConfig(source="synthetic:200"),
                    device="cpu")
    before, target = torch.get_num_threads(), other_count()
    pool = runner.WorkerPool(("cpu",), threads=target, fit=threads_fit)
    (outcome,) = runner.train_all([run], tmp_path, pool, progress=False)
    assert outcome.status == "completed" and torch.get_num_threads() == before
    assert find_record(tmp_path, outcome.run_id).provenance["threads"] == target


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_a_slot_gives_the_memory_cap_and_the_current_device_back():
    torch.cuda.init()
    last = torch.device("cuda", torch.cuda.device_count() - 1)
    before_device, before_cap = torch.cuda.current_device(), torch.cuda.get_per_process_memory_fraction(last)
    with slots.occupy(slots.Slot(str(last), 1, memory_fraction=0.25)):
        assert torch.cuda.current_device() == last.index
        assert torch.cuda.get_per_process_memory_fraction(last) == pytest.approx(0.25)
    assert torch.cuda.current_device() == before_device
    assert torch.cuda.get_per_process_memory_fraction(last) == pytest.approx(before_cap)
