"""Train one configuration from the command line.

    resnet-train --model resnet20 --recipe paper --epochs 2 --data PATH \
        --subset 5000 --val-size 5000 --seed 0 --device auto --results results

(``python -m resnet_core.train`` is the same command; its flags: commands/parsers.py.) Layers: the
model preset and the recipe, then ``--config FILE`` (TOML of ``field = value``), then the flags,
then ``--set field=value``. The resolved config is saved in the run's record. Exit code 0 when the run completed, 1 when it diverged, failed or was
stopped, 2 for a usage error (or an unwritable results folder, checked before training), 130 on
Ctrl-C or SIGTERM (the record says "stopped", the checkpoint is kept, and the rerun resumes).
"""

from __future__ import annotations

import argparse

import torch

from resnet_core.cli import check_flags, entry
from resnet_core.commands.parsers import train_parser as build_parser
from resnet_core.config import RunConfig
from resnet_core.data import load_data
from resnet_core.devices import resolve_device
from resnet_core.engine import check_fits_data
from resnet_core.migrate import print_migration
from resnet_core.single_run import FLAG_FIELDS, dry_run_lines, layered_config, summary_line, train_claimed
from resnet_core.store import check_writable, record_path


def resolve_run_config(args: argparse.Namespace) -> RunConfig:
    """Preset and recipe, then --config, then the flags, then --set."""
    flags = {name: getattr(args, name) for name in FLAG_FIELDS}
    return layered_config(args.model, args.recipe, args.config, flags, args.set)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_flags(args)
    run = resolve_run_config(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # a command line's own process: the one place this is set
    device = resolve_device(run.device)  # an unknown or absent device: one line, in a dry run too
    # Bad data, or a model they cannot train: one line before anything is created; a dry run (on the
    # CPU) refuses what training would.
    data = load_data(run.data, "cpu" if args.dry_run else device)
    check_fits_data(run, data.num_classes, data.train_x.shape[1])
    if args.dry_run:
        print("\n".join(dry_run_lines(run, data, args.results)))
        return 0
    check_writable(args.results)  # an unwritable folder: one line now, not after an epoch of training
    print_migration(args.results, [run])  # a record or checkpoint under an older run-id schema: renamed
    record = train_claimed(run, args.results, data, progress=not args.quiet)
    print(summary_line(record, args.model, record_path(args.results, record.run_id)))
    return 0 if record.status == "completed" else 1


def console() -> None:
    """``resnet-train``. SIGTERM (kill, a batch system's time limit) stops like Ctrl-C: the "stopped"
    record keeps the time trained so far (so wall_seconds adds up over a resume), exit code 130."""
    entry(main)


if __name__ == "__main__":
    console()
