"""Ablation grids as data: a TOML file names the axes, the fixed settings and the recipe.

A grid expands into cells (grid points without the seed) times seeds, each a :class:`RunConfig`.
Every run config is built, and so validated, before anything trains: an unknown key, an empty
axis or a value a config rejects is a one-line ValueError naming the file, the field and the value.
Field names are canonical (``model.depth`` and ``depth`` are one name, a nested ``train.lr = ...``
key too): two spellings of one field in one table are an error, and ``--axis model.depth=...``
replaces a ``depth`` axis. Axis values are converted to the field's type as they are read (``0.10``
and ``0.1`` are one value, listed twice), cell names are unique, and two cells that resolve to one
run config are an error rather than one run counted under two labels. :func:`resnet_core.grid.cells.iter_cells`
builds runs one at a time (a dry run of a huge grid never holds them all); ``expand`` builds them all.

File format (all keys optional except ``axes`` or ``cells``; see resnet_core/grids/*.toml)::

    name = "degradation"           # default: the file's stem
    description = "..."
    report = "degradation"         # which report the grid gets: a kind of resnet_core/grid/kinds.py
    model = "resnet20"             # base model preset (resnet_core.models.PRESETS)
    recipe = "paper"               # base recipe (resnet_core.recipes.RECIPES)
    seeds = 3                      # seeds 0..2, or a list [0, 5, 7]

    [fixed]                        # settings of every run: any config field, bare or dotted
    shortcut = "A"

    [axes]                         # crossed; "model" takes presets, "recipe" recipe names
    residual = [true, false]
    depth = [20, 32, 44, 56]

    [[cells]]                      # linked cells: each sets several things at once
    name = "tutorial"              # (crossed with the axes and the seeds)
    model = "tutorial"
    recipe = "tutorial"

    [[when]]                       # conditional settings, applied after the axes
    match = { depth = 110 }
    set = { warmup_iterations = 400 }

Layering of one run (docs/DESIGN.md, "Config layers"): model preset and recipe (base, then the cell's,
then the axes'), then the budget (length, subset, the schedule every cell shares: resnet_core/budgets.py),
what the report kind measures (``kinds.ReportKind.measurements``), ``fixed``, the cell's settings, the axis
values (so an ``epochs`` axis scans the length), ``when`` rules, the budget's own rules, and last the
command-line overrides (data, device).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from resnet_core.config import SECTIONS, RunConfig, canonical_name, canonical_settings, coerce, resolve_field
from resnet_core.grid.kinds import Pairs, report_kind
from resnet_core.store import check_name

GRIDS_DIR = Path(__file__).resolve().parents[1] / "grids"  # the built-in grids ship inside the package
TOP_KEYS = ("name", "description", "report", "model", "recipe", "seeds", "fixed", "axes", "cells", "when")
NAMED_AXES = ("model", "recipe")  # axes whose values are preset / recipe names, not field values
CELL_KEYS = ("name", "model", "recipe")  # a [[cells]] entry: these, plus any config field
RULE_KEYS = ("match", "set")
DEFAULT_SEEDS = 3  # a claim is a mean over seeds (docs/DESIGN.md, rules of evidence)

@dataclass(frozen=True)
class Variant:
    """One linked cell of a ``[[cells]]`` list: a name, a model preset, a recipe and settings."""

    name: str
    model: str | None = None
    recipe: str | None = None
    settings: Pairs = ()


@dataclass(frozen=True)
class Rule:
    """``[[when]]``: runs whose config matches every ``match`` value get the ``set`` values."""

    match: Pairs
    set: Pairs


@dataclass(frozen=True)
class GridSpec:
    """A parsed grid file. ``axes`` keep the file's order; ``seeds`` are the run seeds."""

    name: str
    source: str
    description: str = ""
    report: str = "generic"
    model: str = "resnet20"
    recipe: str = "paper"
    seeds: tuple[int, ...] = tuple(range(DEFAULT_SEEDS))
    fixed: Pairs = ()
    axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    variants: tuple[Variant, ...] = ()
    rules: tuple[Rule, ...] = ()
    file_sha256: str = ""  # of the grid file's bytes: names the grid's version where a path would move

    @property
    def axis_names(self) -> tuple[str, ...]:
        """The columns that identify a cell: ``variant`` (for linked cells) then the axes."""
        return (("variant",) if self.variants else ()) + tuple(name for name, _ in self.axes)



def show_value(value: Any) -> str:
    """A value as a label shows it (booleans as TOML writes them)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


# ------------------------------------------------------------------------------- locating

def available_grids(grids_dir: str | Path | None = None) -> list[str]:
    """The built-in grids' names (the TOML files shipped in ``resnet_core/grids``)."""
    grids_dir = GRIDS_DIR if grids_dir is None else grids_dir
    return sorted(p.stem for p in Path(grids_dir).glob("*.toml"))


def grid_path(name_or_path: str, grids_dir: str | Path | None = None) -> Path:
    """A built-in grid by name (``grids_dir/<name>.toml``) or a user's TOML file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        if not candidate.is_file():
            raise FileNotFoundError(f"grid file {name_or_path!r} does not exist")
        return candidate
    builtin = Path(GRIDS_DIR if grids_dir is None else grids_dir) / f"{name_or_path}.toml"
    if not builtin.is_file():
        known = ", ".join(available_grids(grids_dir))
        raise ValueError(f"unknown grid {name_or_path!r}: expected one of {known} or a path to a .toml file")
    return builtin


# -------------------------------------------------------------------------------- parsing

def _check_keys(where: str, values: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = [k for k in values if k not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}: expected one of {', '.join(allowed)}")


def _table(where: str, values: Any, name: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ValueError(f"{where}: {name} must be a table ([{name}]), got {values!r}")
    return values


def _parse_seeds(where: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        if len(set(value)) != len(value):
            raise ValueError(f"{where}: seeds={value!r} lists a seed twice")
        return tuple(value)
    raise ValueError(f"{where}: seeds={value!r} is invalid: expected a count >= 1 or a non-empty list of seeds >= 0")


def _parse_axis(where: str, name: str, values: Any) -> tuple[str, tuple[Any, ...]]:
    """An axis with its values as the config field holds them ("0.10" -> 0.1, 8.0 -> 8 for depth), so
    two spellings of one value are caught here rather than becoming two cells of one run."""
    if not isinstance(values, list):
        raise ValueError(f"{where}: axis {name!r} must be a list of values, got {values!r}")
    if not values:
        raise ValueError(f"{where}: axis {name!r} is empty: give it at least one value")
    try:
        canonical = list(values) if name in NAMED_AXES else [coerce_field(name, v) for v in values]
    except ValueError as exc:
        raise ValueError(f"{where}: axis {name!r}: {exc}") from None
    repeat = _repeat(canonical)
    if repeat:
        (first, again), value = (show_value(values[i]) for i in repeat), show_value(canonical[repeat[0]])
        given = f"{first} twice" if first == again else f"{first} and {again}, both {name}={value}"
        raise ValueError(f"{where}: axis {name!r} lists {given}: give each value once")
    return name, tuple(canonical)


def _repeat(values: Sequence[Any]) -> tuple[int, int] | None:
    """The positions (first, again) of the first value listed twice, or None."""
    return next(((values.index(v), i) for i, v in enumerate(values) if v in values[:i]), None)


def _parse_variant(where: str, entry: Any, index: int) -> Variant:
    entry = _table(where, entry, "cells")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: cells[{index}] needs a name = \"...\"")
    # A table under "model" is dotted settings (model.depth = 8), not the preset's name.
    own = {k: v for k, v in entry.items() if k in CELL_KEYS and not isinstance(v, dict)}
    settings = canonical_settings({k: v for k, v in entry.items() if k not in own}, f"{where}: cells[{index}] ({name})")
    return Variant(name=name, model=own.get("model"), recipe=own.get("recipe"), settings=tuple(settings.items()))


def _parse_rule(where: str, entry: Any, index: int) -> Rule:
    entry = _table(where, entry, "when")
    _check_keys(f"{where}: when[{index}]", entry, RULE_KEYS)
    match = canonical_settings(_table(where, entry.get("match", {}), "when.match"), f"{where}: when[{index}].match")
    settings = canonical_settings(_table(where, entry.get("set", {}), "when.set"), f"{where}: when[{index}].set")
    if not match or not settings:
        raise ValueError(f"{where}: when[{index}] needs both match = {{...}} and set = {{...}}")
    try:
        match = {name: coerce_field(name, value) for name, value in match.items()}
    except ValueError as exc:
        raise ValueError(f"{where}: when[{index}].match: {exc}") from None
    return Rule(match=tuple(match.items()), set=tuple(settings.items()))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: malformed TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None


def parse_grid(values: Mapping[str, Any], source: str, default_name: str) -> GridSpec:
    """A :class:`GridSpec` from a grid file's parsed TOML; keys and field names are checked."""
    where = source
    _check_keys(where, values, TOP_KEYS)
    report = report_kind(values.get("report", "generic"), f"{where}: report").name
    fixed = canonical_settings(_table(where, values.get("fixed", {}), "fixed"), f"{where}: fixed")
    axes = canonical_settings(_table(where, values.get("axes", {}), "axes"), f"{where}: axes", extra=NAMED_AXES)
    if "seed" in axes and "seeds" in values:
        raise ValueError(f"{where}: give the seeds once: either seeds = ... or an axis seed = [...]")
    seeds = _parse_seeds(where, axes.pop("seed") if "seed" in axes else values.get("seeds", DEFAULT_SEEDS))
    cells = values.get("cells", [])
    rules = values.get("when", [])
    if not isinstance(cells, list) or not isinstance(rules, list):
        raise ValueError(f"{where}: cells and when must be arrays of tables ([[cells]], [[when]])")
    if not axes and not cells:
        raise ValueError(f"{where}: the grid has no [axes] and no [[cells]]: nothing to compare")
    for key in ("name", "description", "model", "recipe"):
        if key in values and not isinstance(values[key], str):
            raise ValueError(f"{where}: {key}={values[key]!r} is invalid: expected a string")
    name = check_name(values.get("name", default_name), f"{where}: grid name")  # names <results>/ablation/<name>/
    variants = tuple(_parse_variant(where, c, i) for i, c in enumerate(cells))
    repeat = _repeat([variant.name for variant in variants])  # a name labels a cell's runs in every report
    if repeat:
        raise ValueError(f"{where}: cells[{repeat[0]}] and cells[{repeat[1]}] are both named "
                         f"{variants[repeat[0]].name!r}: give each [[cells]] entry its own name")
    return GridSpec(
        name=name,
        source=source,
        description=values.get("description", ""),
        report=report,
        model=values.get("model", "resnet20"),
        recipe=values.get("recipe", "paper"),
        seeds=seeds,
        fixed=tuple(fixed.items()),
        axes=tuple(_parse_axis(where, k, v) for k, v in axes.items()),
        variants=variants,
        rules=tuple(_parse_rule(where, r, i) for i, r in enumerate(rules)),
    )


def load_grid(name_or_path: str, grids_dir: str | Path | None = None) -> GridSpec:
    """Read and check a grid file (a built-in name or a path); see the module docstring."""
    path = grid_path(name_or_path, grids_dir)
    spec = parse_grid(_read_toml(path), str(path), path.stem)
    return dataclasses.replace(spec, file_sha256=hashlib.sha256(path.read_bytes()).hexdigest()[:16])


# ------------------------------------------------------------------------ command-line edits

def parse_axis_option(text: str) -> tuple[str, list[str]]:
    """``"depth=20,56"`` -> ``("depth", ["20", "56"])``; ``;`` separates values holding commas."""
    if "=" not in text:
        raise ValueError(f"--axis {text!r} is invalid: expected field=v1,v2 (e.g. depth=20,32,44,56,110)")
    name, raw = (part.strip() for part in text.split("=", 1))
    separator = ";" if ";" in raw else ","
    values = [v.strip() for v in raw.split(separator) if v.strip()]
    if not values:
        raise ValueError(f"--axis {text!r} is invalid: axis {name!r} is empty")
    return name, values


def with_axis(spec: GridSpec, name: str, values: Sequence[Any]) -> GridSpec:
    """``spec`` with axis ``name`` replaced (in place) or added (at the end); ``seed`` sets the seeds."""
    if name not in NAMED_AXES:
        try:
            name = canonical_name(name)  # --axis model.depth=... replaces the grid's depth axis
        except ValueError as exc:
            raise ValueError(f"--axis: {exc}") from None
    if name == "seed":
        return dataclasses.replace(spec, seeds=_parse_seeds("--axis seed", [coerce_field("seed", v) for v in values]))
    axis = _parse_axis("--axis", name, list(values))
    names = [n for n, _ in spec.axes]
    axes = list(spec.axes)
    if name in names:
        axes[names.index(name)] = axis
    else:
        axes.append(axis)
    return dataclasses.replace(spec, axes=tuple(axes))


def with_seeds(spec: GridSpec, count: int) -> GridSpec:
    return dataclasses.replace(spec, seeds=_parse_seeds("--seeds", count))


def coerce_field(name: str, value: Any) -> Any:
    """``value`` converted to the type of config field ``name`` ("110" -> 110 for depth)."""
    return coerce(value, _annotation(resolve_field(name)), name)


@functools.lru_cache(maxsize=None)  # get_type_hints is slow, and [[when]] rules ask once per cell
def _annotation(dotted: str) -> Any:
    cls, field_name = (SECTIONS[dotted.split(".")[0]], dotted.split(".")[1]) if "." in dotted else (RunConfig, dotted)
    return typing.get_type_hints(cls)[field_name]


