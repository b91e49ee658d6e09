"""Which device and precision a run uses, and how parallel workers are spread over GPUs."""

from __future__ import annotations

import functools

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; an unavailable device is a ValueError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} is not available here: no CUDA device; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={name!r} is not available: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX (bf16 autocast is fast there, slow elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` = auto | bf16 | off on ``device`` (None: full fp32).

    ``auto`` uses bf16 on CUDA devices that support it and on CPUs with native bf16 units.
    """
    if mode == "off":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = cpu_has_native_bf16() or mode == "bf16"
    else:
        supported = False
    if mode == "bf16" and not supported:
        raise ValueError(f"amp='bf16' is not supported on {device}: use amp=auto or amp=off")
    return torch.bfloat16 if supported else None


def device_name(device: torch.device) -> str:
    """Human-readable name of the device for provenance ("NVIDIA H200", "cpu (x86_64, 2 cores)")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os
    import platform

    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def worker_devices(n_workers: int, requested: str = "auto", workers_per_gpu: int = 1) -> list[str]:
    """The device string for each of ``n_workers`` worker processes.

    With several GPUs and ``requested`` auto/cuda, workers are spread round-robin over the GPUs,
    at most ``workers_per_gpu`` per GPU; ``n_workers`` of 0 means "one per GPU slot" (or 1 on CPU).
    """
    gpus = torch.cuda.device_count() if requested in ("auto", "cuda") else 0
    if gpus == 0:
        return [requested] * max(1, n_workers)
    slots = gpus * max(1, workers_per_gpu)
    count = n_workers if n_workers > 0 else slots
    return [f"cuda:{i % gpus}" for i in range(count)]
