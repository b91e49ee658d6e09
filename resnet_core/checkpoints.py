"""Checkpoints of a training run: model, optimizer, RNG states, iteration and history after an
epoch (every ``checkpoint_every``), written atomically; a run resumed from one continues exactly
(or says why it cannot)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from resnet_core.config import RunConfig
from resnet_core.identity import run_id
from resnet_core.store import atomic_write_bytes


class Checkpointed(Protocol):
    """What this module reads and writes of a training run: an ``engine.Trainer``, or a fused group's
    ``fused_fit.MemberView`` (named here, not imported: both modules import this one)."""

    run: RunConfig
    device: torch.device
    model: Any  # state_dict() / load_state_dict()
    optimizer: Any
    generator: torch.Generator
    scaler: torch.amp.GradScaler | None
    iteration: int
    history: list[dict[str, Any]]
    resumed_from: str | None


def _rng_state(trainer: Checkpointed) -> dict[str, Any]:
    """The RNG states (CPU byte tensors, as ``get_state`` returns them) and the device type whose
    generator wrote them: generator states of different device types are not interchangeable."""
    state: dict[str, Any] = {"device_type": trainer.device.type, "torch": torch.get_rng_state(),
                             "generator": trainer.generator.get_state()}
    if trainer.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(trainer.device)
    return state


def save_checkpoint(trainer: Checkpointed, path: Path) -> None:
    """Model, optimizer, RNG states, iteration and history after an epoch, written atomically."""
    buffer = io.BytesIO()
    torch.save(
        {
            "run_id": run_id(trainer.run),
            "iteration": trainer.iteration,
            "history": trainer.history,
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "rng": _rng_state(trainer),
            "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def checkpoint_if_due(trainer: Checkpointed, path: Path, due: bool) -> bool:
    """Save the checkpoint when it is ``due`` and the run keeps checkpoints; whether it was saved.

    The engine saves every ``checkpoint_every`` epochs (TrainConfig), not after each: a checkpoint
    is an fsynced write, which a GPU epoch of well under a second feels. A kill loses the epochs
    trained since the last one.
    """
    if due and trainer.run.train.checkpoint:
        save_checkpoint(trainer, path)
        return True
    return False


def load_checkpoint(trainer: Checkpointed, path: Path) -> bool:
    """Restore a checkpoint (``weights_only=True``); a corrupt or foreign one is ignored with a warning.

    Everything is loaded onto the CPU, whichever device wrote it: ``load_state_dict`` copies
    weights and optimizer state onto the parameters' device, and ``Generator.set_state`` takes
    only CPU byte tensors (loading onto a GPU made every CUDA resume fail with "RNG state must be
    a torch.ByteTensor").
    """
    if not path.exists():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("run_id") != run_id(trainer.run):
            raise ValueError("it belongs to another run")
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.scaler is not None and state.get("scaler"):
            trainer.scaler.load_state_dict(state["scaler"])
        trainer.iteration = int(state["iteration"])
        trainer.history = list(state["history"])
        _restore_rng(trainer, state["rng"])
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means "start again"
        warnings.warn(f"checkpoint {path} is unusable ({exc}); training this run from scratch", stacklevel=2)
        return False
    return True


def _restore_rng(trainer: Checkpointed, rng: dict[str, Any]) -> None:
    """Continue the checkpoint's random streams, or reseed when it comes from another device type.

    A generator's state is device-specific (a CPU Mersenne Twister state is 5056 bytes, a CUDA
    Philox state 16) and ``set_state`` rejects the other kind. A run resumed on another device
    type (a Dask rerun elsewhere, a CPU checkpoint on a GPU) keeps its weights and goes on with a
    generator reseeded from (seed, iteration): reproducible, but its later shuffles and crops
    differ from an uninterrupted run's, so it says so (a warning, and ``resumed_from_device``
    in the record's provenance).
    """
    torch.set_rng_state(rng["torch"].cpu())  # the CPU default generator: the same on every machine
    saved, here = _rng_device_type(trainer, rng), trainer.device.type
    if saved != here:
        trainer.generator.manual_seed(resume_seed(trainer.run.seed, trainer.iteration))
        trainer.resumed_from = saved
        warnings.warn(f"the checkpoint's RNG state comes from a {saved} device and this run resumes on a {here} "
                      f"device: generator states differ between device types, so the generator is reseeded "
                      f"from (seed, iteration {trainer.iteration}); the remaining shuffles and crops differ from "
                      "an uninterrupted run", stacklevel=3)
        return
    trainer.generator.set_state(rng["generator"].cpu())
    if here == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"].cpu(), trainer.device)


def _rng_device_type(trainer: Checkpointed, rng: dict[str, Any]) -> str:
    """The device type that wrote ``rng``; checkpoints from before it was stored tell by the size."""
    if "device_type" in rng:
        return str(rng["device_type"])
    fits = rng["generator"].numel() == trainer.generator.get_state().numel()
    return trainer.device.type if fits else "different"


def resume_seed(seed: int, iteration: int) -> int:
    """The generator seed of a run resumed at ``iteration`` on another device type."""
    return int(np.random.SeedSequence([seed, iteration]).generate_state(1)[0])
