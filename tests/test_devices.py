"""Devices without a GPU: worker placement, amp resolution, pinning and precision facts, against
mocked CUDA counts and capabilities (no CUDA call reaches the driver)."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from resnet_core import devices
from resnet_core.cli import run_cli
from resnet_core.devices import (
    needs_grad_scaler,
    pin_device,
    precision_facts,
    resolve_amp,
    share_compile_threads,
    worker_devices,
)


class FakeGpus:
    """CUDA devices with given compute capabilities; tracks the current device as CUDA does."""

    def __init__(self, *capabilities: tuple[int, int]):
        self.capabilities = capabilities
        self.current = 0

    def install(self, monkeypatch) -> "FakeGpus":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.capabilities))
        monkeypatch.setattr(torch.cuda, "device", self.device)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", self.is_bf16_supported)
        monkeypatch.setattr(torch.cuda, "get_device_capability", self.get_device_capability)
        return self

    def _index(self, device) -> int:
        index = torch.device(device).index if device is not None else None
        return self.current if index is None else index

    @contextlib.contextmanager
    def device(self, device):
        previous, self.current = self.current, self._index(device)
        try:
            yield
        finally:
            self.current = previous

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        # torch 2.14: the CURRENT device; capability >= 8.0 is native, older GPUs emulate it
        return self.capabilities[self.current] >= (8, 0) or including_emulation

    def get_device_capability(self, device=None) -> tuple[int, int]:
        return self.capabilities[self._index(device)]


# --------------------------------------------------------------------------- worker placement

def test_workers_never_exceed_workers_per_gpu(monkeypatch):
    FakeGpus((9, 0), (9, 0)).install(monkeypatch)
    with pytest.raises(ValueError, match=r"--workers 8 is more than the 4 GPU slot\(s\)") as info:
        worker_devices(8, "auto", 2)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"--workers 3 is more than the 2 GPU slot\(s\)"):
        worker_devices(3, "auto", 1)
    assert worker_devices(4, "auto", 2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_devices(0, "cuda", 2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]  # 0: one per slot
    assert worker_devices(2, "auto", 1) == ["cuda:0", "cuda:1"]


def test_an_explicit_gpu_is_capped_too(monkeypatch):
    FakeGpus((9, 0), (9, 0)).install(monkeypatch)
    assert worker_devices(2, "cuda:1", 2) == ["cuda:1", "cuda:1"]
    with pytest.raises(ValueError, match="more than the 1 GPU slot"):
        worker_devices(2, "cuda:1", 1)


def test_without_gpus_every_worker_gets_the_request(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert worker_devices(3, "auto", 1) == ["auto"] * 3
    assert worker_devices(0, "cpu", 1) == ["cpu"]
    with pytest.raises(ValueError, match="device='cuda:x' is invalid"):
        worker_devices(1, "cuda:x", 1)


def test_study_cli_refuses_more_workers_than_slots_in_one_line(monkeypatch, tmp_path, capsys):
    import sys
    from pathlib import Path

    from resnet_core.commands import study as run_driver  # resnet-study

    FakeGpus((9, 0), (9, 0)).install(monkeypatch)
    code = run_cli(run_driver.main, ["--trials", "1", "--workers", "3", "--workers-per-gpu", "1",
                                     "--data", "synthetic", "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "more than the 2 GPU slot(s)" in err
    assert not (tmp_path / "runs").exists()


def test_the_grid_runner_plans_with_the_same_cap(monkeypatch):
    from resnet_core.runner import plan_devices

    FakeGpus((9, 0), (9, 0)).install(monkeypatch)
    assert plan_devices(4, "cuda", 2) == ("cuda:0", "cuda:1", "cuda:0", "cuda:1")
    with pytest.raises(ValueError, match="GPU slot"):
        plan_devices(5, "cuda", 2)


# --------------------------------------------------------------------------------- precision

def test_auto_amp_is_bf16_only_where_the_runs_gpu_has_it_natively(monkeypatch):
    gpus = FakeGpus((9, 0), (7, 5)).install(monkeypatch)  # an H200 (current) and a T4
    assert resolve_amp("auto", torch.device("cuda:0")) == torch.bfloat16
    assert resolve_amp("auto", torch.device("cuda:1")) == torch.float16  # not the current device's answer
    assert gpus.current == 0  # asking did not move the process to another GPU
    assert resolve_amp("off", torch.device("cuda:1")) is None
    assert resolve_amp("bf16", torch.device("cuda:1")) == torch.bfloat16  # asked for: emulated is allowed


def test_auto_amp_on_a_pre_ampere_gpu_is_fp16_with_a_grad_scaler(monkeypatch):
    FakeGpus((7, 0)).install(monkeypatch)  # a V100: bf16 only emulated
    dtype = resolve_amp("auto", torch.device("cuda"))
    assert dtype == torch.float16 and needs_grad_scaler(dtype)
    assert not needs_grad_scaler(torch.bfloat16) and not needs_grad_scaler(None)


def test_amp_on_the_cpu_is_unchanged(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_amp("bf16", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert resolve_amp("auto", torch.device("cpu")) == torch.bfloat16
    assert resolve_amp("auto", torch.device("mps")) is None
    with pytest.raises(ValueError, match="amp='bf16' is not supported on mps"):
        resolve_amp("bf16", torch.device("mps"))


def test_precision_facts_state_tf32_and_cudnn_benchmark(monkeypatch):
    FakeGpus((8, 0), (7, 5)).install(monkeypatch)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    devices.configure_backends(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    devices.configure_backends(torch.device("cuda:0"))
    ampere = precision_facts(torch.device("cuda:0"), None)
    # PyTorch's defaults: cuDNN convolutions may use TF32, matmuls may not.
    assert ampere == {"amp": "fp32", "grad_scaler": False, "tf32_conv": True, "tf32_matmul": False,
                      "cudnn_benchmark": True}
    turing = precision_facts(torch.device("cuda:1"), torch.float16)
    assert turing == {"amp": "float16", "grad_scaler": True, "tf32_conv": False, "tf32_matmul": False,
                      "cudnn_benchmark": True}
    cpu = precision_facts(torch.device("cpu"), torch.bfloat16)
    assert cpu == {"amp": "bfloat16", "grad_scaler": False, "tf32_conv": False, "tf32_matmul": False,
                   "cudnn_benchmark": False}


# ------------------------------------------------------------------------- pinning, compiling

def test_pin_device_sets_only_indexed_cuda_devices(monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
    pin_device(torch.device("cuda:1"))
    pin_device(torch.device("cuda"))
    pin_device(torch.device("cpu"))
    assert pinned == [torch.device("cuda:1")]


def test_compile_threads_are_shared_among_workers(monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    monkeypatch.setattr(inductor, "compile_threads", inductor.compile_threads)  # restored after the test
    share_compile_threads(3)
    assert os.environ["TORCHINDUCTOR_COMPILE_THREADS"] == "3" and inductor.compile_threads == 3


def test_the_host_sync_interval_is_a_default_per_device_type_that_the_run_can_override():
    cpu, cuda = torch.device("cpu"), torch.device("cuda:1")  # no CUDA call: only the device's type is read
    assert devices.resolve_sync_every(None, cpu) == 20  # the progress bar's loss through a slow CPU epoch
    assert devices.resolve_sync_every(None, cuda) == 0  # no host sync inside a GPU epoch
    assert devices.resolve_sync_every(5, cuda) == 5 and devices.resolve_sync_every(0, cpu) == 0
    with pytest.raises(ValueError, match="device meta has no step defaults: expected a device type of cpu, cuda, mps"):
        devices.step_defaults(torch.device("meta"))
