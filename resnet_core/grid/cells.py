"""A grid's runs: each (cell, seed) of a :class:`~resnet_core.grid.spec.GridSpec` as a validated run config.

Layering of one run (docs/DESIGN.md, "Config layers"): see resnet_core/grid/spec.py. Every run config is
built, and so validated, before anything trains; two cells that resolve to one run config, and an
override of an axis's field, are one-line errors rather than one run counted under two labels.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from resnet_core.budgets import Budget
from resnet_core.config import RunConfig, apply_overrides, field_index, get_field, resolve_field
from resnet_core.grid.kinds import Pairs, report_kind
from resnet_core.grid.spec import NAMED_AXES, GridSpec, Rule, Variant, coerce_field, show_value
from resnet_core.identity import run_id
from resnet_core.models import resolve_model
from resnet_core.recipes import recipe


@dataclass(frozen=True)
class Cell:
    """One run of a grid: the cell's axis values (seed excluded), the seed and the run config."""

    key: Pairs
    seed: int
    run: RunConfig

    @property
    def label(self) -> str:
        return ", ".join(f"{name}={show_value(value)}" for name, value in self.key) or "base"

    @functools.cached_property  # hashing the config is the costliest step of a cell; asked for often
    def run_id(self) -> str:
        return run_id(self.run)


def _base_run(model: str, recipe_name: str) -> RunConfig:
    return RunConfig(model=resolve_model(model), train=recipe(recipe_name))


def _matches(run: RunConfig, match: Pairs) -> bool:
    return all(get_field(run, resolve_field(name)) == coerce_field(name, value) for name, value in match)


def _budget_rules(budget: Budget | None) -> tuple[Rule, ...]:
    return tuple(Rule(match=match, set=settings) for match, settings in (budget.rules if budget else ()))


def _point_run(spec: GridSpec, variant: Variant | None, point: Pairs, budget: Budget | None = None) -> RunConfig:
    """The config of one grid point (before seed and command-line overrides)."""
    named = dict((k, v) for k, v in point if k in NAMED_AXES)
    model = named.get("model") or (variant.model if variant and variant.model else spec.model)
    recipe_name = named.get("recipe") or (variant.recipe if variant and variant.recipe else spec.recipe)
    run = _base_run(model, recipe_name)
    if budget is not None:
        run = apply_overrides(run, budget.settings())
    run = apply_overrides(run, dict(report_kind(spec.report).measurements))
    run = apply_overrides(run, dict(spec.fixed))
    if variant is not None:
        run = apply_overrides(run, dict(variant.settings))
    run = apply_overrides(run, {k: v for k, v in point if k not in NAMED_AXES})
    for rule in spec.rules + _budget_rules(budget):
        if _matches(run, rule.match):
            run = apply_overrides(run, dict(rule.set))
    return run


def _cell_key(spec: GridSpec, variant: Variant | None, point: Pairs, run: RunConfig) -> Pairs:
    """Axis values as the config holds them (coerced: "56" -> 56), presets and recipes by name."""
    key = [("variant", variant.name)] if variant is not None else []
    for name, value in point:
        key.append((name, value if name in NAMED_AXES else get_field(run, resolve_field(name))))
    return tuple(key)


def _points(spec: GridSpec) -> Iterator[Pairs]:
    names = [name for name, _ in spec.axes]
    return (tuple(zip(names, combo)) for combo in itertools.product(*(values for _, values in spec.axes)))


def run_count(spec: GridSpec) -> int:
    """How many runs the grid has (cells x seeds), without building any."""
    return max(1, len(spec.variants)) * math.prod(len(values) for _, values in spec.axes) * len(spec.seeds)


def iter_cells(spec: GridSpec, overrides: Mapping[str, Any] | None = None, budget: Budget | None = None) -> Iterator[Cell]:
    """Each (cell, seed) of the grid as a validated run config, built when asked for (the seeds of a
    cell come together); ``budget`` (resnet_core/budgets.py) sets length, subset and the shared
    schedule under the grid file, ``overrides`` are applied last. A config error, an override of an
    axis's field and two cells that are one run are each a one-line ValueError naming the grid file
    and the cell(s), raised when that cell is reached: a cell is a set of runs of its own.
    """
    overrides = dict(overrides or {})
    _check_overrides(spec, overrides)
    seen: dict[str, str] = {}  # run id of a cell's first seed -> the cell's label
    for variant in spec.variants or (None,):
        for point in _points(spec):
            where = ", ".join(f"{k}={show_value(v)}" for k, v in ((("variant", variant.name),) if variant else ()) + point)
            try:
                run = apply_overrides(_point_run(spec, variant, point, budget), overrides)
                key = _cell_key(spec, variant, point, run)
            except ValueError as exc:
                raise ValueError(f"{spec.source}: cell {where or 'base'}: {exc}") from None
            cells = [Cell(key=key, seed=seed, run=dataclasses.replace(run, seed=seed)) for seed in spec.seeds]
            _check_distinct(spec, cells[0], seen)
            yield from cells


def expand(spec: GridSpec, overrides: Mapping[str, Any] | None = None, budget: Budget | None = None) -> list[Cell]:
    """Every (cell, seed) of the grid, all validated (see :func:`iter_cells`): what a real run checks
    before anything trains."""
    _check_report_axes(spec)
    return list(iter_cells(spec, overrides, budget))


def _check_report_axes(spec: GridSpec) -> None:
    """A kind that fits some fields only (degradation: family x depth per length) refuses an axis over
    another field, which its fits would pool."""
    allowed = report_kind(spec.report).fields
    for name in (n for n, _ in spec.axes if allowed and n != "model" and resolve_field(n) not in allowed):
        fields = ", ".join(field.split(".")[-1] for field in allowed)
        raise ValueError(f"{spec.source}: axis {name!r} cannot be in a grid with report = {spec.report!r}, whose fits "
                         f"would pool its values: use report = \"generic\", or axes over {fields}")


def _check_overrides(spec: GridSpec, overrides: Mapping[str, Any]) -> None:
    """An override of an axis's field (or of the seed) gives every cell that one value: the cells
    would be one run under several labels. Names a config does not know are apply_overrides' to refuse."""
    axes = {field_index().get(name): name for name, _ in spec.axes if name not in NAMED_AXES} | {"seed": "seed"}
    for name, value in overrides.items():
        axis = axes.get(field_index().get(name))
        if axis is not None:
            raise ValueError(f"{spec.source}: --set {name}={show_value(value)} pins the axis {axis!r} to one value: "
                             f"give --axis {axis}={show_value(value)} instead")


def _check_distinct(spec: GridSpec, cell: Cell, seen: dict[str, str]) -> None:
    """Two cells of one run config would count one run as two: refuse the grid. A cell's seeds differ
    from each other in the seed only, so its first seed's run id stands for the whole cell."""
    if cell.run_id in seen:
        raise ValueError(f"{spec.source}: cells {seen[cell.run_id]!r} and {cell.label!r} are the same run "
                         "(one config): what tells them apart changes nothing; drop one or make them differ")
    seen[cell.run_id] = cell.label
