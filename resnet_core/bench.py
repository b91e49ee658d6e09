"""Training throughput of the engine's step: modes x batch sizes, side by side in one process.

    python -m resnet_core.bench --model resnet20 --device cuda --batch 128,512 \\
        --modes eager,compiled,cudagraphs,fused1,fused3,fused8 --processes 2,4 --json bench.json

Modes (one row per batch size each):
  eager       the engine's step as a run trains it (engine.train_step): uint8 images indexed on the
              device, on-device pad-crop-flip, autocast, channels_last, the optimizer step, plus what
              the epoch loop adds per step (learning rate, loss sums on the device, the sampled
              per-stage gradient norms), at the engine's defaults for the device;
  compiled    the same with the model torch.compile'd (static shapes, as within one run);
  cudagraphs  compiled with mode "reduce-overhead" (CUDA graphs): CUDA only, "n/a" elsewhere;
  fusedK      K runs (seeds 0..K-1) trained as one fused model by the fused trainer's step
              (fused_fit.group_step: each member its own batch of --batch images, data order and
              augmentation draw): images/s per member and in aggregate (K x per member).
--processes N,...: N worker processes on the same device, each training its own model with the
eager step, timed over one shared interval (aggregate: all their images over the span from the
first start to the last end).

A measurement runs --steps steps after --warmup and synchronises the device only at its two ends:
no epoch restarts and no host reads inside it. Rounds alternate the rows so that drift in machine
load hits all alike; each figure is the median over --rounds. A mode that cannot run (out of
memory, say) is a row saying so, the others still run, and the command exits 1. Performance claims
come from here, never from timed tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from resnet_core.bench_loop import (
    NAMED_MODES, BenchRequest, Loop, Mode, Row, failure_note, images_per_s, median_row, setup,
)
from resnet_core.bench_processes import process_rows
from resnet_core.cli import UsageError, run_cli
from resnet_core.config import TrainConfig
from resnet_core.devices import device_name, resolve_amp, resolve_device
from resnet_core.models import resolve_model

DEFAULT_MODES = "eager,compiled,cudagraphs,fused1,fused3,fused8"
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


# ---------------------------------------------------------------------------- the command

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a malformed flag: one line and exit 2, as every other error here
        raise UsageError(message)


def _ints(flag: str, text: str, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < minimum:
        raise UsageError(f"{flag} {text!r} is invalid: expected comma-separated integers >= {minimum}")
    return tuple(dict.fromkeys(values))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m resnet_core.bench", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", default="resnet20", help="model preset (python -m resnet_core.models --table)")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add("--modes", default=DEFAULT_MODES, help=f"comma-separated modes (default {DEFAULT_MODES}); '' for none")
    add("--batch", default="128,512", help="comma-separated batch sizes (per run; default 128,512)")
    add("--processes", default="", help="comma-separated counts of concurrent worker processes (default none)")
    add("--steps", type=int, default=20, help="steps per measurement")
    add("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    add("--warmup", type=int, default=5, help="untimed steps per row first (compiling happens here)")
    add("--time-limit", type=float, help="seconds: no row is set up that would not be ready by then (compiled rows "
                                          "are set up last), and no round after the first starts after it")
    add("--json", type=Path, help="also write the result as JSON to this file")
    return parser


def request_from(args: argparse.Namespace) -> BenchRequest:
    modes = tuple(dict.fromkeys(parse_mode(m.strip()) for m in args.modes.split(",") if m.strip()))
    processes = _ints("--processes", args.processes, 1) if args.processes.strip() else ()
    if not modes and not processes:
        raise UsageError("nothing to measure: give --modes, --processes or both")
    if min(args.steps, args.rounds) < 1 or args.warmup < 0:
        raise UsageError(f"--steps {args.steps} / --rounds {args.rounds} / --warmup {args.warmup}: expected "
                         "--steps and --rounds >= 1 and --warmup >= 0")
    if args.time_limit is not None and not args.time_limit > 0:
        raise UsageError(f"--time-limit {args.time_limit}: expected a number of seconds > 0")
    resolve_model(args.model), resolve_device(args.device)  # one line each, before anything is built
    return BenchRequest(model=args.model, device=args.device, modes=modes, batches=_ints("--batch", args.batch, 1),
                        processes=processes, steps=args.steps, rounds=args.rounds, warmup=args.warmup,
                        time_limit=args.time_limit)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    request = request_from(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)  # an unusable place: one line now, not after
    result = benchmark(request)
    print(heading(result))
    print(markdown_table(result["rows"]))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if any(r["note"].startswith("failed") for r in result["rows"]) else 0


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(run_cli(main))
