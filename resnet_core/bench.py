"""Training throughput of the engine's step: modes x batch sizes, side by side in one process.

``python -m resnet_core.bench`` is the command (resnet_core/commands/bench.py); its ``--help``
(the text in resnet_core/commands/parsers.py) says what each mode measures and how: a measurement
runs --steps steps after --warmup and synchronises the device only at its two ends, rounds
alternate the rows, each figure is the median over the rounds. Performance claims come from here,
never from timed tests.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python -m resnet_core.bench`: its flags are parsed before torch is imported
    from resnet_core.commands.parsers import bench

    bench()

import dataclasses
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from resnet_core.cli import UsageError
from resnet_core.config import DataConfig, RunConfig, TrainConfig
from resnet_core.devices import device_name, resolve_amp, resolve_device, sync
from resnet_core.engine import (
    GRAD_NORM_EVERY, Trainer, _random_bundle, _sampled_grad_norms, apply_schedule, make_trainer, train_step,
)
from resnet_core.fused_fit import GroupTrainer, _sampled_member_grad_norms, group_step, make_group_trainer
from resnet_core.models import resolve_model

POOL_BATCHES = 8  # device-resident batches a measurement cycles through (each member its own order)
FUSED_MODE = re.compile(r"fused([1-9][0-9]*)")


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


def parse_mode(name: str) -> Mode:
    """A mode by name: eager, compiled, cudagraphs or fusedK; else a one-line error."""
    if name in NAMED_MODES:
        return NAMED_MODES[name]
    match = FUSED_MODE.fullmatch(name)
    if match is None:
        raise UsageError(f"--modes {name!r} is invalid: expected {', '.join(NAMED_MODES)} or fusedK "
                         "(K >= 1 members, e.g. fused3)")
    return Mode(name, members=int(match.group(1)), fused=True)


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


# ------------------------------------------------------------------------------ one setup

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


# ---------------------------------------------------------------------------- the matrix

def _in_process_rows(request: BenchRequest, device: torch.device, started: float) -> list[Row]:
    """Every (batch, mode) row measured in this process, rounds alternating over the rows."""
    loops, notes = _set_up(request, device, started)
    rates: dict[tuple[int, Mode], list[float]] = {key: [] for key in loops}
    for round_index in range(request.rounds):
        if round_index and _past(request, started):
            break
        for key, loop in loops.items():
            rates[key].append(images_per_s(loop, request.steps, key[1].members))
    return [median_row(mode.name, batch, mode.members, rates.get((batch, mode)), notes.get((batch, mode), ""))
            for batch in request.batches for mode in request.modes]


def _set_up(request: BenchRequest, device: torch.device, started: float) -> tuple[dict, dict[tuple[int, Mode], str]]:
    """Each row's loop, set up and warmed up, or a note saying why not. Compiled rows come last and
    a setup starts only if the longest of its kind so far (compiled or not) would end within
    --time-limit: compiling takes longest, so a tight limit leaves out compiled rows, not the rest."""
    loops: dict[tuple[int, Mode], Loop] = {}
    notes: dict[tuple[int, Mode], str] = {}
    longest = {False: 0.0, True: 0.0}
    keys = [(batch, mode) for batch in request.batches for mode in request.modes]
    for key in sorted(keys, key=lambda k: k[1].compile_mode is not None):
        compiled, began = key[1].compile_mode is not None, time.perf_counter()
        if key[1].cuda_only and device.type != "cuda":
            notes[key] = "n/a (CUDA only)"
        elif _past(request, started, reserve=longest[compiled]):
            notes[key] = "skipped (time limit)"
        else:
            try:
                loops[key] = _ready(request, key[1], key[0])
            except Exception as exc:  # noqa: BLE001 - one row fails (say out of memory), the others run
                notes[key] = failure_note(exc)
            longest[compiled] = max(longest[compiled], time.perf_counter() - began)
    return loops, notes


def _ready(request: BenchRequest, mode: Mode, batch: int) -> Loop:
    """A set-up loop after its warm-up steps (where compilation and cuDNN's search happen)."""
    loop = setup(request, mode, batch)
    if request.warmup:
        images_per_s(loop, request.warmup, mode.members)
    return loop


def failure_note(exc: BaseException) -> str:
    """A row's note for a mode that could not run: the error's first line."""
    lines = str(exc).strip().splitlines()
    return f"failed: {type(exc).__name__}" + (f": {lines[0][:200]}" if lines else "")


def _past(request: BenchRequest, started: float, reserve: float = 0.0) -> bool:
    """Whether --time-limit has passed (or would have, ``reserve`` seconds from now)."""
    return request.time_limit is not None and time.perf_counter() - started + reserve > request.time_limit


def median_row(mode: str, batch: int, k: int, rates: list[float] | None, note: str = "") -> Row:
    """A row of the median of ``rates`` (aggregate images/s per round); none: a row of ``note``."""
    if not rates:
        return Row(mode, batch, k, None, note=note)
    return Row(mode, batch, k, statistics.median(rates), rounds_ips=tuple(round(r, 1) for r in rates))


def _with_ratios(rows: list[Row]) -> list[Row]:
    """Each row's aggregate over the eager row's at the same batch size (None without one)."""
    eager = {r.batch: r.aggregate_ips for r in rows if r.mode == "eager" and r.aggregate_ips}
    return [dataclasses.replace(r, vs_eager=r.aggregate_ips / eager[r.batch])
            if r.aggregate_ips is not None and r.batch in eager else r for r in rows]


def benchmark(request: BenchRequest) -> dict[str, Any]:
    """The whole matrix: in-process rows, then each --processes count; figures and their setting."""
    from resnet_core.bench_processes import process_rows  # spawns workers that import this module

    started = time.perf_counter()
    device = resolve_device(request.device)
    rows = _in_process_rows(request, device, started)
    for count in request.processes:
        rows += process_rows(request, count, skip=_past(request, started))
    amp = resolve_amp("auto", device)
    return {
        "model": request.model, "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "amp": str(amp).replace("torch.", "") if amp else "fp32", "channels_last": TrainConfig().channels_last,
        "threads": torch.get_num_threads(), "steps": request.steps, "rounds": request.rounds,
        "warmup": request.warmup, "rows": [r.as_dict() for r in _with_ratios(rows)],
    }


# ----------------------------------------------------------------------------- the output

def _number(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows (``benchmark()["rows"]``) as a markdown table; K is the runs one measurement trains
    (fused members, or worker processes)."""
    lines = ["| mode | batch | K | images/s per run | aggregate images/s | vs eager |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        aggregate = _number(r["aggregate_ips"]) if r["aggregate_ips"] is not None else r["note"] or "n/a"
        lines.append(f"| {r['mode']} | {r['batch']} | {r['k']} | {_number(r['per_run_ips'])} | {aggregate} "
                     f"| {_number(r['vs_eager'], 2)} |")
    return "\n".join(lines)


def heading(result: dict[str, Any]) -> str:
    return (f"{result['model']} on {result['device_name']} ({result['amp']}, channels_last={result['channels_last']}, "
            f"{result['threads']} threads, torch {result['torch']}; median of {result['rounds']} rounds of "
            f"{result['steps']} steps)")
