"""The whole specification of a run: four frozen dataclasses and the helpers that layer them.

Config layers (docs/DESIGN.md, "Config layers"): dataclass defaults, then a preset or a file, then
command-line ``field=value`` overrides. Every layer goes through :func:`apply_overrides`, which
rejects unknown keys and checks types, so a typo is an error and never a silent default.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from resnet_core.splits import DEFAULT_VAL_SIZE

from resnet_core import augment, blocks, schedules  # registries only: none of them imports this module
from resnet_core.devices import COMPILE_MODES
from resnet_core.validation import (
    DEVICE_PATTERN, DEVICES_ALLOWED, check_choice, check_count, check_positive, check_seed, fail,
)

# The allowed values come from the registries that build them, so a new entry there is a valid
# config value at once, and no list here can drift from them.
SHORTCUTS = tuple(blocks.SHORTCUTS)
NORMS = tuple(blocks.NORMS)
BLOCKS = tuple(dict.fromkeys(kind for kind, _preact in blocks.BLOCKS))
OPTIMIZERS = tuple(schedules.OPTIMIZERS)
SCHEDULES = tuple(schedules.SCHEDULES)
AUGMENTS = tuple(augment.AUGMENTATIONS)
AMP_MODES = ("auto", "bf16", "off")  # resolved by devices.resolve_amp (auto: by hardware)
# When the test set is evaluated: grids need per-epoch test curves (Fig. 6); a study trial never uses it.
TEST_EVALS = ("every_epoch", "end", "never")
DATA_ENV_VAR = "RESNET_CORE_DATA"  # the command lines' default --data (default_data_source)


# Old names still accepted, with a FutureWarning: "seed" named the tutorial's network, recipe and
# augmentation, and a run's random seed; now "seed" means only the random seed.
RENAMED = {"seed": "tutorial"}


def current_name(name: str, what: str) -> str:
    """``name``, or its new name (with a FutureWarning) when it is an old one (:data:`RENAMED`)."""
    if isinstance(name, str) and name in RENAMED:
        warnings.warn(f"{what} {name!r} is now called {RENAMED[name]!r}; the old name will be removed",
                      FutureWarning, stacklevel=3)
        return RENAMED[name]
    return name


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one network of the CIFAR ResNet family (He et al. 2015 §4.2, 2016).

    ``depth`` counts weighted layers: 6n+2 with basic blocks, 9n+2 with bottleneck blocks, spread
    evenly over the stages. ``blocks`` (explicit blocks per stage) overrides ``depth`` for layouts
    such as the four-stage "ResNet-18" (blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512)).

    ``residual=False`` gives the *plain* twin: the same layers without the identity additions.
    A plain net has no shortcut at all, so ``shortcut`` has no effect on it (its parameter count
    equals the residual twin's under option A, which adds no parameters).
    """

    depth: int = 20
    blocks: tuple[int, ...] | None = None
    widths: tuple[int, ...] = (16, 32, 64)
    width_multiplier: float = 1.0
    num_classes: int | None = None  # None: follows the data (10 when built without data)
    in_channels: int = 3
    residual: bool = True
    shortcut: str = "A"
    norm: str = "batch"
    preact: bool = False
    block: str = "basic"
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        check_choice("shortcut", self.shortcut, SHORTCUTS)
        check_choice("norm", self.norm, NORMS)
        check_choice("block", self.block, BLOCKS)
        if not self.widths or any(not isinstance(w, int) or w <= 0 for w in self.widths):
            fail("widths", self.widths, "expected one positive integer per stage")
        check_positive("width_multiplier", self.width_multiplier)
        if any(round(w * self.width_multiplier) < 1 for w in self.widths):
            fail("width_multiplier", self.width_multiplier, "it makes a stage width 0")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 2):
            fail("num_classes", self.num_classes, "expected an integer >= 2 or None (from the data)")
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            fail("in_channels", self.in_channels, "expected an integer >= 1")
        if self.blocks is not None:
            if len(self.blocks) != len(self.widths) or any(
                not isinstance(b, int) or b < 1 for b in self.blocks
            ):
                fail("blocks", self.blocks, f"expected {len(self.widths)} positive integers, one per stage in widths")
        else:
            self._check_depth()

    def _check_depth(self) -> None:
        per_block = 2 if self.block == "basic" else 3
        stages = len(self.widths)
        step = per_block * stages
        if not isinstance(self.depth, int) or self.depth < step + 2 or (self.depth - 2) % step:
            examples = ", ".join(str(step * n + 2) for n in (1, 2, 3, 9))
            fail(
                "depth",
                self.depth,
                f"{self.block} blocks over {stages} stages need depth = {step}n+2 (e.g. {examples})",
            )

    @property
    def blocks_per_stage(self) -> tuple[int, ...]:
        if self.blocks is not None:
            return tuple(self.blocks)
        per_block = 2 if self.block == "basic" else 3
        n = (self.depth - 2) // (per_block * len(self.widths))
        return (n,) * len(self.widths)

    @property
    def stage_widths(self) -> tuple[int, ...]:
        return tuple(max(1, round(w * self.width_multiplier)) for w in self.widths)


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how the training set is split.

    ``source``: ``cifar10`` | ``cifar100`` (torchvision, under ``root``), ``synthetic``, or a
    directory (ImageFolder ``train/`` + ``test/``, or one holding ``cifar-10-batches-py``).
    Its default is ``cifar10``; the command lines put ``$RESNET_CORE_DATA`` here when ``--data`` is
    not given (:func:`default_data_source`), so the record's config names the data that was used.
    The validation split is carved first with ``split_seed`` (not the run seed), so it is the same
    for every run seed and every ``subset``.
    """

    source: str = "cifar10"
    root: str = "./data"
    val_size: int = DEFAULT_VAL_SIZE  # on data with no more training images: 10% (splits.effective_val_size)
    subset: int | None = None
    split_seed: int = 0
    resize: bool = False  # resize non-32x32 images to 32x32 (only when asked)
    cache_dir: str | None = None  # None: $RESNET_CORE_CACHE or the user cache directory
    download: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            fail("source", self.source, "expected cifar10, cifar100, synthetic or a directory path")
        check_positive("val_size", self.val_size, allow_zero=True)
        if self.subset is not None:
            check_positive("subset", self.subset)
        check_seed("split_seed", self.split_seed)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation recipe. Exactly one of ``epochs`` and ``iterations`` sets the budget.

    ``milestones`` are fractions of the whole budget, so a recipe keeps its shape when the budget
    is overridden: the paper's lr steps at 32k and 48k of 64k iterations are (0.5, 0.75).

    Two warm-ups, at most one per recipe: ``warmup_iterations`` is the paper's (a constant
    ``warmup_lr`` for that many iterations, then the schedule: He et al. 2015 §4.2, ResNet-110);
    ``warmup_fraction`` is a gradual one (the schedule's lr ramped linearly from near 0 over that
    fraction of the run: Goyal et al. 2017 §2.2), which keeps its meaning whatever the run's length.

    ``cycle_momentum`` (SGD) moves the momentum against the schedule's lr: 0.85 at the lr's peak, toward
    0.95 as it falls; under one-cycle 0.95 -> 0.85 -> 0.95 (Smith 2018, "A disciplined approach to neural
    network hyper-parameters", §4.3; torch's ``OneCycleLR`` does the same by default). ``momentum`` is
    then not used.

    ``test_eval`` says when the test set is measured: after ``every_epoch``, only at the ``end`` of
    a run that trains its whole budget, or ``never`` (then a record holds no test error at all).
    ``val_epochs`` names the epochs (numbered from 1) after which validation is measured; the run's
    last epoch always is. ``None`` measures it after every epoch. A study trial lists only the epochs
    its pruner reads, so it spends no time on numbers nobody uses.

    Three settings change how a run is executed, not what it computes (NON_IDENTITY_FIELDS):
    ``sync_every`` is the steps between reads of the running loss to the host (the divergence check,
    the progress bar's loss), 0 at the epoch's end only, ``None`` the device type's default
    (devices.STEP_DEFAULTS); ``checkpoint_every`` the epochs between checkpoints: a run stopped by a
    callback (a pruned trial) also leaves one at its last epoch, and a kill (Ctrl-C) loses the epochs
    trained since the last one; ``compile_mode`` is torch.compile's mode when ``compile`` is set.
    """

    epochs: int | None = 10
    iterations: int | None = None
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    cycle_momentum: bool = False
    weight_decay: float = 1e-4
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_iterations: int = 0
    warmup_lr: float = 0.01
    warmup_fraction: float = 0.0
    label_smoothing: float = 0.0
    augment: str = "padcrop_flip"
    normalize: bool = True
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    eval_batch_size: int = 1000
    checkpoint: bool = True
    test_eval: str = "every_epoch"
    val_epochs: tuple[int, ...] | None = None
    sync_every: int | None = None
    checkpoint_every: int = 1
    compile_mode: str = "default"

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.iterations is None):
            fail("epochs", self.epochs, "set exactly one of epochs and iterations")
        for name in ("epochs", "iterations", "sync_every"):  # None: not set
            if getattr(self, name) is not None:
                check_count(name, getattr(self, name), 0 if name == "sync_every" else 1)
        for name in ("batch_size", "eval_batch_size", "checkpoint_every"):
            check_count(name, getattr(self, name), 1)
        check_choice("compile_mode", self.compile_mode, COMPILE_MODES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        object.__setattr__(self, "augment", current_name(self.augment, "augment"))
        check_choice("augment", self.augment, AUGMENTS)
        check_choice("amp", self.amp, AMP_MODES)
        check_choice("test_eval", self.test_eval, TEST_EVALS)
        if self.val_epochs is not None and (
                any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in self.val_epochs)
                or list(self.val_epochs) != sorted(set(self.val_epochs))):
            fail("val_epochs", self.val_epochs, "expected increasing epoch numbers >= 1, or None for every epoch")
        check_positive("lr", self.lr)
        check_positive("warmup_lr", self.warmup_lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("warmup_iterations", self.warmup_iterations, allow_zero=True)
        if isinstance(self.warmup_fraction, bool) or not isinstance(self.warmup_fraction, (int, float)) \
                or not 0 <= self.warmup_fraction < 1:
            fail("warmup_fraction", self.warmup_fraction, "expected a fraction of the run in [0, 1)")
        if self.warmup_fraction and self.warmup_iterations:
            fail("warmup_fraction", self.warmup_fraction,
                 f"set one warm-up: warmup_iterations={self.warmup_iterations} is set too")
        if not 0 <= self.momentum < 1:
            fail("momentum", self.momentum, "expected 0 <= momentum < 1")
        if self.cycle_momentum and self.optimizer != "sgd":
            fail("cycle_momentum", self.cycle_momentum,
                 f"it cycles SGD's momentum and optimizer={self.optimizer!r}: set cycle_momentum=false or optimizer=sgd")
        if not 0 <= self.label_smoothing < 1:
            fail("label_smoothing", self.label_smoothing, "expected 0 <= label_smoothing < 1")
        if not 0 < self.gamma <= 1:
            fail("gamma", self.gamma, "expected 0 < gamma <= 1")
        if any(not 0 < m < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            fail("milestones", self.milestones, "expected increasing fractions of the budget in (0, 1)")


@dataclass(frozen=True)
class RunConfig:
    """One training run: what to train (model, data, recipe) and with which seed.

    ``device`` says where, not what: it is left out of the run's identity (see resnet_core/identity.py).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        if not isinstance(self.device, str) or not re.fullmatch(DEVICE_PATTERN, self.device):
            fail("device", self.device, DEVICES_ALLOWED)


# ----------------------------------------------------------------------------------- layering

SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}
# Fields that do not change what is computed: excluded from the run's identity hash.
NON_IDENTITY_FIELDS = {"device", "data.cache_dir", "data.root", "data.download", "train.checkpoint",
                       "train.sync_every", "train.checkpoint_every", "train.compile_mode"}


@functools.lru_cache(maxsize=1)  # fixed by the dataclasses; a grid resolves names once per cell
def field_index() -> Mapping[str, str]:
    """Map every settable name to its dotted path: ``depth`` -> ``model.depth``, ``seed`` -> ``seed``.

    Bare names work when unambiguous; ``section.field`` always works. (Read-only: it is shared.)
    """
    index: dict[str, str] = {"seed": "seed", "device": "device"}
    seen: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            dotted = f"{section}.{f.name}"
            index[dotted] = dotted
            seen.setdefault(f.name, []).append(dotted)
    for name, paths in seen.items():
        if len(paths) == 1:
            index[name] = paths[0]
    return index


def resolve_field(name: str) -> str:
    """The dotted path of a settable name, or a one-line ValueError listing what is valid."""
    index = field_index()
    if name not in index:
        known = sorted(k for k in index if "." not in k)
        raise ValueError(f"unknown config field {name!r}: expected one of {', '.join(known)} (or section.field)")
    return index[name]


def canonical_name(name: str) -> str:
    """The one name of a field: bare when unambiguous, else dotted (``model.depth`` -> ``depth``),
    so two spellings of a field meet as one key (a grid axis, a [fixed] setting)."""
    dotted = resolve_field(name)
    bare = dotted.split(".", 1)[-1]
    return bare if field_index().get(bare) == dotted else dotted


def ignored_fields(run: RunConfig) -> dict[str, tuple[str, str]]:
    """``{dotted field: (why, how to use it)}`` for fields whose value ``run`` does not use: a search space
    may neither search nor fix them, and a plan that sets one aside says it is unused rather than kept."""
    ignored = {}
    if run.train.cycle_momentum:
        ignored["train.momentum"] = ("cycle_momentum = true (the quick budget's) sets the momentum from the lr",
                                     "add --set cycle_momentum=false to use one")
    return ignored


def canonical_settings(values: Mapping[str, Any], where: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{canonical name: value}`` of settings read from TOML. A nested table is a dotted key
    (``train.lr = 0.05`` parses as ``{"train": {"lr": 0.05}}``); names in ``extra`` (grid axes
    such as ``model``) are kept as they are; two spellings of one field are a one-line error."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and key in SECTIONS:
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in flat.items():
        try:
            name = key if key in extra else canonical_name(key)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if name in spelled:
            raise ValueError(f"{where}: {spelled[name]!r} and {key!r} name the same field "
                             f"({resolve_field(name)}): give it once")
        spelled[name], out[name] = key, value
    return out


@functools.lru_cache(maxsize=None)  # typing.get_type_hints re-evaluates every annotation per call
def _field_type(cls: type, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[name]


def coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert ``value`` (often a string from the command line or TOML) to ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, name)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{name}={value!r} is invalid")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}={value!r} is invalid: expected a comma-separated list")
        return tuple(coerce(v, args[0], name) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{name}={value!r} is invalid: expected true or false")
    if annotation is int:
        if isinstance(value, bool):
            raise ValueError(f"{name}={value!r} is invalid: expected an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError(f"{name}={value!r} is invalid: expected an integer") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"{name}={value!r} is invalid: expected a number")
        try:
            return float(str(value).strip())
        except ValueError:
            raise ValueError(f"{name}={value!r} is invalid: expected a number") from None
    if annotation is str:
        if isinstance(value, (dict, list, tuple)):
            raise ValueError(f"{name}={value!r} is invalid: expected a string")
        return str(value)
    raise ValueError(f"{name}: unsupported type {annotation!r}")


def apply_overrides(run: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """Return ``run`` with ``{name: value}`` applied; names as in :func:`field_index`.

    Values may be strings (command line) or typed values (TOML). Unknown names, bad types and
    values a config rejects all raise a one-line ValueError naming the field.
    """
    changes: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    top: dict[str, Any] = {}
    for name, value in overrides.items():
        dotted = resolve_field(name)
        if "." in dotted:
            section, fname = dotted.split(".", 1)
            changes[section][fname] = coerce(value, _field_type(SECTIONS[section], fname), name)
        else:
            top[dotted] = coerce(value, _field_type(RunConfig, dotted), name)
    for section, values in changes.items():
        if not values:
            continue
        current = getattr(run, section)
        if section == "model" and "depth" in values and "blocks" not in values:
            values["blocks"] = None  # a depth asks for the CIFAR layout, not explicit blocks
        if section == "train":  # a budget given one way replaces the recipe's budget given the other
            if "epochs" in values and values["epochs"] is not None and "iterations" not in values:
                values["iterations"] = None
            if "iterations" in values and values["iterations"] is not None and "epochs" not in values:
                values["epochs"] = None
        top[section] = dataclasses.replace(current, **values)
    return dataclasses.replace(run, **top)


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse ``["depth=56", "lr=0.05"]`` into a dict; a malformed item is a one-line ValueError."""
    result: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r} is invalid: expected field=value (e.g. depth=56)")
        key, value = item.split("=", 1)
        result[key.strip()] = value.strip()
    return result


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _tuples(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {sorted(unknown)}: expected {sorted(known)}")
    hints = typing.get_type_hints(cls)
    return {k: coerce(v, hints[k], k) if v is not None else None for k, v in values.items()}


def run_config_from_dict(values: Mapping[str, Any]) -> RunConfig:
    """Inverse of ``to_dict(run_config)``: rebuilds a RunConfig from a record's JSON."""
    return RunConfig(
        model=ModelConfig(**_tuples(ModelConfig, values["model"])),
        train=TrainConfig(**_tuples(TrainConfig, values["train"])),
        data=DataConfig(**_tuples(DataConfig, values["data"])),
        seed=int(values.get("seed", 0)),
        device=str(values.get("device", "auto")),
    )


def default_data_source() -> str:
    """The data source when the command line names none: ``$RESNET_CORE_DATA``, else ``cifar10``.

    Read by the command lines (never by a dataclass default), which write it into the config, so
    the run's record names the data it used.
    """
    return os.environ.get(DATA_ENV_VAR) or DataConfig.source


def get_field(run: RunConfig, dotted: str) -> Any:
    """``run``'s value of a field by its dotted path (``model.depth`` -> 20, ``seed`` -> 0)."""
    section, _, name = dotted.rpartition(".")
    return getattr(getattr(run, section) if section else run, name)
