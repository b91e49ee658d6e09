"""Fair comparisons (``--compare FIELD``): one tuned sub-study per value of the field; the final stage
(``resnet_core.study.final``) then re-trains the best config of each with new seeds, and only those
give TEST errors."""

from __future__ import annotations

import dataclasses
from typing import Any

from resnet_core.config import apply_overrides, get_field, resolve_field
from resnet_core.study.spec import StudySpec


def compare_specs(spec: StudySpec, field_name: str, values: list[str] | None = None) -> list[StudySpec]:
    """One sub-study per value of ``field_name`` with the field fixed and the rest of the space
    tuned: same trial budget, same sampler seed, its own pruner (no pruning across values).
    """
    dotted = resolve_field(field_name)
    param = spec.space.param(field_name)
    if values:
        chosen = list(values)
    elif param is not None:
        chosen = list(param.values())
    else:
        raise ValueError(f"--compare {field_name}: the space {spec.space.name} does not search it; "
                         "give --compare-values A,B")
    if len(chosen) < 2:
        raise ValueError(f"--compare {field_name}: needs at least 2 values (got {chosen})")
    space = spec.space.without(field_name)
    subs, given = [], {}  # given: each value as the config holds it -> as it was given
    for value in chosen:
        try:
            base = apply_overrides(spec.base, {dotted: value})
        except ValueError as exc:
            raise ValueError(f"--compare {field_name}: {exc}") from None
        label = get_field(base, dotted)
        _check_new_value(field_name, label, value, given)
        subs.append(dataclasses.replace(
            spec, name=f"{spec.name}.{field_name}={_label(label)}", space=space, base=base,
            compare=(("group", spec.name), ("field", field_name), ("value", _json_value(label))),
        ))
    return subs


def _check_new_value(field_name: str, label: Any, value: Any, given: dict) -> None:
    """Two values that the config holds as one (0.1 and 0.10) would be one study run twice under two names."""
    if label in given:
        raise ValueError(f"--compare {field_name}: {given[label]} and {value} are both {field_name}={_label(label)}: "
                         "give each value once")
    given[label] = value


def _label(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
