"""Where a result came from: code version, software, hardware and data (DESIGN.md, style example 7)."""

from __future__ import annotations

import datetime as dt
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from resnet_core.devices import device_name, precision_facts

PACKAGE_DIR = Path(__file__).resolve().parent


def git_commit(path: Path = PACKAGE_DIR) -> str:
    """The commit of the code that ran, with ``-dirty`` if it had uncommitted changes; or 'unknown'."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def software_versions() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


def collect_provenance(run, device: torch.device | None, amp_dtype: torch.dtype | None, data,
                       resumed_from: str | None = None) -> dict[str, Any]:
    """Provenance of one run: code, software, device, precision and data fingerprint.

    The device is not part of a run's identity (``config.run_id``), yet precision and the random
    streams depend on it; so the record states the device type, the arithmetic (autocast dtype,
    loss scaling, TF32, cuDNN benchmark) and ``resumed_from_device``: the device type of a
    checkpoint written on another device type, whose RNG streams could not be continued.
    """
    return {
        "git_commit": git_commit(),
        **software_versions(),
        "device": str(device) if device is not None else run.device,
        "device_type": device.type if device is not None else None,
        "device_name": device_name(device) if device is not None else None,
        **precision_facts(device, amp_dtype),
        "resumed_from_device": resumed_from,
        "channels_last": run.train.channels_last,
        "threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "data_source": run.data.source,
        "data_fingerprint": getattr(data, "fingerprint", None),
        "data_description": getattr(data, "description", None),
        "train_size": len(data.train_y) if data is not None else None,
        "val_size": len(data.val_y) if data is not None else None,
        "test_size": len(data.test_y) if data is not None else None,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
