"""``python -m resnet_core.bench``: the engine's training throughput, mode by mode (resnet_core/bench.py);
its flags and what each mode measures: commands/parsers.py."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys

from resnet_core.bench import BenchRequest, benchmark, heading, markdown_table, parse_mode
from resnet_core.cli import UsageError, run_cli
from resnet_core.commands.parsers import bench_parser as build_parser
from resnet_core.devices import resolve_device
from resnet_core.models import resolve_model


def _ints(flag: str, text: str, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < minimum:
        raise UsageError(f"{flag} {text!r} is invalid: expected comma-separated integers >= {minimum}")
    return tuple(dict.fromkeys(values))


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


def console() -> None:
    """``python -m resnet_core.bench``: errors are one line, exit code 2."""
    multiprocessing.freeze_support()
    sys.exit(run_cli(main))
