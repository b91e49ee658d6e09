"""Which device and precision a run uses, and how parallel workers are spread over GPUs."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch

from resnet_core.validation import DEVICE_PATTERN, DEVICES_ALLOWED


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; a malformed or unavailable device is a
    one-line ValueError (torch would raise a RuntimeError only when the first tensor moves)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name) if re.fullmatch(DEVICE_PATTERN, str(name)) else None
    except RuntimeError:  # "cuda:00"
        device = None
    if device is None:
        raise ValueError(f"device={name!r} is invalid: {DEVICES_ALLOWED}")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device={name!r} is not available here: this torch has no usable Apple GPU (MPS); "
                         "use --device cpu or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} is not available here: no CUDA device; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={name!r} is not available: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pin_device(device: torch.device) -> None:
    """Make an indexed CUDA device the process's current one (a no-op elsewhere).

    Work that names no device (cuDNN workspaces, ``torch.cuda.get_rng_state()``, an unindexed
    ``cuda`` device) lands on the current device, which is GPU 0 until set. The current device is
    per host thread (CUDA runtime docs, cudaSetDevice), so call this in the thread that trains.
    """
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously): a timer read after this
    measures the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def available_cpus() -> int:
    """Cores this process may run on: its CPU affinity (a SLURM job's or taskset's share), not the
    whole machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ----------------------------------------------------------------------- per-device-type defaults

@dataclass(frozen=True)
class StepDefaults:
    """How a device type runs the training step where the run's config leaves it open.

    ``sync_every``: steps between reads of the running loss to the host (the finiteness check and
    the progress bar's loss); 0 reads it at the epoch's end only (``TrainConfig.sync_every``).
    """

    sync_every: int


# Why each value: a CPU executes each op before the next Python line, so a host read waits for
# nothing and 20 steps keep the progress bar's loss current through a slow epoch (issue 24's
# closing note measures the CPU step). A CUDA read drains the launch queue, which a launch-bound
# small net feels at every read: 0 keeps the queue full for the whole epoch. The CUDA value is not
# measured on this machine; scripts/gpu_check.sh measures it. MPS also runs asynchronously but is
# unmeasured, so it keeps the CPU's value. torch.compile's mode has no per-device default:
# "default" everywhere until the GPU check measures "reduce-overhead" (COMPILE_MODES).
STEP_DEFAULTS = {"cpu": StepDefaults(sync_every=20), "cuda": StepDefaults(sync_every=0),
                 "mps": StepDefaults(sync_every=20)}

# torch.compile's modes (torch.compile docs): "default" compiles Inductor kernels; "reduce-overhead"
# also replays the step as CUDA graphs (one launch instead of one per kernel; CUDA only, more memory);
# "max-autotune" also times alternative kernels while compiling (longer compiles).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def step_defaults(device: torch.device) -> StepDefaults:
    """The step defaults of ``device``'s type; a type without an entry is a one-line ValueError."""
    if device.type not in STEP_DEFAULTS:
        raise ValueError(f"device {device} has no step defaults: expected a device type of {', '.join(STEP_DEFAULTS)}")
    return STEP_DEFAULTS[device.type]


def resolve_sync_every(setting: int | None, device: torch.device) -> int:
    """Steps between host reads of the running loss: the run's ``sync_every``, else the device's default."""
    return setting if setting is not None else step_defaults(device).sync_every


# ------------------------------------------------------------------------------- precision

@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX (bf16 autocast is fast there, slow elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Native bf16 on ``device`` itself (Ampere, compute capability 8.0, and later).

    ``torch.cuda.is_bf16_supported()`` answers for the *current* device, and by default also
    counts bf16 that is merely emulated (torch 2.14 source: ``including_emulation=True``): on a
    T4 or V100 that is slow bf16 instead of fp16 with a loss scaler. So ask for native support
    with the run's device made current for the question.
    """
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` = auto | bf16 | off on ``device`` (None: full fp32).

    ``auto``: bf16 where the device has native bf16 units (CUDA from Ampere on; CPUs with
    AVX512-BF16 or AMX); fp16 (trained with a ``torch.amp.GradScaler``) on older CUDA GPUs; fp32
    on other CPUs and devices. ``bf16`` is honoured wherever torch can run it (emulated too).
    """
    if mode == "off":
        return None
    if device.type == "cuda":
        return _cuda_amp(mode, device)
    supported = device.type == "cpu" and (cpu_has_native_bf16() or mode == "bf16")
    if mode == "bf16" and not supported:
        raise ValueError(f"amp='bf16' is not supported on {device}: use amp=auto or amp=off")
    return torch.bfloat16 if supported else None


def _cuda_amp(mode: str, device: torch.device) -> torch.dtype:
    if cuda_has_native_bf16(device):
        return torch.bfloat16
    if mode == "bf16":
        with torch.cuda.device(device):
            if torch.cuda.is_bf16_supported(including_emulation=True):
                return torch.bfloat16
        raise ValueError(f"amp='bf16' is not supported on {device}: use amp=auto or amp=off")
    # fp16 has 5 exponent bits: small gradients underflow unless the loss is scaled (PyTorch AMP
    # docs, "Gradient Scaling"). The engine pairs this dtype with a GradScaler.
    return torch.float16


def needs_grad_scaler(amp_dtype: torch.dtype | None) -> bool:
    """fp16 autocast needs loss scaling; bf16 has fp32's exponent range and does not."""
    return amp_dtype == torch.float16


def configure_backends(device: torch.device) -> None:
    """Backend switches for a run on ``device``.

    cuDNN benchmark mode times the convolution algorithms for each new input shape once and keeps
    the fastest; a run's shapes are fixed (every training batch is full: the last partial batch is
    dropped), so the search pays off (PyTorch performance tuning guide, "enable cuDNN auto-tuner").
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def process_state_restored() -> Iterator[None]:
    """Give the caller back the process-wide state a run sets: the global random generators it seeds
    (torch's CPU generator; CUDA's, where CUDA was initialised before) and cuDNN's benchmark switch
    (:func:`configure_backends`). A run seeds them itself, so its numbers do not depend on the state
    it found, and a notebook's or a caller's own random draws do not depend on the runs in between.
    Also a decorator: ``fit`` and ``fit_group`` are wrapped in it."""
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    benchmark = torch.backends.cudnn.benchmark
    try:
        with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
            yield
    finally:
        torch.backends.cudnn.benchmark = benchmark


def _fp32_precision(*levels: Any) -> str:
    """The first explicit setting along a chain of ``fp32_precision`` levels ("none" inherits)."""
    for level in levels:
        value = getattr(level, "fp32_precision", "none")
        if value != "none":
            return value
    return "ieee"


def tf32_in_effect(device: torch.device | None) -> dict[str, bool]:
    """Whether fp32 convolutions and matmuls of a run on ``device`` run in TF32.

    TF32 exists on CUDA devices of compute capability 8.0 and later. PyTorch's defaults: cuDNN
    convolutions may use TF32, matmuls may not (CUDA semantics notes, "TensorFloat-32 (TF32) on
    Ampere (and later) devices"). Read through the ``fp32_precision`` API: the legacy
    ``allow_tf32`` flags raise once the new API has been used.
    """
    if device is None or device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        return {"conv": False, "matmul": False}
    backends = torch.backends
    conv = _fp32_precision(getattr(backends.cudnn, "conv", None), backends.cudnn, backends)
    matmul = _fp32_precision(backends.cuda.matmul, backends)
    return {"conv": conv == "tf32", "matmul": matmul == "tf32"}


def precision_facts(device: torch.device | None, amp_dtype: torch.dtype | None) -> dict[str, Any]:
    """What provenance says about the arithmetic of a run: autocast dtype, loss scaling, TF32, cuDNN."""
    tf32 = tf32_in_effect(device)
    return {
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "fp32",
        "grad_scaler": needs_grad_scaler(amp_dtype),
        "tf32_conv": tf32["conv"],
        "tf32_matmul": tf32["matmul"],
        "cudnn_benchmark": bool(device is not None and device.type == "cuda" and torch.backends.cudnn.benchmark),
    }


def device_name(device: torch.device) -> str:
    """Human-readable name of the device for provenance ("NVIDIA H200", "cpu (x86_64, 2 cores)")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {available_cpus()} cores)"


# --------------------------------------------------------------------------------- workers

def requested_gpus(requested: str) -> list[int]:
    """The GPU indices a device request covers: every GPU for auto/cuda, one for cuda:N."""
    if requested in ("auto", "cuda"):
        return list(range(torch.cuda.device_count()))
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"device={requested!r} is invalid: {DEVICES_ALLOWED}") from None
    return [device.index] if device.type == "cuda" and device.index is not None else []


def worker_devices(n_workers: int, requested: str = "auto", workers_per_gpu: int = 1) -> list[str]:
    """The device string for each of ``n_workers`` worker processes.

    With GPUs (``requested`` auto, cuda or cuda:N), workers are spread round-robin over the
    GPUs the request covers, and a GPU never gets more than ``workers_per_gpu`` of them: more
    workers than GPU slots is a one-line ValueError. ``n_workers`` of 0 means one per GPU slot
    (or 1 without GPUs).
    """
    gpus = requested_gpus(requested)
    if not gpus:
        return [requested] * max(1, n_workers)
    slots = len(gpus) * workers_per_gpu
    count = n_workers if n_workers > 0 else slots
    if count > slots:
        raise ValueError(f"--workers {count} is more than the {slots} GPU slot(s) here ({len(gpus)} GPU(s) x "
                         f"--workers-per-gpu {workers_per_gpu}): lower --workers or raise --workers-per-gpu")
    return [f"cuda:{gpus[i % len(gpus)]}" for i in range(count)]


def parallel_throughput(devices: Sequence[str], concurrency: Mapping[int, float] | None = None) -> tuple[float, str]:
    """(runs' worth of training the workers on ``devices`` do at once, how GPUs shared were counted).

    CPU workers each train on their own share of the cores: one each. Workers sharing one GPU take
    turns on it unless CUDA MPS is running (NVIDIA, Multi-Process Service docs: without it, kernels
    of different processes do not run concurrently), so n of them count as one GPU's throughput
    times ``concurrency[n]``: the measured aggregate images/s of n processes on one GPU over one
    process's (the benchmark's ``--processes``), 1 where n was not measured. ``""``: no GPU.
    """
    kinds = [_device_kind(d) for d in devices]
    gpus = Counter(d for d, kind in zip(devices, kinds) if kind != "cpu")
    factors = {n: float((concurrency or {}).get(n, 1.0)) for n in set(gpus.values())}
    count = kinds.count("cpu") + sum(factors[n] for n in gpus.values())
    if not gpus:
        return float(count), ""
    workers, on = _count(len(devices), "worker"), _count(len(gpus), "GPU")
    if max(gpus.values()) == 1:
        return count, f"{workers} on {on}, one per GPU"
    measured = sorted(n for n in factors if n > 1 and n in (concurrency or {}))
    why = (", ".join(f"{n} processes on one GPU measured at {factors[n]:.2f}x one process" for n in measured)
           if measured else "workers sharing a GPU take turns; no measurement of concurrent processes")
    return count, f"shared GPUs: {workers} on {on} counted as {count:g} GPU{'s' * (count != 1)} at full speed ({why})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _device_kind(device: str) -> str:
    return resolve_device(device).type if device == "auto" else torch.device(device).type


def share_compile_threads(threads: int) -> None:
    """Give this worker process its share of the cores for ``torch.compile``'s Inductor pool.

    Inductor compiles in a pool sized from ``TORCHINDUCTOR_COMPILE_THREADS`` (default: the CPU
    count), read when ``torch._inductor.config`` is first imported; every worker process on a
    host would start a full-size pool of its own. Set both the variable (for a later import) and
    the config (if already imported).
    """
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = str(max(1, threads))
    config = sys.modules.get("torch._inductor.config")
    if config is not None:
        config.compile_threads = max(1, threads)
