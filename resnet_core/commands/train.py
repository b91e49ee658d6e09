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
import json
import tomllib
from pathlib import Path
from typing import Any

import torch

from resnet_core.cli import check_flags, entry
from resnet_core.commands.parsers import train_parser as build_parser
from resnet_core.config import (
    DataConfig, RunConfig, apply_overrides, default_data_source, parse_assignments, to_dict,
)
from resnet_core.identity import run_id
from resnet_core.recipes import recipe
from resnet_core.data import DataBundle, load_data
from resnet_core.devices import resolve_device
from resnet_core.engine import check_fits_data, fit
from resnet_core.migrate import print_migration
from resnet_core.models import resolve_model

from resnet_core.store import check_writable, claim_holder, claim_run, record_path

# flag name -> config field, for the flags that are shortcuts of --set
FLAG_FIELDS = {
    "epochs": "train.epochs",
    "iterations": "train.iterations",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "optimizer": "train.optimizer",
    "schedule": "train.schedule",
    "weight_decay": "train.weight_decay",
    "data": "data.source",
    "subset": "data.subset",
    "val_size": "data.val_size",
    "seed": "seed",
    "device": "device",
}


def read_config_file(path: Path) -> dict[str, Any]:
    """A TOML file of ``field = value`` (or ``[model]``/``[train]``/``[data]`` tables); data only."""
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {path}: malformed TOML ({exc})") from None
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def resolve_run_config(args: argparse.Namespace) -> RunConfig:
    """Preset and recipe, then the config file, then the flags, then --set."""
    # $RESNET_CORE_DATA is the lowest layer: a config file, --data or --set replace it.
    run = RunConfig(model=resolve_model(args.model), train=recipe(args.recipe), data=DataConfig(source=default_data_source()))
    if args.config:
        run = apply_overrides(run, read_config_file(args.config))
    flags = {field: getattr(args, name) for name, field in FLAG_FIELDS.items() if getattr(args, name) is not None}
    run = apply_overrides(run, flags)
    return apply_overrides(run, parse_assignments(args.set))


def config_as_used(run: RunConfig, data: DataBundle) -> dict[str, Any]:
    """The config with the validation size its data resolve to: the default ``val_size`` holds out
    10% of small data (splits.effective_val_size), and the record's provenance states that size too."""
    values = to_dict(run)
    values["data"]["val_size"] = len(data.val_y)
    return values


def split_line(data: DataBundle) -> str:
    return (f"data {data.description}: {len(data.train_y):,} training / {len(data.val_y):,} validation / "
            f"{len(data.test_y):,} test images")


def summary_line(record, model_name: str, path: Path) -> str:
    final = record.final
    parts = [f"{record.status}: {model_name}", f"run {record.run_id}"]
    if final:
        parts.append(f"epochs {final['epochs']} ({final['iterations']} it)")
        parts.append(f"train err {final['train_error']:.2f}%")
        if final.get("val_error") is not None:  # absent when a run stopped at an epoch val_epochs skips
            parts.append(f"val err {final['val_error']:.2f}%")
        if final.get("test_error") is not None:  # absent when the run's test_eval never reached it
            parts.append(f"test err {final['test_error']:.2f}%")
    parts.append(f"{record.wall_seconds:.0f} s")
    if record.error:
        parts.append(f"error: {record.error}")
    parts.append(f"record {path}")
    return " | ".join(parts)


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
        data = load_data(run.data, "cpu")  # the sizes it resolves to, and bad data as the real run would see it
        print(json.dumps(config_as_used(run, data), indent=1))
        print(split_line(data))
        print(f"run {run_id(run)}; record {record_path(args.results, run_id(run))}")
        return 0
    check_writable(args.results)  # an unwritable folder: one line now, not after an epoch of training
    print_migration(args.results, [run])  # a record or checkpoint under an older run-id schema: renamed
    with claim_run(args.results, run_id(run)) as claimed:
        if not claimed:
            raise ValueError(f"run {run_id(run)} is being trained by another process "
                             f"({claim_holder(args.results, run_id(run))}): wait for it, or use another --results")
        record = fit(run, results_dir=args.results, data=data, progress=not args.quiet)
    print(summary_line(record, args.model, record_path(args.results, record.run_id)))
    return 0 if record.status == "completed" else 1


def console() -> None:
    """``resnet-train``. SIGTERM (kill, a batch system's time limit) stops like Ctrl-C: the "stopped"
    record keeps the time trained so far (so wall_seconds adds up over a resume), exit code 130."""
    entry(main)


if __name__ == "__main__":
    console()
