"""``python -m resnet_core.models``: a model's module tree, parameter count and MACs per 32x32 image
(``--table``: every preset). Its flags: commands/parsers.py."""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from typing import Iterable

import torch

from resnet_core.cli import run_cli
from resnet_core.commands.parsers import models_parser as build_parser
from resnet_core.config import ModelConfig, coerce, parse_assignments
from resnet_core.models import PRESETS, build_model, resolve_model, summarize


def override_model(cfg: ModelConfig, assignments: dict[str, str]) -> ModelConfig:
    """``cfg`` with ``{"depth": "56"}``-style model fields set; other names are a one-line error."""
    hints = typing.get_type_hints(ModelConfig)
    values = {}
    for key, raw in assignments.items():
        name = key.removeprefix("model.")
        if name not in hints:
            raise ValueError(f"unknown model field {key!r}: expected one of {', '.join(hints)}")
        values[name] = coerce(raw, hints[name], key)
    if "depth" in values and "blocks" not in values:
        values["blocks"] = None  # a depth asks for the even CIFAR layout, as apply_overrides does
    return dataclasses.replace(cfg, **values)


def format_table(names: Iterable[str]) -> str:
    rows = [f"{'name':<18} {'params':>12} {'params (M)':>10} {'MACs (M)':>10}"]
    for name in names:
        s = summarize(PRESETS[name])
        rows.append(f"{name:<18} {s['params']:>12,} {s['params'] / 1e6:>10.3f} {s['macs'] / 1e6:>10.1f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table:
        print(format_table(PRESETS))
        return 0
    if args.name is None:
        raise ValueError(f"a preset name is required (or --table): expected one of {', '.join(PRESETS)}")
    cfg = override_model(resolve_model(args.name), parse_assignments(args.set))
    stats = summarize(cfg)
    if args.json:
        print(json.dumps({"name": args.name, **stats, "config": dataclasses.asdict(cfg)}))
        return 0
    with torch.device("meta"):
        print(build_model(cfg))
    print(f"params: {stats['params']:,} ({stats['params'] / 1e6:.3f}M)")
    print(f"MACs per 32x32 image: {stats['macs']:,} ({stats['macs'] / 1e6:.1f}M)")
    return 0


def console() -> None:
    """``python -m resnet_core.models``: errors are one line, exit code 2."""
    sys.exit(run_cli(main))
