"""The benchmark's measured loops (``python -m resnet_core.bench``): the modes, what to measure, a
row of the table, and a ready-to-time loop of the engine's step (or a fused group's) with its rate.
The in-process matrix (resnet_core/bench.py) and the worker processes of ``--processes``
(resnet_core/bench_processes.py) both time these loops.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from resnet_core.config import DataConfig, RunConfig, TrainConfig
from resnet_core.devices import sync
from resnet_core.engine import (
    GRAD_NORM_EVERY, Trainer, _random_bundle, _sampled_grad_norms, apply_schedule, make_trainer, train_step,
)
from resnet_core.fused_fit import GroupTrainer, _sampled_member_grad_norms, group_step, make_group_trainer
from resnet_core.models import resolve_model

POOL_BATCHES = 8  # device-resident batches a measurement cycles through (each member its own order)


@dataclass(frozen=True)
class Mode:
    """One way to train a step: ``members`` runs per step (K), ``compile_mode`` None for eager."""

    name: str
    members: int = 1
    compile_mode: str | None = None
    fused: bool = False

    @property
    def cuda_only(self) -> bool:
        return self.compile_mode == "reduce-overhead"  # CUDA graphs


NAMED_MODES = {m.name: m for m in (Mode("eager"), Mode("compiled", compile_mode="default"),
                                     Mode("cudagraphs", compile_mode="reduce-overhead"))}


@dataclass(frozen=True)
class BenchRequest:
    """What to measure: one model on one device, ``modes`` x ``batches``, then ``processes``."""

    model: str = "resnet20"
    device: str = "auto"
    modes: tuple[Mode, ...] = ()
    batches: tuple[int, ...] = (128, 512)
    processes: tuple[int, ...] = ()
    steps: int = 20
    rounds: int = 3
    warmup: int = 5
    time_limit: float | None = None  # seconds: no setup that would end after it, no round after the first

    def run_config(self, batch: int) -> RunConfig:
        train = TrainConfig(epochs=1, batch_size=batch)  # the engine's defaults: channels_last, amp auto
        return RunConfig(model=resolve_model(self.model), train=train, data=DataConfig(source="synthetic"),
                         device=self.device)


@dataclass(frozen=True)
class Row:
    """One line of the table; ``aggregate_ips`` None when the mode could not run (``note`` says why)."""

    mode: str
    batch: int
    k: int
    aggregate_ips: float | None
    vs_eager: float | None = None
    note: str = ""
    rounds_ips: tuple[float, ...] = ()

    @property
    def per_run_ips(self) -> float | None:
        return None if self.aggregate_ips is None else self.aggregate_ips / self.k

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "per_run_ips": self.per_run_ips}


@dataclass
class Loop:
    """A trainer's steps over device-resident batches in a fixed random order, as the epoch loop
    runs them (schedule, step, on-device sums, sampled gradient norms) but never reading the device
    from the host: the next batch's indices are a slice of an order drawn once."""

    trainer: Trainer | GroupTrainer
    step: Callable[[Any, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (trainer, indices) -> loss, correct
    grad_norms: Callable[[dict], torch.Tensor]
    order: torch.Tensor  # (pool,) indices, or (K, pool) for a fused group
    mark_cudagraph_step: bool = False
    done: int = 0
    sums: list = dataclasses.field(default_factory=lambda: [0, 0, 0])  # loss, correct, gradient norms

    def run(self, n: int) -> None:
        t, batch = self.trainer, self.trainer.run.train.batch_size
        slots = self.order.shape[-1] // batch
        for _ in range(n):
            t.iteration = self.done % t.budget.total_iterations
            apply_schedule(t)
            if self.mark_cudagraph_step:  # the graphs' outputs of the last step may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            loss, correct = self.step(t, self.order[..., (self.done % slots) * batch:(self.done % slots + 1) * batch])
            self.sums[0], self.sums[1] = self.sums[0] + loss, self.sums[1] + correct
            if self.done % GRAD_NORM_EVERY == 0:
                self.sums[2] = self.sums[2] + self.grad_norms(t.stages)
            self.done += 1


def _engine_step(trainer: Trainer, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return train_step(trainer, trainer.data.train_x[index], trainer.data.train_y[index])


def _group_step(trainer: GroupTrainer, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return group_step(trainer, list(index.unbind(0)))  # member k's batch: row k


def setup(request: BenchRequest, mode: Mode, batch: int) -> Loop:
    """A ready-to-time loop of ``mode`` at ``batch`` on random uint8 images on the device: the
    engine's trainer, or for fusedK the fused trainer of seeds 0..K-1 (fused_fit.make_group_trainer)."""
    run = request.run_config(batch)
    pool = batch * POOL_BATCHES
    images = torch.randint(0, 256, (pool, run.model.in_channels, 32, 32), dtype=torch.uint8)
    data = _random_bundle(images, torch.randint(0, 10, (pool,)), 10)
    if mode.fused:
        trainer = make_group_trainer([dataclasses.replace(run, seed=k) for k in range(mode.members)], data)
        generator = trainer.members[0].generator
    else:
        trainer = make_trainer(run, data)
        generator = trainer.generator
    if mode.compile_mode is not None:
        # What compiled.compiled_step_model builds, without its Dynamo reset on a new shape: the rows
        # of other shapes and modes keep their compiled code in this process.
        trainer.step_model = torch.compile(trainer.model, mode=mode.compile_mode, dynamic=False)
    trainer.step_model.train()
    orders = torch.stack([torch.randperm(pool, generator=generator, device=trainer.device) for _ in range(mode.members)])
    return Loop(trainer, _group_step if mode.fused else _engine_step,
                _sampled_member_grad_norms if mode.fused else _sampled_grad_norms,
                orders if mode.fused else orders[0], mark_cudagraph_step=mode.cuda_only)


def images_per_s(loop: Loop, steps: int, members: int) -> float:
    """Aggregate training images/s of ``steps`` steps of ``loop``, synchronised at both ends."""
    device = loop.trainer.device
    sync(device)
    start = time.perf_counter()
    loop.run(steps)
    sync(device)
    return steps * loop.trainer.run.train.batch_size * members / (time.perf_counter() - start)


def failure_note(exc: BaseException) -> str:
    """A row's note for a mode that could not run: the error's first line."""
    lines = str(exc).strip().splitlines()
    return f"failed: {type(exc).__name__}" + (f": {lines[0][:200]}" if lines else "")


def median_row(mode: str, batch: int, k: int, rates: list[float] | None, note: str = "") -> Row:
    """A row of the median of ``rates`` (aggregate images/s per round); none: a row of ``note``."""
    if not rates:
        return Row(mode, batch, k, None, note=note)
    return Row(mode, batch, k, statistics.median(rates), rounds_ips=tuple(round(r, 1) for r in rates))
