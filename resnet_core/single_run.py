"""One run in the command line's terms (``resnet-train``): its config from layers (preset and
recipe, a TOML file, the flags that are shortcuts of fields, then ``--set``), training it under a
claim (one process per run id), and the lines the command prints."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Mapping, Sequence

from resnet_core.config import DataConfig, RunConfig, apply_overrides, default_data_source, parse_assignments, to_dict
from resnet_core.data import DataBundle
from resnet_core.engine import fit
from resnet_core.identity import run_id
from resnet_core.models import resolve_model
from resnet_core.recipes import recipe
from resnet_core.store import RunRecord, claim_holder, claim_run, record_path

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


def layered_config(model: str, recipe_name: str, config_file: Path | None, flags: Mapping[str, Any],
                   sets: Sequence[str]) -> RunConfig:
    """Preset and recipe, then the config file, then the flags (``FLAG_FIELDS`` names; None: not
    given), then ``--set``. $RESNET_CORE_DATA is the lowest layer: a file, --data or --set replace it."""
    run = RunConfig(model=resolve_model(model), train=recipe(recipe_name), data=DataConfig(source=default_data_source()))
    if config_file:
        run = apply_overrides(run, read_config_file(config_file))
    run = apply_overrides(run, {FLAG_FIELDS[name]: value for name, value in flags.items() if value is not None})
    return apply_overrides(run, parse_assignments(list(sets)))


def dry_run_lines(run: RunConfig, data: DataBundle, results: str | Path) -> list[str]:
    """The config with the validation size its data resolve to (the default ``val_size`` holds out
    10% of small data, splits.effective_val_size, as the record's provenance says), the split, the run id."""
    values = to_dict(run)
    values["data"]["val_size"] = len(data.val_y)
    return [json.dumps(values, indent=1),
            f"data {data.description}: {len(data.train_y):,} training / {len(data.val_y):,} validation / "
            f"{len(data.test_y):,} test images",
            f"run {run_id(run)}; record {record_path(results, run_id(run))}"]


def train_claimed(run: RunConfig, results: str | Path, data: DataBundle, progress: bool = True) -> RunRecord:
    """``fit`` under the run's claim: a run another process is training is a one-line ValueError."""
    with claim_run(results, run_id(run)) as claimed:
        if not claimed:
            raise ValueError(f"run {run_id(run)} is being trained by another process "
                             f"({claim_holder(results, run_id(run))}): wait for it, or use another --results")
        return fit(run, results_dir=results, data=data, progress=progress)


def summary_line(record: RunRecord, model_name: str, path: Path) -> str:
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
