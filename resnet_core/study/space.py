"""Search spaces: a TOML file of Optuna distributions over config fields, parsed and checked
against a config before any trial (one-line errors naming the file and the parameter)."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna

from resnet_core.config import (SECTIONS, RunConfig, apply_overrides, canonical_settings, get_field, ignored_fields,
                                resolve_field)

SPACES_DIR = Path(__file__).resolve().parents[1] / "spaces"  # built-in spaces ship inside the package


@dataclass(frozen=True)
class Param:
    """One Optuna distribution over one config field (``name`` as written: bare or dotted)."""

    name: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    # (field, values): searched only in studies whose config has one of these values there; in the
    # others the field keeps the config's value (``when = { schedule = ["step"] }`` in the TOML).
    when: tuple[tuple[str, tuple], ...] = ()

    @property
    def dotted(self) -> str:
        return resolve_field(self.name)

    def inapplicable(self, base: RunConfig) -> str | None:
        """Why this parameter is not searched in a study of runs like ``base``; None when it is."""
        for field_name, allowed in self.when:
            value = get_field(base, resolve_field(field_name))
            if value not in allowed:
                unused = ignored_fields(base).get(self.dotted)
                kept = f"is not used ({unused[0]})" if unused else f"stays {get_field(base, self.dotted)!r}"
                return (f"searched only when {field_name} is one of {list(allowed)}; "
                        f"here {field_name} = {value!r}, so {self.name} {kept}")
        return None

    def suggest(self, trial: optuna.Trial) -> Any:
        return SUGGESTERS[self.kind](trial, self)

    def probe_values(self) -> tuple:
        """Values that must each be acceptable to the config: the ends of a range, or every choice."""
        return self.choices if self.kind == "categorical" else (self.low, self.high)

    def values(self) -> tuple:
        """Every value of a categorical or stepped int parameter (for ``--compare``)."""
        if self.kind == "categorical":
            return self.choices
        if self.kind == "int" and not self.log:
            return tuple(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise ValueError(f"--compare {self.name}: a {self.kind} range has no list of values; give --compare-values")

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name} in {list(self.choices)}"
        extra = " log" if self.log else (f" step {self.step}" if self.step is not None else "")
        return f"{self.name} {self.kind} [{self.low}, {self.high}]{extra}"

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": self.kind, "choices": list(self.choices)} | self._when_dict()
        out = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        out |= {"step": self.step} if self.step is not None else {}
        return out | self._when_dict()

    def _when_dict(self) -> dict[str, Any]:
        return {"when": {field_name: list(values) for field_name, values in self.when}} if self.when else {}


def _suggest_float(trial: optuna.Trial, p: Param) -> float:
    return trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)


def _suggest_int(trial: optuna.Trial, p: Param) -> int:
    return trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))


def _suggest_categorical(trial: optuna.Trial, p: Param) -> Any:
    return trial.suggest_categorical(p.name, list(p.choices))


SUGGESTERS: dict[str, Callable[[optuna.Trial, Param], Any]] = {
    "float": _suggest_float, "int": _suggest_int, "categorical": _suggest_categorical,
}
RANGE_KEYS = {"low", "high", "log", "step"}
PARAM_KEYS = {"float": RANGE_KEYS, "int": RANGE_KEYS, "categorical": {"choices"}}
COMMON_KEYS = {"type", "when"}
# Fields a study must not tune: they would change the question, not the answer.
NOT_TUNABLE = {
    "seed": "every trial uses the study's --seed, so trials differ only in hyperparameters",
    "device": "the device is chosen per worker",
    "train.epochs": "the budget is set by --budget/--epochs",
    "train.iterations": "the budget is set by --budget/--epochs",
    "train.test_eval": "trials never measure the test set; the final stage does",
}


@dataclass(frozen=True)
class SearchSpace:
    """A named set of :class:`Param` plus fixed config overrides applied to every trial."""

    name: str
    source: str
    description: str = ""
    params: tuple[Param, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()
    inactive: tuple[tuple[str, str], ...] = ()  # (param, why not searched): set by :meth:`applicable_to`

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def param(self, name: str) -> Param | None:
        """The parameter over config field ``name`` (bare or dotted), or None."""
        dotted = resolve_field(name)
        return next((p for p in self.params if p.dotted == dotted), None)

    def without(self, name: str) -> "SearchSpace":
        dotted = resolve_field(name)
        return dataclasses.replace(self, params=tuple(p for p in self.params if p.dotted != dotted))

    def applicable_to(self, base: RunConfig) -> "SearchSpace":
        """The space a study of runs like ``base`` searches: parameters whose ``when`` does not hold
        there are set aside (kept in ``inactive`` with the reason, which the plan and report print)."""
        reasons = {p.name: p.inapplicable(base) for p in self.params}
        return dataclasses.replace(
            self, params=tuple(p for p in self.params if reasons[p.name] is None),
            inactive=self.inactive + tuple((name, why) for name, why in reasons.items() if why is not None))

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "params": {p.name: p.to_dict() for p in self.params},
               "fixed": {k: list(v) if isinstance(v, tuple) else v for k, v in self.fixed}}
        return out | ({"not_searched": dict(self.inactive)} if self.inactive else {})

    def describe_lines(self, baseline: RunConfig | None = None) -> list[str]:
        """The space in lines a reader can scan: a header, one line per searched parameter (with the
        value ``baseline`` -- the untuned config -- gives it), one per parameter not searched here."""
        fixed = f"; fixed {dict(self.fixed)}" if self.fixed else ""
        lines = [f"{self.name}: {len(self.params)} searched parameter{'s' * (len(self.params) != 1)}{fixed}"]
        width = max((len(p.describe()) for p in self.params), default=0)
        for p in self.params:
            start = f"  (untuned: {get_field(baseline, p.dotted)!r})" if baseline is not None else ""
            lines.append(f"  {p.describe():<{width}}{start}")
        return lines + [f"  not searched: {name} ({why})" for name, why in self.inactive]

    def describe(self) -> str:
        fixed = f"; fixed {dict(self.fixed)}" if self.fixed else ""
        unused = "".join(f"; not searched: {name} ({why})" for name, why in self.inactive)
        return (f"{self.name} ({len(self.params)} params: " + "; ".join(p.describe() for p in self.params) + ")"
                + fixed + unused)


def _space_error(where: str, message: str) -> ValueError:
    return ValueError(f"space {where}: {message}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_range(name: str, spec: Mapping[str, Any], where: str, kind: str) -> Param:
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    if not (_is_number(low) and _is_number(high)):
        raise _space_error(where, f"params.{name}: {kind} needs numeric low and high (got low={low!r}, high={high!r})")
    if not (math.isfinite(low) and math.isfinite(high)):  # TOML has inf and nan; Optuna fails on them mid-study
        raise _space_error(where, f"params.{name}: low={low} and high={high} must be finite numbers")
    if kind == "int" and not all(isinstance(v, int) for v in (low, high) + ((step,) if step is not None else ())):
        raise _space_error(where, f"params.{name}: int needs integer low, high and step")
    if low >= high:
        raise _space_error(where, f"params.{name}: low={low} must be < high={high}")
    if not isinstance(log, bool):
        raise _space_error(where, f"params.{name}: log={log!r} must be true or false")
    if log and low <= 0:
        raise _space_error(where, f"params.{name}: log=true needs low > 0 (got low={low})")
    if step is not None and (not _is_number(step) or not math.isfinite(step) or step <= 0 or (log and step != 1)):
        raise _space_error(where, f"params.{name}: step={step!r} must be a number > 0 (and not combined with log)")
    cast = float if kind == "float" else int
    return Param(name, kind, cast(low), cast(high), log, cast(step) if step is not None else None)


def _parse_choices(name: str, spec: Mapping[str, Any], where: str, kind: str) -> Param:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _space_error(where, f"params.{name}: categorical needs a non-empty list of choices (got {choices!r})")
    if any(not isinstance(c, (bool, int, float, str)) for c in choices) or len(set(map(repr, choices))) != len(choices):
        raise _space_error(where, f"params.{name}: choices must be distinct numbers, strings or booleans ({choices!r})")
    return Param(name, kind, choices=tuple(choices))


PARSERS = {"float": _parse_range, "int": _parse_range, "categorical": _parse_choices}


def parse_param(name: str, spec: Any, where: str) -> Param:
    """One ``[params.NAME]`` table; unknown types and keys are one-line errors."""
    if not isinstance(spec, Mapping):
        raise _space_error(where, f'params.{name} must be a table such as {{ type = "float", low = 0.01, high = 0.5 }}')
    kind = spec.get("type")
    if kind not in PARSERS:
        raise _space_error(where, f"params.{name}: unknown distribution type {kind!r}: "
                                  "expected float, int or categorical")
    unknown = sorted(set(spec) - PARAM_KEYS[kind] - COMMON_KEYS)
    if unknown:
        raise _space_error(where, f"params.{name}: unknown key(s) {unknown} for type {kind}: "
                                  f"expected {sorted(PARAM_KEYS[kind] | {'when'})}")
    param = PARSERS[kind](name, spec, where, kind)
    return dataclasses.replace(param, when=_parse_when(name, spec.get("when", {}), where))


def _parse_when(name: str, when: Any, where: str) -> tuple[tuple[str, tuple], ...]:
    """``when = { schedule = ["step", "cosine"] }``: config fields and the values they must have."""
    if not isinstance(when, Mapping) or any(not isinstance(v, list) or not v for v in when.values()):
        raise _space_error(where, f'params.{name}: when must be a table of field = [values], '
                                  f'such as {{ schedule = ["step", "cosine"] }} (got {when!r})')
    for field_name in when:
        try:
            resolve_field(field_name)
        except ValueError as exc:
            raise _space_error(where, f"params.{name}: when: {exc}") from None
    return tuple((field_name, tuple(values)) for field_name, values in when.items())


def space_path(spec: str, spaces_dir: Path = SPACES_DIR) -> Path:
    """A path to a TOML file, or the name of a file in ``resnet_core/spaces`` (listed when unknown)."""
    path = Path(spec)
    if path.suffix == ".toml" or path.exists() or os.sep in spec:
        if not path.is_file():
            raise FileNotFoundError(f"space file {spec} does not exist")
        return path
    named = spaces_dir / f"{spec}.toml"
    if not named.is_file():
        known = sorted(p.stem for p in spaces_dir.glob("*.toml"))
        raise ValueError(f"unknown space {spec!r}: expected one of {', '.join(known) or '(none)'} "
                         "or a path to a .toml file")
    return named


def read_space(spec: str, spaces_dir: Path = SPACES_DIR) -> SearchSpace:
    """Parse a space file (no check against a config yet: see :func:`validate_space`)."""
    path = space_path(spec, spaces_dir)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise _space_error(str(path), f"invalid TOML ({exc})") from None
    unknown = sorted(set(document) - {"description", "params", "fixed"})
    if unknown:
        raise _space_error(str(path), f"unknown top-level key(s) {unknown}: expected description, params, fixed")
    params = document.get("params", {})
    if not isinstance(params, Mapping) or not params:
        raise _space_error(str(path), "no [params.NAME] tables: nothing to search")
    fixed = document.get("fixed", {})
    if not isinstance(fixed, Mapping):
        raise _space_error(str(path), "[fixed] must be a table of field = value")
    fixed = canonical_settings(fixed, f"space {path}: [fixed]")  # train.lr = 0.05 is a nested table in TOML
    return SearchSpace(
        name=path.stem, source=str(path), description=str(document.get("description", "")),
        params=tuple(parse_param(name, spec, str(path)) for name, spec in params.items()),
        fixed=tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in fixed.items()),
    )


def _field_type(dotted: str) -> Any:
    section, name = dotted.split(".", 1) if "." in dotted else (None, dotted)
    cls = SECTIONS[section] if section else RunConfig
    return typing.get_type_hints(cls)[name]


def _check_param(param: Param, base: RunConfig, where: str) -> None:
    """Known, tunable field; a distribution that fits its type; every probe value accepted."""
    try:
        dotted = param.dotted
    except ValueError as exc:
        raise _space_error(where, f"params.{param.name}: {exc}") from None
    reason = NOT_TUNABLE.get(dotted) or ("the data and the validation split are fixed for a study"
                                          if dotted.startswith("data.") else None)
    if reason:
        raise _space_error(where, f"params.{param.name} cannot be searched: {reason}")
    types = set(typing.get_args(_field_type(dotted))) or {_field_type(dotted)}
    if param.kind == "float" and int in types and float not in types:
        raise _space_error(where, f'params.{param.name} is an integer field: use type = "int" or "categorical"')
    for value in param.probe_values():
        try:
            apply_overrides(base, {param.name: value})
        except ValueError as exc:
            raise _space_error(where, f"params.{param.name}: {exc}") from None
    for field_name, values in param.when:  # a misspelt value would silently switch the parameter off
        for value in values:
            try:
                _check_when_value(field_name, value)
            except ValueError as exc:
                raise _space_error(where, f"params.{param.name}: when: {exc}") from None


def _check_when_value(field_name: str, value: Any) -> None:
    """A ``when`` value is one its field accepts. It is tried on the default config, not the study's:
    the study's other settings may rule it out (``optimizer = "adam"`` with the quick budget's
    cycle_momentum), which only means the parameter is not searched there."""
    apply_overrides(RunConfig(), {field_name: value})


def validate_space(space: SearchSpace, base: RunConfig) -> RunConfig:
    """Check ``space`` against ``base`` before any trial; returns ``base`` with the fixed fields set."""
    try:
        fixed_base = apply_overrides(base, dict(space.fixed))
    except ValueError as exc:
        raise _space_error(space.source, f"[fixed]: {exc}") from None
    seen: dict[str, str] = {}
    for param in space.params:
        _check_param(param, fixed_base, space.source)
        if param.dotted in seen:
            raise _space_error(space.source, f"params.{param.name} and params.{seen[param.dotted]} "
                                             f"set the same field {param.dotted}")
        seen[param.dotted] = param.name
    _check_no_ignored_field(space, fixed_base)
    return fixed_base


def check_settings_kept(space: SearchSpace, settings: Mapping[str, Any], flag: str = "--set") -> None:
    """A setting (``--set``) of a field the space searches or fixes would be replaced in every trial,
    silently: a one-line error naming it. Call it on the space :meth:`SearchSpace.applicable_to` gave
    (a parameter set aside by its ``when`` keeps the setting, so that one stands)."""
    fixed = {resolve_field(name): (name, value) for name, value in space.fixed}
    for name, value in settings.items():
        param = space.param(name)
        if param is not None:
            raise ValueError(f"{flag} {name}={value}: the space {space.name} searches {param.name} "
                             f"({param.describe()}), so every trial would replace this value: drop the {flag}, "
                             f"or use a space that fixes {param.name}")
        if (dotted := resolve_field(name)) in fixed:
            raise ValueError(f"{flag} {name}={value}: the space {space.name} fixes {fixed[dotted][0]} = "
                             f"{fixed[dotted][1]!r} for every trial: drop the {flag}, or use another space")


def _check_no_ignored_field(space: SearchSpace, base: RunConfig) -> None:
    """A searched or fixed field the study's runs do not use (``config.ignored_fields``: the momentum under
    cycle_momentum) would silently change nothing: a one-line error instead."""
    ignored = {dotted: f"{why}; {fix}" for dotted, (why, fix) in ignored_fields(base).items()}
    for name, _ in space.fixed:
        if (dotted := resolve_field(name)) in ignored:
            raise _space_error(space.source, f"[fixed] {name} would not be used: {ignored[dotted]}")
    for param in space.params:
        if param.dotted in ignored and param.inapplicable(base) is None:
            raise _space_error(space.source, f"params.{param.name} would not be used: {ignored[param.dotted]}, "
                                             f"or set the parameter aside with a when table")
