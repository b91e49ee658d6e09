"""A run's identity: the short hash that names its record and checkpoint (docs/DESIGN.md, "Run identity").

It hashes a schema version, the settings that differ from their defaults and the data's identity
(a directory's content fingerprint, never its path), so adding a field with a default keeps every
id, and the same images reached by another path are the same run.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Mapping

from resnet_core.config import NON_IDENTITY_FIELDS, RunConfig, to_dict
from resnet_core.data import data_identity


def identity_dict(run: RunConfig) -> dict[str, Any]:
    """The part of a run config that decides what is computed (device, paths to caches excluded).

    Every field, data path included: studies record it as their base config. The run id hashes
    less (:func:`identity_settings` and :func:`~resnet_core.data.data_identity`).
    """
    full = to_dict(run)
    full.pop("device", None)
    for dotted in NON_IDENTITY_FIELDS:
        if "." in dotted:
            section, name = dotted.split(".", 1)
            full[section].pop(name, None)
    return full


# Version of the run-id recipe. Bump it (and migrate stored runs: resnet_core/migrate.py) when the
# recipe changes, or when a field's default changes: a default is left out of the hash, so a new
# default would otherwise give old and new runs one id. Schema 1 hashed every field and the path.
RUN_ID_SCHEMA = 2
# The data source enters the id as data_identity (content, not path), never as a setting.
DATA_FIELDS_IN_DATA_IDENTITY = ("data.source",)
_MISSING = object()  # a field the defaults lack: never equal to a value


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@functools.lru_cache(maxsize=None)  # the defaults are fixed by the dataclasses
def _default_settings(cls: type) -> Mapping[str, Any]:
    return _flat(to_dict(cls()))


def identity_settings(run: RunConfig) -> dict[str, Any]:
    """``{dotted name: value}`` of the identity fields whose values differ from their defaults.

    Only these enter the run id, so a new field added with a default that keeps the old behaviour
    leaves every existing id as it was (tests/test_config.py pins this).
    """
    defaults = _default_settings(type(run))  # the defaults of the run's own classes
    skip = NON_IDENTITY_FIELDS | set(DATA_FIELDS_IN_DATA_IDENTITY)
    return {name: value for name, value in _flat(to_dict(run)).items()
            if name not in skip and value != defaults.get(name, _MISSING)}


def run_id(run: RunConfig, data: str | None = None) -> str:
    """Stable identity of a run: a short hash of the schema, the settings that differ from their
    defaults, and the data's identity (a directory's content fingerprint, not its path: the same
    images reached by another path, a symlink or a copy are the same run).

    ``data``: the data's identity when it is already known (a stored record's fingerprint); by
    default ``data_identity(run.data)``, which reads a directory through the decode cache.
    """
    data = data if data is not None else data_identity(run.data)
    payload = {"schema": RUN_ID_SCHEMA, "settings": identity_settings(run), "data": data}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
