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
import time
from typing import Any

import torch

from resnet_core.bench_loop import (
    NAMED_MODES, BenchRequest, Loop, Mode, Row, failure_note, images_per_s, median_row, setup,
)
from resnet_core.bench_processes import process_rows
from resnet_core.cli import UsageError
from resnet_core.config import TrainConfig
from resnet_core.devices import device_name, resolve_amp, resolve_device

FUSED_MODE = re.compile(r"fused([1-9][0-9]*)")


def parse_mode(name: str) -> Mode:
    """A mode by name: eager, compiled, cudagraphs or fusedK; else a one-line error."""
    if name in NAMED_MODES:
        return NAMED_MODES[name]
    match = FUSED_MODE.fullmatch(name)
    if match is None:
        raise UsageError(f"--modes {name!r} is invalid: expected {', '.join(NAMED_MODES)} or fusedK "
                         "(K >= 1 members, e.g. fused3)")
    return Mode(name, members=int(match.group(1)), fused=True)


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


def _past(request: BenchRequest, started: float, reserve: float = 0.0) -> bool:
    """Whether --time-limit has passed (or would have, ``reserve`` seconds from now)."""
    return request.time_limit is not None and time.perf_counter() - started + reserve > request.time_limit


def _with_ratios(rows: list[Row]) -> list[Row]:
    """Each row's aggregate over the eager row's at the same batch size (None without one)."""
    eager = {r.batch: r.aggregate_ips for r in rows if r.mode == "eager" and r.aggregate_ips}
    return [dataclasses.replace(r, vs_eager=r.aggregate_ips / eager[r.batch])
            if r.aggregate_ips is not None and r.batch in eager else r for r in rows]


def benchmark(request: BenchRequest) -> dict[str, Any]:
    """The whole matrix: in-process rows, then each --processes count; figures and their setting."""

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
