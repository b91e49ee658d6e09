"""Where a result came from: code version, software, hardware and data (docs/DESIGN.md, "Rules of evidence")."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from resnet_core.identity import RUN_ID_SCHEMA
from resnet_core.devices import device_name, precision_facts

PACKAGE_DIR = Path(__file__).resolve().parent


def _git(path: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=5, check=True).stdout


def git_commit(path: Path = PACKAGE_DIR) -> str:
    """The commit of the code that ran, with ``-dirty`` if it had uncommitted changes; or 'unknown'."""
    state = code_state(path)
    return state["commit"] + ("-dirty" if state["dirty"] else "")


def code_state(path: Path = PACKAGE_DIR) -> dict[str, Any]:
    """``{"commit", "dirty", "diff_sha256"}`` of the code that ran: a dirty tree is named as such and
    its uncommitted diff (tracked files) is fingerprinted, so a result can be matched to the exact code."""
    try:
        commit = _git(path, "rev-parse", "HEAD").strip()
        diff = _git(path, "diff", "HEAD", "--binary")
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None, "diff_sha256": None}
    return {"commit": commit, "dirty": bool(diff), "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None}


# The modules whose code decides what a run computes (model, data, augmentation, schedule, step,
# config defaults). Their hash tells two commits apart only where training itself changed.
TRAINING_MODULES = ("augment.py", "blocks.py", "cache.py", "checkpoints.py", "config.py", "data.py", "devices.py",
                    "engine.py", "evaluation.py", "models.py", "recipes.py", "schedules.py", "splits.py")


def training_code_sha256(package_dir: Path = PACKAGE_DIR) -> str:
    """A hash of the training modules' source (``TRAINING_MODULES``): equal across commits that train alike."""
    digest = hashlib.sha256()
    for name in TRAINING_MODULES:
        digest.update(name.encode() + b"\0" + (package_dir / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def loaded_code() -> dict[str, Any]:
    """The code this process loaded: ``code_state`` plus ``training_code_sha256``, read once, when this
    module is first imported (before any run trains), so that a tree edited or committed while a long
    grid runs does not relabel its later runs with code they did not run."""
    return {**code_state(), "training_code_sha256": training_code_sha256()}


loaded_code()  # at import: the modules a run executes are imported with this one


def data_name(source: str) -> str:
    """The data as a report may name it: a dataset name as given, a directory relative to the working
    directory (an absolute path would name the machine, not the data)."""
    if source in ("cifar10", "cifar100") or source.startswith("synthetic"):
        return source
    return os.path.relpath(os.path.abspath(os.path.expanduser(source)))


def software_versions() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


def collect_provenance(run, device: torch.device | None, amp_dtype: torch.dtype | None, data,
                       resumed_from: str | None = None) -> dict[str, Any]:
    """Provenance of one run: code, software, device, precision, data fingerprint and class names.

    The device is not part of a run's identity (``identity.run_id``), yet precision and the random
    streams depend on it; so the record states the device type, the arithmetic (autocast dtype,
    loss scaling, TF32, cuDNN benchmark) and ``resumed_from_device``: the device type of a
    checkpoint written on another device type, whose RNG streams could not be continued.
    """
    code = loaded_code()
    return {
        "git_commit": code["commit"] + ("-dirty" if code["dirty"] else ""),
        "git_dirty": code["dirty"],
        "git_diff_sha256": code["diff_sha256"],
        "training_code_sha256": code["training_code_sha256"],
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
        "data_name": data_name(run.data.source),
        "data_fingerprint": getattr(data, "fingerprint", None),
        "data_description": getattr(data, "description", None),
        "data_classes": list(data.classes) if data is not None else None,  # label i is data_classes[i]
        "data_num_classes": data.num_classes if data is not None else None,
        "train_size": len(data.train_y) if data is not None else None,
        "val_size": len(data.val_y) if data is not None else None,
        "test_size": len(data.test_y) if data is not None else None,
        "run_id_schema": RUN_ID_SCHEMA,  # how run_id was computed (resnet_core/migrate.py reads it)
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
